"""In-process cost of the serving building blocks of issue 12, without HTTP: each reranker on 100 candidates
-> 10 (D=384), the buyer-vector cache's key/get/put, and the A/B assignment.

Synthetic catalog: --products items with clustered random 384-d vectors (--clusters clusters), Zipf brands,
categories, a price and an in_stock flag. Candidates: the exact top --candidates of --queries random buyer
vectors (mixes of 3 cluster centres: the candidates are crowded with items of the main interest).
Each reranker reorders the same candidate lists; we time every call (perf_counter) and report p50 / p99 / mean
in microseconds, its one-off `prepare` cost per bundle load, and what it does to the lists: intra-list
diversity@10 (twotower.evaluation.intra_list_diversity: mean pairwise 1 - cosine), distinct brands per
list, and the mean retrieval score of the 10 kept (the relevance given up), both over the lists that came
back full, and `short`: how many lists came back with fewer than k items (hard caps and filters).

    python experiments/bench_reranking.py --products 100000 --queries 500
"""

from __future__ import annotations

import argparse
import platform
import time

import numpy as np

from twotower.evaluation.report import intra_list_diversity
from twotower.reranking import BusinessRules, Chain, MaximalMarginalRelevance, Passthrough, RerankContext
from twotower.serving.buyer_cache import BuyerVectorCache
from twotower.serving.variants import VariantsConfig


