"""Quality report: train on the sample data at several sizes, evaluate the model beside every baseline.

    python experiments/quality_report.py                                    # 2000/1000 and 10000/5000
    python experiments/quality_report.py --sizes 2000x1000 --out /tmp/q.md --work /tmp/quality

Each size runs the real entry points in subprocesses, in its own root (data/, .cache/, outputs/ under
--work/<products>x<buyers>): `python -m twotower.train data.sample.products=P data.sample.buyers=B` with
the default config otherwise, then `python -m twotower.evaluate` on that bundle (test split, exact ranking).
The Markdown report (machine, commands, wall times, the metrics tables, model/popularity ratios) is
written to --out (default /tmp/twotower_quality.md; its tables are the "Quality" section of RESULTS.md) and the
raw metrics.json files stay under --work.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

METHODS = ("model", "popularity", "recent_popularity", "item_knn", "text_only", "repeat", "repeat_knn")
COLUMNS = ("recall@10", "recall@50", "ndcg@10", "mrr", "coverage@10", "diversity@10", "novelty@10")


def run(command: list[str], cwd: Path, log: Path) -> float:
    """Run a command, teeing its output to log; returns wall seconds; raises with the log's tail on failure."""
    start = time.perf_counter()
    with log.open("w", encoding="utf-8") as handle:
        done = subprocess.run(command, cwd=cwd, stdout=handle, stderr=subprocess.STDOUT, text=True)
    seconds = time.perf_counter() - start
    if done.returncode:
        tail = log.read_text(encoding="utf-8")[-3000:]
        raise SystemExit(f"{' '.join(command)} failed ({done.returncode}); see {log}\n{tail}")
    return seconds


def one_size(products: int, buyers: int, work: Path, extra: list[str], reuse: bool = False) -> dict:
    root = (work / f"{products}x{buyers}").resolve()
    root.mkdir(parents=True, exist_ok=True)
    data = [f"data.sample.products={products}", f"data.sample.buyers={buyers}"]
    train = [sys.executable, "-m", "twotower.train", *data, f"paths.root_dir={root}", *extra]
    evaluate = [
        sys.executable,
        "-m",
        "twotower.evaluate",
        f"paths.root_dir={root}",
        f"hydra.run.dir={root}/eval",
    ]
    timing = root / "train_time.json"
    if reuse and timing.is_file() and (root / "outputs" / "latest" / "manifest.json").is_file():
        train_s = json.loads(timing.read_text())["train_s"]
        print(f"[{products}x{buyers}] reusing the trained bundle", flush=True)
    else:
        print(f"[{products}x{buyers}] training ...", flush=True)
        train_s = run(train, root, root / "train.out")
        timing.write_text(json.dumps({"train_s": train_s}))
    print(f"[{products}x{buyers}] evaluating ...", flush=True)
    eval_s = run(evaluate, root, root / "evaluate.out")
    metrics = json.loads((root / "eval" / "metrics.json").read_text(encoding="utf-8"))
    manifest = json.loads((root / "outputs" / "latest" / "manifest.json").read_text(encoding="utf-8"))
    return {
        "products": products,
        "buyers": buyers,
        "train_s": train_s,
        "eval_s": eval_s,
        "metrics": metrics,
        "counts": manifest.get("counts", {}),
        "commands": [
            " ".join(train[1:]).replace(str(root), "<root>"),
            " ".join(evaluate[1:]).replace(str(root), "<root>"),
        ],
    }


