"""The command line: ``python -m twotower.data.sample --out DIR --products N --buyers M --seed S``."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from twotower.data.sample.generate import DEFAULTS, SampleSettings, summary, write_sample


def main(argv: Sequence[str] | None = None) -> dict[str, Path]:
    """CLI: ``python -m twotower.data.sample --out DIR --products N --buyers M --seed S``."""
    from twotower.data import sample  # the package docstring describes the dataset

    description = (sample.__doc__ or "").split("\n\n")[0]
    parser = argparse.ArgumentParser(prog="python -m twotower.data.sample", description=description)
    parser.add_argument("--out", default="data/sample", help="output folder (default: data/sample)")
    parser.add_argument(
        "--products", type=int, default=DEFAULTS.products, help="product rows, duplicates included"
    )
    parser.add_argument("--buyers", type=int, default=DEFAULTS.buyers, help="number of buyers")
    parser.add_argument("--seed", type=int, default=DEFAULTS.seed, help="random seed; same seed, same bytes")
    parser.add_argument(
        "--events-per-buyer", type=float, default=DEFAULTS.events_per_buyer, help="mean events per buyer"
    )
    args = parser.parse_args(argv)
    try:
        settings = SampleSettings(args.products, args.buyers, args.seed, args.events_per_buyer)
    except ValueError as e:
        parser.error(str(e))
    paths, stats = write_sample(args.out, settings)
    print(summary(paths, stats, args.seed))
    return paths
