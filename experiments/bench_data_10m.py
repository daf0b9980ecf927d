"""Load + sequence ~10M events: wall time and peak memory (budget: under 4 GB).

    python experiments/bench_data_10m.py [--out /tmp/twotower_10m] [--buyers 330000] [--products 100000]

Generates the sample dataset at that size once (reused if present), then loads the catalog and events and
builds examples in a fresh child process, so the figure is the data layer's own peak RSS.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path


def measure(out: Path) -> dict:
    from twotower.data.catalog import load_catalog
    from twotower.data.report import DataReport
    from twotower.data.schema import EventSchema
    from twotower.data.sequences import build_examples, gather_histories, load_events

    report = DataReport()
    start = time.perf_counter()
    catalog = load_catalog(out / "products.csv", out / "photos.csv", report)
    catalog_s = time.perf_counter() - start
    events = load_events(out / "events.csv", catalog, EventSchema(), report, show_progress=False)
    load_s = time.perf_counter() - start - catalog_s
    examples = build_examples(events, EventSchema())
    total_s = time.perf_counter() - start
    batch = gather_histories(events, examples.positions["train"][:1024], 100, EventSchema().weight_array)
    return {
        "rows_read": dict(report.rows_read),
        "events_kept": len(events),
        "buyers": len(events.buyer_ids),
        "products": len(catalog),
        "examples": {k: int(len(v)) for k, v in examples.positions.items()},
        "catalog_seconds": round(catalog_s, 1),
        "events_seconds": round(load_s, 1),
        "total_seconds": round(total_s, 1),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "batch_shape": list(batch.history_items.shape),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=Path("/tmp/twotower_10m"))
    parser.add_argument("--products", type=int, default=100_000)
    parser.add_argument("--buyers", type=int, default=330_000)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.out)))
        return
    if not (args.out / "events.csv").exists():
        from twotower.data.sample import generate_sample

        start = time.perf_counter()
        generate_sample(args.out, products=args.products, buyers=args.buyers, seed=0)
        print(f"generated in {time.perf_counter() - start:.0f}s")
    child = subprocess.run(
        [sys.executable, __file__, "--child", "--out", str(args.out)],
        capture_output=True,
        text=True,
        check=True,
    )
    result = json.loads(child.stdout.strip().splitlines()[-1])
    result["machine"] = f"{platform.machine()}, {subprocess.getoutput('nproc')} cores"
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
