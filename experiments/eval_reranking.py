"""Offline effect of the re-ranking stage: `python -m twotower.evaluate` with the plain model beside the model
followed by each reranker preset (as extra methods through `twotower.reranking.offline.reranked_model`, so
evaluate itself is unchanged), on one bundle and its recorded data split. Baselines are switched off.

Until the lead adds a `reranker` group to conf/evaluate.yaml, this is how the stage is measured:

    python experiments/eval_reranking.py --bundle outputs/latest --presets mmr09 mmr07 mmr05 brand2
    python experiments/eval_reranking.py --bundle B --cache-dir /tmp/cache -- k_values=[10,50]  # extra overrides

Diversity in evaluate's table is measured in the text encoder's space; MMR diversifies in the model's item
space, so the two need not move together.
"""

from __future__ import annotations

import argparse
import subprocess
import sys

TARGET = "twotower.reranking"
CHAIN = (
    f"[{{_target_: {TARGET}.BusinessRules, max_per: {{brand: 3}}}}, "
    f"{{_target_: {TARGET}.MaximalMarginalRelevance, relevance_weight: 0.7}}]"
)
PRESETS: dict[str, list[str]] = {
    "mmr09": [f"_target_={TARGET}.MaximalMarginalRelevance", "relevance_weight=0.9"],
    "mmr07": [f"_target_={TARGET}.MaximalMarginalRelevance", "relevance_weight=0.7"],
    "mmr05": [f"_target_={TARGET}.MaximalMarginalRelevance", "relevance_weight=0.5"],
    "brand2": [f"_target_={TARGET}.BusinessRules", "max_per={brand: 2}", "backfill=true"],
    "brand1": [f"_target_={TARGET}.BusinessRules", "max_per={brand: 1}", "backfill=true"],
    "brand2_cat3": [f"_target_={TARGET}.BusinessRules", "max_per={brand: 2, category: 3}", "backfill=true"],
    # conf/reranker/chain.yaml: at most 3 per brand (hard), then MMR lambda=0.7
    "chain": [f"_target_={TARGET}.Chain", f"stages={CHAIN}"],
}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--bundle", required=True)
    parser.add_argument(
        "--presets", nargs="+", default=["mmr09", "mmr07", "mmr05", "brand2"], choices=PRESETS
    )
    parser.add_argument("--candidates", type=int, default=100)
    parser.add_argument("--cache-dir", default=None, help="text feature cache (default: evaluate's)")
    parser.add_argument("--root", default=None, help="paths.root_dir for evaluate's outputs")
    parser.add_argument("overrides", nargs="*", help="extra evaluate overrides (after --)")
    args = parser.parse_args()

    command = [
        sys.executable,
        "-m",
        "twotower.evaluate",
        f"bundle={args.bundle}",
        "data_source=bundle",
        "k_values=[10]",
        "baselines.popularity=null",
        "baselines.item_knn=null",
        "baselines.text_only=null",
    ]
    if args.cache_dir:
        command.append(f"text_cache_dir={args.cache_dir}")
    if args.root:
        command.append(f"paths.root_dir={args.root}")
    for name in args.presets:
        node = f"+baselines.{name}"
        command += [f"{node}._target_={TARGET}.offline.reranked_model", f"{node}.bundle={args.bundle}"]
        command += [f"{node}.reranker.candidates={args.candidates}"]
        command += [f"+{node[1:]}.reranker.{option}" for option in PRESETS[name]]
    command += args.overrides
    print(" ".join(command), flush=True)
    raise SystemExit(subprocess.run(command, check=False).returncode)


if __name__ == "__main__":
    main()
