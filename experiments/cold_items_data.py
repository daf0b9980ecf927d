"""A cold-heavy variant of a raw-format dataset: a share of the products loses its training-period events.

    python experiments/cold_items_data.py --source ../shared/data/online_retail --out DIR [--share 0.3]

The chosen products (seeded) keep no event before the val cut, so they are cold (text path only) to the model
and to every baseline, and about `share` of the val and test targets are cold items. Their later events stay:
they are still bought after the cut. The script prints the data overrides to train and evaluate with. The cuts
are given there as timestamps, the source's own temporal split, because time quantiles of the thinned events
would move the cuts.

Stands in for the held-out reviews set of issue 11 (a third of its test targets cold), which we do not have.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import numpy as np
import pandas as pd


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--source", type=Path, required=True, help="a directory with events.csv, products.csv"
    )
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--share", type=float, default=0.3, help="share of the products made cold (0..1)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--val-cut", type=float, default=0.8, help="time quantile of the source's val cut")
    parser.add_argument("--test-cut", type=float, default=0.9, help="time quantile of the source's test cut")
    args = parser.parse_args()
    if not 0 < args.share < 1:
        raise SystemExit(f"--share must be in (0, 1), got {args.share}")
    if not 0 < args.val_cut < args.test_cut < 1:
        raise SystemExit(f"need 0 < --val-cut < --test-cut < 1, got {args.val_cut}, {args.test_cut}")

    events = pd.read_csv(args.source / "events.csv", dtype=str, keep_default_na=False)
    products = pd.read_csv(args.source / "products.csv", dtype=str, keep_default_na=False)
    times = pd.to_datetime(events["created_at"])
    val_cut = times.quantile(args.val_cut, interpolation="lower")
    test_cut = times.quantile(args.test_cut, interpolation="lower")

    rng = np.random.default_rng(args.seed)
    cold = rng.choice(products["id"].to_numpy(), size=int(args.share * len(products)), replace=False)
    drop = events["product_id"].isin(set(cold)) & (times < val_cut)
    after = times >= val_cut
    cold_targets = events["product_id"][after].isin(set(cold)).mean()

    args.out.mkdir(parents=True, exist_ok=True)
    events[~drop].to_csv(args.out / "events.csv", index=False)
    shutil.copyfile(args.source / "products.csv", args.out / "products.csv")
    print(
        f"{len(cold)} of {len(products)} products made cold; dropped {int(drop.sum())} of {len(events)} events; "
        f"{cold_targets:.1%} of the events from the val cut on are cold items\n"
        f"overrides: data=csv data.events_path={args.out / 'events.csv'} "
        f"data.products_path={args.out / 'products.csv'} "
        f"\"data.val_cut='{val_cut.isoformat()}'\" \"data.test_cut='{test_cut.isoformat()}'\""
    )


if __name__ == "__main__":
    main()
