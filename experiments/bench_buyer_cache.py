"""In-process cost/benefit of the serving stages: the buyer-vector cache and the re-ranking stage.

    python experiments/bench_buyer_cache.py --products 20000 --dim 384 --buyers 200 --requests 3000

Builds a synthetic bundle (the serving tests' builder: random unit item vectors, Arabic titles, 3 brands,
3 categories, an HNSW index) per buyer tower (`--towers weighted_avg attention`; a `transformer` tower is
used when this checkout registers one), then times `Recommender.retrieve` one request at a time (the
concurrency-1 path of a worker, no HTTP: the shared machine makes HTTP timings noisy):

- cache: a repeated-buyer workload (`--buyers` buyers with fixed histories of 5..`--history` events, each
  request a Zipf draw of a buyer, so most requests repeat a buyer), with and without the cache, in
  alternating blocks of the same process;
- re-ranking: the same requests through `none`, business rules (max 1 per brand) and MMR (lambda 0.7),
  100 candidates -> k = 10.

Prints one markdown table per tower. The figures are in experiments/RESULTS.md.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from tests.serving.conftest import build_test_bundle
from twotower.model.buyer_tower import AGGREGATIONS
from twotower.reranking import BusinessRules, MaximalMarginalRelevance
from twotower.serving.buyer_cache import BuyerVectorCache
from twotower.serving.recommender import Query, Recommender
from twotower.serving.stages import attach


def workload(args: argparse.Namespace, num_items: int) -> list[tuple[str, Query]]:
    rng = np.random.default_rng(args.seed)
    histories = []
    for _ in range(args.buyers):
        n = int(rng.integers(5, args.history + 1))
        pids = [f"p{int(r)}" for r in rng.integers(0, num_items, n)]
        events = [str(e) for e in rng.choice(["view", "add_to_cart", "purchase"], n, p=[0.8, 0.15, 0.05])]
        histories.append((pids, events))
    # Zipf over buyers: a few very active buyers, a long tail (each buyer's first request is a miss)
    weights = 1.0 / np.arange(1, args.buyers + 1) ** args.zipf
    draws = rng.choice(args.buyers, args.requests, p=weights / weights.sum())
    return [(f"buyer-{b}", Query(*histories[b], k=args.k)) for b in draws]


def timed(
    recommender: Recommender, requests: list[tuple[str, Query]], cache: BuyerVectorCache | None
) -> list[float]:
    out = []
    for buyer, query in requests:
        start = time.perf_counter()
        if cache is not None:  # what the worker does per request (workers.py)
            query.cache_key = cache.key(
                buyer, query.product_ids, query.event_types, query.timestamps, recommender.version
            )
        recommender.retrieve([query])
        out.append(time.perf_counter() - start)
        query.cache_key = None
    return out


def row(name: str, seconds: list[float], base: float | None = None) -> str:
    us = np.asarray(seconds) * 1e6
    p50, p99, mean = np.percentile(us, 50), np.percentile(us, 99), us.mean()
    delta = "" if base is None else f"{p50 - base:+.0f}"
    return f"| {name} | {p50:.0f} | {p99:.0f} | {mean:.0f} | {delta} |"


def bench(args: argparse.Namespace, tower: str, root: Path) -> None:
    bundle = build_test_bundle(
        root / tower, n=args.products, dim=args.dim, aggregation=tower, index_kind="hnsw"
    )
    requests = workload(args, args.products)
    plain = Recommender.from_bundle(bundle)
    cache = BuyerVectorCache(max_entries=10_000, ttl_s=300.0)
    cached = attach(Recommender.from_bundle(bundle), cache=cache)
    variants = {
        "none": plain,
        "business_rules max 1/brand": attach(
            Recommender.from_bundle(bundle),
            BusinessRules(candidates=100, max_per={"brand": 1}, backfill=True),
        ),
        "mmr lambda=0.7": attach(
            Recommender.from_bundle(bundle), MaximalMarginalRelevance(candidates=100, relevance_weight=0.7)
        ),
    }
    timed(plain, requests[:50], None)  # warm-up
    timed(cached, requests[:50], cache)
    cache.clear()
    times: dict[str, list[float]] = {"no cache": [], "cache": [], **{f"rerank {n}": [] for n in variants}}
    block = max(1, len(requests) // args.blocks)
    for start in range(0, len(requests), block):  # alternate configurations: drift hits them alike
        part = requests[start : start + block]
        times["no cache"] += timed(plain, part, None)
        times["cache"] += timed(cached, part, cache)
        for name, recommender in variants.items():
            times[f"rerank {name}"] += timed(recommender, part, None)
    stats = cache.stats()
    hit_rate = stats["hits"] / max(1, stats["hits"] + stats["misses"])
    print(f"\n### buyer tower {tower}: {args.products} products, D={args.dim}, hnsw, k={args.k}")
    print(f"{len(requests)} requests from {args.buyers} buyers (Zipf {args.zipf}), hit rate {hit_rate:.1%}\n")
    print("| configuration | p50 us | p99 us | mean us | p50 delta us |\n|---|---|---|---|---|")
    base = float(np.percentile(np.asarray(times["no cache"]) * 1e6, 50))
    for name, seconds in times.items():
        print(row(name, seconds, None if name == "no cache" else base))
    # hits alone: the latency a repeat buyer sees
    tower_us = []
    for p in [plain._prepare(q) for _, q in requests[:200]]:
        start = time.perf_counter()
        plain._tower_vectors([p])
        tower_us.append((time.perf_counter() - start) * 1e6)
    print(f"\nbuyer tower call alone (batch 1): p50 {np.percentile(tower_us, 50):.0f} us")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--products", type=int, default=20_000)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--buyers", type=int, default=200)
    parser.add_argument("--history", type=int, default=50)
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--zipf", type=float, default=1.0)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--blocks", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--towers", nargs="+", default=["weighted_avg", "attention"])
    args = parser.parse_args()
    towers = list(args.towers) + (
        ["transformer"] if "transformer" in AGGREGATIONS and "transformer" not in args.towers else []
    )
    with tempfile.TemporaryDirectory() as tmp:
        for tower in towers:
            bench(args, tower, Path(tmp))


if __name__ == "__main__":
    main()