def table(rows: dict[str, dict[str, float]], columns: tuple[str, ...], first: str) -> list[str]:
    lines = [f"| {first} | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for name, values in rows.items():
        cells = [
            f"{values[c]:.4f}" if isinstance(values.get(c), float) else str(values.get(c, "-"))
            for c in columns
        ]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def report(results: list[dict], started: str) -> str:
    lines = [
        "# Quality: the model beside baselines on the sample data",
        "",
        f"Measured {started} by `python experiments/quality_report.py` on {platform.node()}: "
        f"{os.cpu_count()} CPU cores, {platform.processor() or platform.machine()}, no GPU, "
        f"Python {platform.python_version()}; the machine was shared with other jobs, so wall times are indicative. "
        "Training times are those of the run that trained each bundle (`--reuse` re-evaluates existing bundles).",
        "",
        "Every method ranks the same candidates (the bundle's full catalog) for the same queries (the test split's "
        "next-item examples: temporal split, targets after the 0.9 time quantile). The model scores exactly "
        "(inner product over the bundle's embeddings, not the ANN index); every method's list is built by the "
        "served scoring function under the served settings (seen-item exclusion or a repeat score; see "
        "`twotower/scoring.py`). Baselines (parameters chosen on the val split, see metrics.json `tuning`): "
        "`popularity` = training-period counts; `recent_popularity` = counts of the last N days; `item_knn` = "
        "item co-occurrence (whole history or a window; cosine, idf or BM25), history weighted by event; "
        "`text_only` = the frozen text vectors averaged over the history, cosine; `repeat` = the buyer's own "
        "items by time-decayed frequency, then popularity; `repeat_knn` = item_knn plus the repeat score. "
        "Diversity@10 = mean pairwise 1 - cosine of the top 10 in the text-encoder space; novelty@10 = 1 - mean "
        "training-popularity percentile; slice `repeat` = the target is already in the history input, "
        "`new_item` = not.",
        "",
    ]
    for result in results:
        m = result["metrics"]
        ratio = m["model"]["recall@10"] / max(m["popularity"]["recall@10"], 1e-12)
        best = max((n for n in METHODS if n in m and n != "model"), key=lambda n: m[n]["recall@10"])
        lines += [
            f"## {result['products']} products, {result['buyers']} buyers",
            "",
            f"{m['meta']['queries']} test queries over {m['meta']['candidates']} candidates (after de-duplication). "
            f"Training {result['train_s']:.0f} s, evaluation {result['eval_s']:.0f} s (wall, including start-up).",
            "",
            "```",
            *(f"python {c}" for c in result["commands"]),
            "```",
            "",
            *table({name: m[name] for name in METHODS if name in m}, COLUMNS, "method"),
            "",
            f"Served scoring: `{m.get('scoring')}`. **model recall@10 / best baseline ({best}) = "
            f"{m['model']['recall@10'] / max(m[best]['recall@10'], 1e-12):.2f}x**; model / popularity = "
            f"{ratio:.2f}x.",
            "",
            "recall@10 by slice (cold = target never seen in training; history = events before the target):",
            "",
            *table(
                {
                    s: {
                        "queries": m["slices"][s]["queries"],
                        **{n: m["slices"][s][n]["recall@10"] for n in METHODS if n in m},
                    }
                    for s in m["slices"]  # in the order evaluate wrote them
                },
                ("queries", *(n for n in METHODS if n in m)),
                "slice",
            ),
            "",
        ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", nargs="+", default=["2000x1000", "10000x5000"], help="PRODUCTSxBUYERS")
    parser.add_argument("--work", type=Path, default=Path("/tmp/twotower-quality"))
    parser.add_argument("--out", type=Path, default=Path("/tmp/twotower_quality.md"))
    parser.add_argument("--reuse", action="store_true", help="evaluate existing bundles under --work again")
    parser.add_argument("overrides", nargs="*", help="extra train overrides, e.g. trainer.max_epochs=4")
    args = parser.parse_args()
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    results = []
    for size in args.sizes:
        products, buyers = (int(x) for x in size.lower().split("x"))
        results.append(one_size(products, buyers, args.work, args.overrides, args.reuse))
        args.out.write_text(report(results, started), encoding="utf-8")  # keep partial results
    print(report(results, started))


if __name__ == "__main__":
    main()
