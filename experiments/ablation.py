"""Ablation of the model, one factor at a time from the default: train + evaluate per run, one JSON each.

    PYTHONPATH=. python experiments/ablation.py --data online_retail [--runs default,text_only] [--epochs 6]
    PYTHONPATH=. python experiments/ablation.py --data-dir DIR   # any events.csv + products.csv, e.g. from
                                                                  # experiments/movielens_data.py --out DIR

Resumable: a run whose JSON exists under --out is skipped; delete the JSON to rerun it. Each JSON holds the
command lines, the training wall time, training throughput (targets/s, from the module's
train/examples_per_s), the val metrics (text retention included where measured) and evaluate's metrics.json
(overall and slices). Runs go one after another (2 shared cores): start it under nohup and read the JSONs.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# ../shared beside the project root (README); a git worktree under ../wt/NAME has it two levels up
ONLINE_RETAIL = next(
    (
        p / "shared" / "data" / "online_retail"
        for p in (ROOT.parent, ROOT.parent.parent)
        if (p / "shared").is_dir()
    ),
    ROOT.parent / "shared" / "data" / "online_retail",
)


def csv_data(directory: Path) -> list[str]:
    """The overrides that train on a directory holding events.csv and products.csv (the seeds' raw format)."""
    return [
        "data=csv",
        f"data.events_path={directory / 'events.csv'}",
        f"data.products_path={directory / 'products.csv'}",
    ]


DATA = {"sample": [], "online_retail": csv_data(ONLINE_RETAIL)}

# name -> overrides from the default (one factor at a time)
RUNS: dict[str, list[str]] = {
    "default": [],
    "text_only_tower": ["model.item_tower.id_embedding=0"],
    # no ID dropout: without text a dropped ID leaves brand and category only (the SASRec-like tower)
    "id_only_tower": ["model.item_tower.use_text=false", "model.item_tower.id_dropout=0.0"],
    "no_id_dropout": ["model.item_tower.id_dropout=0.0"],
    "weighted_avg": ["model/buyer_tower=weighted_avg"],
    "attention": ["model/buyer_tower=attention"],
    "transformer": ["model/buyer_tower=transformer"],
    # online_retail_5epochs/time_gaps.json was measured with the since-removed spelling
    # +model.buyer_tower.options.time_gaps=true (the same model)
    "time_gaps": ["model.buyer_tower.time_gaps=true"],
    "explore_only_loss": ["model.exclude_seen_in_loss=true"],
    "sampled_softmax": [
        "model.full_softmax_max_items=0",
        "model.num_negatives=1024",
        "model.negative_sampling_alpha=0.75",
        "model.use_log_q_correction=true",
    ],
    "per_target_training": ["data.sequence_training=false"],
    # the model before issue 11: text tower, weighted average, sampled softmax, one history per target
    "previous_model": [
        "model.item_tower.id_embedding=0",
        "model.item_tower.text_residual=false",
        "model/buyer_tower=weighted_avg",
        "model.full_softmax_max_items=0",
        "data.sequence_training=false",
    ],
}


SCALARS = ("train/examples_per_s", "train/epoch_seconds", "val/recall@10")


def training_scalars(train_dir: Path, tags: tuple[str, ...] = SCALARS) -> dict[str, list[float]]:
    """Per-epoch scalars (default: throughput, epoch time, val recall@10) from the run's TensorBoard events
    (the manifest keeps only the end)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out: dict[str, list[float]] = {}
    for path in sorted(train_dir.glob("tensorboard/**/events.out*")):
        events = EventAccumulator(str(path))
        events.Reload()
        for tag in tags:
            if tag in events.Tags()["scalars"]:
                out[tag] = [round(e.value, 4) for e in events.Scalars(tag)]
    return out


def run_one(name: str, overrides: list[str], data: list[str], epochs: int | None, work: Path) -> dict:
    run_dir = work / name
    run_dir.mkdir(parents=True, exist_ok=True)
    train_cmd = [
        sys.executable,
        "-m",
        "twotower.train",
        *data,
        *overrides,
        f"hydra.run.dir={run_dir / 'train'}",
        f"paths.root_dir={work / 'root'}",
        "callbacks.embedding_projector=null",
    ]
    if epochs is not None:  # exactly this many (not a cap of the default epoch budget)
        train_cmd += ["epoch_budget_targets=null", f"trainer.max_epochs={epochs}"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    start = time.perf_counter()
    with open(run_dir / "train.log", "w") as log:
        subprocess.run(train_cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, check=True)
    train_seconds = time.perf_counter() - start
    eval_cmd = [
        sys.executable,
        "-m",
        "twotower.evaluate",
        f"bundle={run_dir / 'train' / 'bundle'}",
        f"hydra.run.dir={run_dir / 'evaluate'}",
        f"paths.root_dir={work / 'root'}",
    ]
    start = time.perf_counter()
    with open(run_dir / "evaluate.log", "w") as log:
        subprocess.run(eval_cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, check=True)
    manifest = json.loads((run_dir / "train" / "bundle" / "manifest.json").read_text())
    metrics = manifest.get("metrics", {})
    scalars = training_scalars(run_dir / "train")
    rates, seconds = scalars.get("train/examples_per_s", []), scalars.get("train/epoch_seconds", [])
    return {
        "name": name,
        "overrides": overrides,
        "train_command": " ".join(train_cmd[1:]),
        "evaluate_command": " ".join(eval_cmd[1:]),
        "train_wall_s": round(train_seconds, 1),
        "evaluate_wall_s": round(time.perf_counter() - start, 1),
        "examples_per_s": round(sum(rates) / len(rates), 1) if rates else None,
        "fit_seconds": round(sum(seconds), 1) if seconds else None,
        "per_epoch": scalars,
        "val": {k: v for k, v in metrics.items() if k.startswith("val/")},
        "evaluate": json.loads((run_dir / "evaluate" / "metrics.json").read_text()),
    }


def table(out: Path) -> str:
    """Markdown table of the finished runs under `out`: test recall@10 in the served setting (overall, ndcg, by
    slice), then with the other exclusion setting (seen items excluded, where the model's own part shows), the
    raw model's best val recall@10 and its val explore recall and text retention (where logged), time,
    throughput."""
    header = (
        "| run | recall@10 | ndcg@10 | repeat | new_item | cold | excluded: all | excluded: new_item | "
        "excluded: cold | best val recall@10 | val explore recall@10 | text retention | train wall s | examples/s |\n"
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
    )
    rows = [header]
    for path in sorted(out.glob("*.json")):
        r = json.loads(path.read_text())
        evaluate = r["evaluate"]
        other = evaluate.get("other_exclusion", {})

        def cut(name: str | None, metrics: dict) -> str:
            scope = metrics if name is None else metrics.get("slices", {}).get(name, {})
            value = scope.get("model", {})
            value = value.get("recall@10") if isinstance(value, dict) else None
            return "-" if value is None else f"{value:.4f}"

        def number(value: float | None, digits: int) -> str:
            return "-" if value is None else f"{value:.{digits}f}"

        history = r.get("per_epoch", {}).get("val/recall@10") or [r["val"].get("val/recall@10")]
        values = [v for v in history if v is not None]
        best_val = max(values) if values else None
        rows.append(
            f"| {r['name']} | {cut(None, evaluate)} | {evaluate['model']['ndcg@10']:.4f} | "
            f"{cut('repeat', evaluate)} | {cut('new_item', evaluate)} | {cut('cold', evaluate)} | "
            f"{cut(None, other)} | {cut('new_item', other)} | {cut('cold', other)} | {number(best_val, 4)} | "
            f"{number(r['val'].get('val/new/recall@10'), 4)} | {number(r['val'].get('val/text_retention'), 3)} | "
            f"{number(r.get('train_wall_s'), 0)} | {number(r.get('examples_per_s'), 0)} |"
        )
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", choices=sorted(DATA), default="online_retail")
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help="train on DIR/events.csv + DIR/products.csv instead of --data; results go under DIR's name",
    )
    parser.add_argument("--runs", default=",".join(RUNS), help=f"comma-separated, from {list(RUNS)}")
    parser.add_argument(
        "--epochs",
        type=int,
        default=None,
        help="train exactly this many epochs (default: the config's epoch budget)",
    )
    parser.add_argument(
        "--out", type=Path, default=None, help="JSONs; default experiments/results/ablation/<data>"
    )
    parser.add_argument("--table", action="store_true", help="print the finished runs as a markdown table")
    parser.add_argument("--work", type=Path, default=None, help="runs (checkpoints, bundles); default /tmp")
    args = parser.parse_args()
    if args.data_dir is not None:
        missing = [n for n in ("events.csv", "products.csv") if not (args.data_dir / n).is_file()]
        if missing:
            raise SystemExit(f"--data-dir {args.data_dir}: no {' or '.join(missing)} there")
        data_name, data = args.data_dir.resolve().name, csv_data(args.data_dir.resolve())
    else:
        data_name, data = args.data, DATA[args.data]
    out = (args.out or ROOT / "experiments" / "results" / "ablation" / data_name).resolve()
    work = (args.work or Path("/tmp") / "twotower_ablation" / data_name).resolve()
    out.mkdir(parents=True, exist_ok=True)
    if args.table:
        print(table(out))
        return
    for name in [r for r in args.runs.split(",") if r]:
        if name not in RUNS:
            raise SystemExit(f"unknown run {name!r}; choose from {list(RUNS)}")
        path = out / f"{name}.json"
        if path.exists():
            print(f"{name}: done already ({path})")
            continue
        print(f"{name}: running ...", flush=True)
        result = run_one(name, RUNS[name], data, args.epochs, work)
        path.write_text(json.dumps(result, indent=2))
        model = result["evaluate"]["model"]
        print(f"{name}: recall@10 {model['recall@10']:.4f}, {result['train_wall_s']:.0f} s", flush=True)


if __name__ == "__main__":
    main()