def synthetic(products: int, clusters: int, dim: int, seed: int) -> tuple[RerankContext, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, dim)).astype(np.float32)
    assignment = rng.integers(0, clusters, products)
    vectors = centres[assignment] + 0.6 * rng.standard_normal((products, dim), dtype=np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    brand_of_cluster = rng.zipf(1.5, clusters) % 300  # items of a cluster share a few brands
    brands = np.where(
        rng.random(products) < 0.7, brand_of_cluster[assignment], rng.integers(0, 300, products)
    )
    columns = {
        "brand": np.array([f"brand{b}" for b in brands], dtype=object),
        "category": np.array([f"cat{c % 40}" for c in assignment], dtype=object),
        "price": np.round(rng.lognormal(3.0, 1.0, products), 2),
        "in_stock": rng.random(products) < 0.85,
    }
    return RerankContext(columns, vectors), centres


def candidates(context: RerankContext, centres: np.ndarray, queries: int, count: int, seed: int):
    rng = np.random.default_rng(seed + 1)
    vectors = context.item_vectors
    assert vectors is not None
    # multi-interest buyers: a mix of 3 clusters with Dirichlet weights, so the top candidates are dominated
    # by the main interest and a diversifier has other interests to bring up
    mix = rng.dirichlet(np.ones(3), queries).astype(np.float32)  # [Q, 3]
    picks = np.einsum("qm,qmd->qd", mix, centres[rng.integers(0, len(centres), (queries, 3))])
    buyers = picks + 0.3 * rng.normal(size=picks.shape).astype(np.float32)
    scores = buyers @ vectors.T  # [Q, N]
    top = np.argpartition(-scores, count, axis=1)[:, :count]
    top_scores = np.take_along_axis(scores, top, axis=1)
    order = np.argsort(-top_scores, axis=1, kind="stable")
    return np.take_along_axis(top, order, axis=1), np.take_along_axis(top_scores, order, axis=1)


def percentiles(samples_ns: list[int]) -> str:
    us = np.asarray(samples_ns) / 1e3
    return f"{np.percentile(us, 50):8.1f} {np.percentile(us, 99):8.1f} {us.mean():8.1f}"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--products", type=int, default=100_000)
    parser.add_argument("--clusters", type=int, default=500)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--queries", type=int, default=500)
    parser.add_argument("--candidates", type=int, default=100)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print(f"# {platform.node()} {platform.processor() or platform.machine()}, numpy {np.__version__}")

    start = time.perf_counter()
    context, centres = synthetic(args.products, args.clusters, args.dim, args.seed)
    rows, scores = candidates(context, centres, args.queries, args.candidates, args.seed)
    print(
        f"catalog {args.products} x {args.dim}, {args.queries} lists of {args.candidates} candidates -> "
        f"{args.k} (setup {time.perf_counter() - start:.1f} s)\n"
    )

    c = args.candidates
    rerankers = {
        "none": Passthrough(),
        "rules: max 2/brand": BusinessRules(candidates=c, max_per={"brand": 2}),
        "rules: max 2/brand+backfill": BusinessRules(candidates=c, max_per={"brand": 2}, backfill=True),
        "rules: cap+filters+boosts": BusinessRules(
            candidates=c,
            max_per={"brand": 2},
            filters={"price": {"min": 1, "max": 200}, "in_stock": True},
            boosts={"brand": {"brand1": 0.05, "brand2": 0.05}},
        ),
        "mmr lambda=0.9": MaximalMarginalRelevance(candidates=c, relevance_weight=0.9),
        "mmr lambda=0.7": MaximalMarginalRelevance(candidates=c, relevance_weight=0.7),
        "mmr lambda=0.5": MaximalMarginalRelevance(candidates=c, relevance_weight=0.5),
        "chain: filters, then mmr 0.7": Chain(
            [
                BusinessRules(candidates=c, filters={"price": {"min": 1, "max": 200}, "in_stock": True}),
                MaximalMarginalRelevance(candidates=c, relevance_weight=0.7),
            ],
            candidates=c,
        ),
    }
    print(
        f"{'reranker':28s} {'prepare ms':>10s} {'p50 us':>8s} {'p99 us':>8s} {'mean us':>8s} "
        f"{'div@10':>7s} {'brands':>6s} {'score@10':>8s} {'short':>5s}"
    )
    for name, reranker in rerankers.items():
        start = time.perf_counter()
        reranker.prepare(context)
        prepare_ms = (time.perf_counter() - start) * 1e3
        for q in range(min(20, args.queries)):  # warm-up: first-call allocations are not per-request cost
            reranker.rerank(rows[q], scores[q], args.k, context)
        samples: list[int] = []
        kept = np.full((args.queries, args.k), -1, dtype=np.int64)
        kept_scores = np.zeros((args.queries, args.k))
        for _ in range(args.repeats):
            for q in range(args.queries):
                t0 = time.perf_counter_ns()
                out, out_scores = reranker.rerank(rows[q], scores[q], args.k, context)
                samples.append(time.perf_counter_ns() - t0)
                kept[q, : len(out)] = out
        for q in range(args.queries):  # retrieval scores of the kept items (rules return boosted ones)
            retrieved = dict(zip(rows[q].tolist(), scores[q].tolist(), strict=True))
            kept_scores[q] = [retrieved.get(r, np.nan) for r in kept[q].tolist()]
        full = (kept >= 0).all(axis=1)
        brands = np.mean([len(set(context.columns["brand"][r[r >= 0]])) for r in kept])
        diversity = intra_list_diversity(kept[full], context.item_vectors)
        print(
            f"{name:28s} {prepare_ms:10.1f} {percentiles(samples)} {diversity:7.3f} {brands:6.2f} "
            f"{kept_scores[full].mean():8.4f} {int((~full).sum()):5d}"
        )

    # -- buyer-vector cache and A/B assignment --------------------------------------------------------
    cache = BuyerVectorCache(max_entries=10_000, ttl_s=300.0)
    history = [f"p{i}" for i in range(20)], ["view"] * 20, [float(i) for i in range(20)]
    vector = np.ones(args.dim, np.float32)
    timings: dict[str, list[int]] = {"key (20 events)": [], "get (miss)": [], "put": [], "get (hit)": []}
    for i in range(5000):
        t0 = time.perf_counter_ns()
        key = cache.key(f"buyer{i}", *history, "v1")
        t1 = time.perf_counter_ns()
        cache.get(key)
        t2 = time.perf_counter_ns()
        cache.put(key, vector)
        t3 = time.perf_counter_ns()
        cache.get(key)
        t4 = time.perf_counter_ns()
        for label, ns in zip(timings, (t1 - t0, t2 - t1, t3 - t2, t4 - t3), strict=True):
            timings[label].append(ns)
    variants = VariantsConfig.parse(
        {"control": {"bundle": "a", "share": 0.9}, "treatment": {"bundle": "b", "share": 0.1}}, salt="exp"
    )
    assign: list[int] = []
    for i in range(5000):
        t0 = time.perf_counter_ns()
        variants.assign(f"buyer{i}")
        assign.append(time.perf_counter_ns() - t0)
    print(f"\n{'operation':28s} {'p50 us':>8s} {'p99 us':>8s} {'mean us':>8s}")
    for label, samples in {
        **{f"cache {k}": v for k, v in timings.items()},
        "variants.assign": assign,
    }.items():
        print(f"{label:28s} {percentiles(samples)}")


if __name__ == "__main__":
    main()
