"""Table of a Hydra multirun sweep (e.g. `hparams_search=optuna`): each trial's swept values, its best
val/recall@10 (and the epoch), val text retention and training throughput, best first.

    python -m twotower.train -m hparams_search=optuna data.buyer_fraction=0.2 ... paths.root_dir=RUN
    PYTHONPATH=. python experiments/sweep_summary.py RUN/outputs/train/multiruns/<time>
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ablation import training_scalars  # noqa: E402  (reads the run's TensorBoard scalars)

TAGS = ("val/recall@10", "val/text_retention", "train/examples_per_s")


def trial_rows(sweep: Path, swept: list[str]) -> list[dict]:
    rows = []
    for trial in sorted((p for p in sweep.iterdir() if p.name.isdigit()), key=lambda p: int(p.name)):
        overrides = yaml.safe_load((trial / ".hydra" / "overrides.yaml").read_text()) or []
        values = dict(o.split("=", 1) for o in overrides if "=" in o)
        scalars = training_scalars(trial, TAGS)
        recall = scalars.get("val/recall@10", [])
        best = max(range(len(recall)), key=recall.__getitem__) if recall else None
        retention = scalars.get("val/text_retention", [])
        rates = scalars.get("train/examples_per_s", [])
        rows.append(
            {
                "trial": int(trial.name),
                **{name: values.get(name, "-") for name in swept},
                "best val recall@10": None if best is None else recall[best],
                "epoch": best,
                "text retention": retention[best] if best is not None and best < len(retention) else None,
                "examples/s": round(sum(rates) / len(rates)) if rates else None,
            }
        )
    return sorted(rows, key=lambda r: -(r["best val recall@10"] or 0))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("sweep", type=Path, help="a multirun folder (numbered trial dirs inside)")
    args = parser.parse_args()
    first = yaml.safe_load((args.sweep / "0" / ".hydra" / "overrides.yaml").read_text())
    # the swept keys: those whose value differs between trials
    values: dict[str, set] = {}
    for trial in (p for p in args.sweep.iterdir() if p.name.isdigit()):
        for o in yaml.safe_load((trial / ".hydra" / "overrides.yaml").read_text()) or []:
            key, _, value = o.partition("=")
            values.setdefault(key, set()).add(value)
    swept = [o.partition("=")[0] for o in first if len(values.get(o.partition("=")[0], ())) > 1]
    rows = trial_rows(args.sweep, swept)
    if not rows:
        raise SystemExit(f"no trials under {args.sweep}")

    def cell(value: object) -> str:
        if isinstance(value, float):
            return f"{value:.4f}"
        if isinstance(value, str):
            try:
                return f"{float(value):.4g}"
            except ValueError:
                return value
        return "-" if value is None else str(value)

    header = list(rows[0])
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for row in rows:
        print("| " + " | ".join(cell(row[h]) for h in header) + " |")


if __name__ == "__main__":
    main()
