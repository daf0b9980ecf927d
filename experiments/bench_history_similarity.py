"""What the history similarity adds to a /retrieve request, in process (Recommender.retrieve, no HTTP).

    PYTHONPATH=. python experiments/bench_history_similarity.py BUNDLE [--interactions 20] [--repeat 2000]

Times one-query retrieve calls with the bundle's recorded scoring settings, and with the same settings but
`history_similarity=0`, alternating in rounds in one process; random histories of `--interactions` catalog
products (purchases). Prints the median microseconds of each and the difference.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from twotower.model.buyer_tower import load_buyer_tower
from twotower.retrieval.bundle import load_bundle
from twotower.serving.recommender import Query, Recommender


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("bundle", type=Path)
    parser.add_argument("--interactions", type=int, default=20)
    parser.add_argument("--repeat", type=int, default=2000)
    args = parser.parse_args()
    bundle = load_bundle(args.bundle)
    recommender = Recommender(bundle, load_buyer_tower(bundle.checkpoint_path))
    recorded = recommender.scoring
    weight = recorded.history_similarity or 0.5
    variants = {f"history_similarity={weight:g}": replace(recorded, history_similarity=weight)}
    variants["history_similarity=0"] = replace(recorded, history_similarity=0.0)
    rng = np.random.default_rng(0)
    ids = bundle.catalog.product_ids
    queries = [
        Query(list(rng.choice(ids, args.interactions)), ["purchase"] * args.interactions)
        for _ in range(args.repeat)
    ]
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(2):  # warm-up round, then the measured one
        for name in times:
            times[name].clear()
        for query in queries:
            for name, settings in variants.items():  # alternating: both see the same machine load
                recommender.scoring = settings
                start = time.perf_counter()
                recommender.retrieve([query])
                times[name].append(time.perf_counter() - start)
    medians = {name: statistics.median(t) * 1e6 for name, t in times.items()}
    print(
        f"{platform.processor() or platform.machine()}, {len(ids)} products, {args.interactions} interactions, "
        f"{args.repeat} requests, scoring as recorded: {recorded.describe()}"
    )
    for name, value in medians.items():
        print(f"  {name}: median {value:.0f} us")
    on, off = medians.values()
    print(f"  added: {on - off:.0f} us per request ({on / off:.2f}x)")


if __name__ == "__main__":
    main()
