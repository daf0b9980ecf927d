"""Benchmark the vector index kinds: build time, memory, single/batched query speed, recall@10 vs exact.

Synthetic clustered, L2-normalized vectors (not uniform noise, so ANN recall is realistic); the queries are
held-out draws from the same clusters, like buyer vectors. Every figure is also given as a ratio to
``flat`` measured in the same process, so results hold on a noisy shared machine.

    python experiments/bench_index.py --sizes 100000 1000000 --dim 384 --queries 1000

Prints one markdown table per size.
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import time
from pathlib import Path

import faiss
import numpy as np

from twotower.retrieval.index import KINDS, IndexBuilder, VectorIndex


def clustered_vectors(n: int, n_queries: int, dim: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``n`` items + ``n_queries`` held-out queries around ``max(10, n // 100)`` random unit centers."""
    rng = np.random.default_rng(seed)
    n_centers = max(10, n // 100)
    centers = rng.standard_normal((n_centers, dim), dtype=np.float32)
    centers /= np.linalg.norm(centers, axis=1, keepdims=True)

    def draw(m: int) -> np.ndarray:
        out = np.empty((m, dim), np.float32)
        for s in range(0, m, 100_000):  # chunked: 1M x 384 noise at once would double peak memory
            e = min(m, s + 100_000)
            # noise norm ~1 around a unit center: cosine to the center ~0.7, like items of one category
            out[s:e] = centers[rng.integers(0, n_centers, e - s)]
            out[s:e] += rng.standard_normal((e - s, dim), dtype=np.float32) / np.sqrt(dim)
        out /= np.linalg.norm(out, axis=1, keepdims=True)
        return out

    return draw(n), draw(n_queries)


def single_latency(
    index: VectorIndex, queries: np.ndarray, n: int, budget_s: float
) -> tuple[float, float, int]:
    """p50/p99 ms of one-query searches (k=10), up to ``n`` queries or ``budget_s`` seconds (>= 20)."""
    for q in queries[:3]:
        index.search(q[None], 10)  # warm-up
    times = []
    t_end = time.perf_counter() + budget_s
    for i in range(n):
        t = time.perf_counter()
        index.search(queries[i % len(queries)][None], 10)
        times.append(time.perf_counter() - t)
        if i >= 20 and time.perf_counter() > t_end:
            break
    return float(np.percentile(times, 50) * 1e3), float(np.percentile(times, 99) * 1e3), len(times)


def batched_qps(index: VectorIndex, queries: np.ndarray, batch: int, budget_s: float) -> float:
    """Queries/s searching ``batch`` queries per call (k=10) over the query set, within ``budget_s``."""
    index.search(queries[:batch], 10)  # warm-up
    done, t0 = 0, time.perf_counter()
    while True:
        start = done % len(queries)
        chunk = queries[start : start + batch]
        index.search(chunk, 10)
        done += len(chunk)
        if done >= len(queries) or time.perf_counter() - t0 > budget_s:
            break
    return done / (time.perf_counter() - t0)


def run_size(n: int, args: argparse.Namespace) -> list[dict]:
    t = time.perf_counter()
    items, queries = clustered_vectors(n, args.queries, args.dim)
    print(f"\n## N = {n:,} x {args.dim} ({time.perf_counter() - t:.1f}s to generate)", flush=True)
    exact = IndexBuilder("flat").build(items)
    rows = []
    for kind in args.kinds:
        builder = IndexBuilder(
            kind, ef_construction=args.ef_construction, nprobe=args.nprobe, device=args.device
        )
        t = time.perf_counter()
        index = exact if kind == "flat" else builder.build(items)
        build_s = exact.info["build_seconds"] if kind == "flat" else time.perf_counter() - t
        p50, p99, n_single = single_latency(index, queries, args.single_queries, args.budget_s)
        row = {
            "kind": kind,
            "factory": index.info["factory"]
            or f"torch matmul+topk, {index.info['device']} {index.info['precision']}",
            "build_s": build_s,
            "mb": index.memory_bytes() / 2**20,
            "p50": p50,
            "p99": p99,
            "n_single": n_single,
            "qps32": batched_qps(index, queries, 32, args.budget_s),
            "qps1000": batched_qps(index, queries, 1000, args.budget_s),
            "recall": index.measure_recall(queries, exact=exact, k=10),
        }
        rows.append(row)
        print(
            f"  {kind:12s} build {build_s:7.1f}s  p50 {p50:7.3f} ms  p99 {p99:7.3f} ms  "
            f"qps@32 {row['qps32']:8.0f}  qps@1000 {row['qps1000']:8.0f}  recall {row['recall']:.4f}",
            flush=True,
        )
        if index is not exact:
            del index
            gc.collect()
    flat = next((r for r in rows if r["kind"] == "flat"), None)
    print(
        f"\n| kind | factory | build s | index MB | single p50 ms (x flat) | single p99 ms | "
        f"batch 32 q/s (x flat) | batch 1000 q/s (x flat) | recall@10 |\n|{'---|' * 9}"
    )
    for r in rows:

        def ratio(key: str, invert: bool = False, r: dict = r) -> str:
            if flat is None:
                return ""
            value = flat[key] / r[key] if invert else r[key] / flat[key]
            return f" ({value:.2g}x)"

        print(
            f"| {r['kind']} | `{r['factory']}` | {r['build_s']:.1f} | {r['mb']:.0f} | "
            f"{r['p50']:.3f}{ratio('p50', invert=True)} | {r['p99']:.3f} | {r['qps32']:.0f}{ratio('qps32')} | "
            f"{r['qps1000']:.0f}{ratio('qps1000')} | {r['recall']:.4f} |"
        )
    print(
        "(single p50 ratio = flat p50 / kind p50, i.e. the speed-up; single-query samples: "
        + ", ".join(f"{r['kind']} {r['n_single']}" for r in rows)
        + ")"
    )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--queries", type=int, default=1000, help="held-out queries (recall, batched)")
    parser.add_argument("--single-queries", type=int, default=300, help="max one-query searches per kind")
    parser.add_argument("--budget-s", type=float, default=10.0, help="time cap per latency measurement")
    parser.add_argument(
        "--kinds", nargs="+", default=["flat", "ivf", "hnsw", "sq8", "torch_exact"], choices=KINDS
    )
    parser.add_argument(
        "--device",
        default="cpu",
        help="cpu | cuda | auto: where torch_exact (and GPU FAISS, when installed) search; flat stays the "
        "CPU reference",
    )
    parser.add_argument("--ef-construction", type=int, default=40)
    parser.add_argument("--nprobe", type=int, default=16)
    args = parser.parse_args()
    cpu = next(
        (
            ln.split(":", 1)[1].strip()
            for ln in Path("/proc/cpuinfo").read_text().splitlines()
            if ln.startswith("model name")
        ),
        "?",
    )
    print(
        f"machine: nproc={os.cpu_count()}, cpu={cpu}, faiss {faiss.__version__} "
        f"(omp threads {faiss.omp_get_max_threads()}), python {platform.python_version()}, "
        f"load avg {os.getloadavg()[0]:.1f}"
    )
    for n in args.sizes:
        run_size(n, args)


if __name__ == "__main__":
    main()
