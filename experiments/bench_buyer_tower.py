"""Buyer-tower latency per request on one CPU thread: each registered aggregation, one 20-event history.

    PYTHONPATH=. python experiments/bench_buyer_tower.py [--history 20] [--repeats 2000] [--dim 384]

In-process, inference mode, batch of one (as /retrieve embeds one buyer); prints the median and p95 over
repeats, and each aggregation's cost above weighted_avg (the no-parameter baseline).
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch
import torch.nn.functional as F

from twotower.data.batches import time_gap_buckets
from twotower.model.buyer_tower import AGGREGATIONS, BuyerTower


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--history", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=2000)
    parser.add_argument("--dim", type=int, default=384)
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    history = F.normalize(torch.randn(1, args.history, args.dim), dim=-1)
    weights = torch.full((1, args.history), 10.0)
    mask = torch.ones(1, args.history, dtype=torch.bool)
    # the request's event times (epoch seconds): with time gaps, the served path buckets them per call
    stamps = 1.7e9 + np.cumsum(np.full((1, args.history), 3600.0), axis=1)
    variants = {name: (name, False) for name in sorted(AGGREGATIONS)}
    variants["transformer+time_gaps"] = ("transformer", True)  # model.buyer_tower.time_gaps=true
    results: dict[str, dict[str, float]] = {}
    with torch.inference_mode():
        for label, (name, time_gaps) in variants.items():
            tower = BuyerTower(name, args.dim, time_gaps=time_gaps).eval()

            def call(tower=tower, time_gaps=time_gaps) -> None:
                gaps = torch.from_numpy(time_gap_buckets(stamps, mask.numpy())) if time_gaps else None
                tower(history, weights, mask, gaps)

            for _ in range(100):
                call()
            times = []
            for _ in range(args.repeats):
                start = time.perf_counter()
                call()
                times.append(time.perf_counter() - start)
            times.sort()
            results[label] = {
                "p50_ms": round(1000 * times[len(times) // 2], 4),
                "p95_ms": round(1000 * times[int(len(times) * 0.95)], 4),
            }
    base = results["weighted_avg"]["p50_ms"]
    for values in results.values():
        values["p50_over_weighted_avg_ms"] = round(values["p50_ms"] - base, 4)
    print(json.dumps({"history": args.history, "dim": args.dim, "threads": 1, **results}, indent=2))


if __name__ == "__main__":
    main()
