"""The best recall@k any list can reach on a split when targets come in baskets (e.g. invoice lines).

Every target of one (buyer, timestamp) sees the same history, so every method gives them the same list: a
basket of n targets can have at most min(n, k) of them in a list of k, i.e. recall@k <= min(1, k / n) per
target. Also reported: the same bound for lists made only of the buyer's history items (the repeat targets of
the basket, as `twotower.evaluate` counts a repeat: the target is in the `max_history` events before it).

    PYTHONPATH=. python experiments/basket_ceiling.py data=csv data.events_path=... data.products_path=...
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from twotower.evaluation.queries import split_queries


def main(overrides: list[str], split: str = "test", k: int = 10) -> None:
    conf = str(Path(__file__).resolve().parents[1] / "conf")
    with initialize_config_dir(config_dir=conf, version_base="1.3"):
        cfg = compose("train", overrides=["paths.output_dir=/tmp/basket_ceiling", *overrides])
    dm = instantiate(cfg.data)
    dm.prepare_data()
    dm.setup("test")
    events, positions = dm.events, dm.examples.positions[split]
    identity = np.arange(dm.num_items)
    queries = split_queries(
        events, positions, dm.dataset(split), identity, dm.max_history, dm.schema.weight_array
    )
    frame = pd.DataFrame(
        {"buyer": events.buyer[positions], "time": events.timestamp[positions], "repeat": queries.repeat}
    )
    baskets = frame.groupby(["buyer", "time"])
    size = baskets["repeat"].transform("size").to_numpy()
    repeats = baskets["repeat"].transform("sum").to_numpy()
    bound = np.minimum(1.0, k / size).mean()
    repeat_bound = (queries.repeat * np.minimum(1.0, k / np.maximum(repeats, 1))).mean()
    print(f"{split}: {len(frame)} targets in {baskets.ngroups} baskets (buyer, timestamp)")
    print(f"targets per basket, as a target sees it: mean {size.mean():.1f}, median {np.median(size):.0f}")
    print(f"repeat targets (in the history input): {queries.repeat.mean():.3f} of all")
    print(f"best possible recall@{k} of any list: {bound:.3f}")
    print(f"best possible recall@{k} of a list of history items only: {repeat_bound:.3f}")


if __name__ == "__main__":
    main(sys.argv[1:])
