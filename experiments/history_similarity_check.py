"""Screen the history similarity's temperature, pool and weight (twotower.scoring.history_similarity).

For every val and test query of a bundle's data whose target is new to the buyer: the model's `pool` best items
outside the buyer's history (seen items excluded, no learned boost), re-ranked by
`model score + w * t * log sum_h exp(<v_h, v_c> / t)` over the history's item vectors. Prints recall@10 of the
model's own list and of each (pool, t, w). The served version (pool = boost_pool, t fixed, w chosen on val)
lives in twotower.scoring; this script chose its constants.

    PYTHONPATH=. python experiments/history_similarity_check.py BUNDLE [data overrides...]
"""

from __future__ import annotations

import argparse
import itertools
from pathlib import Path

import numpy as np
import torch
from bundle_data import load_bundle_data, queries_of  # experiments/, beside this script

from twotower.evaluation.rankers import ModelRanker
from twotower.model.buyer_tower import load_buyer_tower
from twotower.scoring import ScoringSettings, rank_dense

POOLS, TEMPERATURES, WEIGHTS = (50, 200), (0.05, 0.1), (0.25, 0.5, 1.0, 2.0)
EXCLUDED = ScoringSettings(exclude_seen=True)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("bundle", type=Path)
    args, overrides = parser.parse_known_args()
    bundle, dm, mapping = load_bundle_data(args.bundle, overrides, "history_similarity_check")
    model = ModelRanker(load_buyer_tower(bundle.checkpoint_path), bundle.embeddings)
    vectors = torch.from_numpy(model.item_vectors)
    variants = list(itertools.product(POOLS, TEMPERATURES, WEIGHTS))
    for split in ("val", "test"):
        queries = queries_of(dm, mapping, split)
        hits, own, new_queries = np.zeros(len(variants)), 0, 0
        for index, batch, history in queries.batches(64):
            scores = np.asarray(model.scores(batch), dtype=np.float32)
            targets = queries.targets[index][:, None]
            new = ~((history.items == targets) & history.mask).any(axis=1)
            new_queries += int(new.sum())
            own += int(((rank_dense(scores, history, EXCLUDED, 10)[0] == targets).any(axis=1) & new).sum())
            items = torch.from_numpy(np.where(history.mask, history.items, 0))
            mask = torch.from_numpy(history.mask)
            for pool_size in POOLS:
                pool, _ = rank_dense(scores, history, EXCLUDED, pool_size)  # the model's best new items
                rows = np.maximum(pool, 0)
                sims = torch.einsum("bld,bpd->blp", vectors[items], vectors[torch.from_numpy(rows)])
                sims = sims.masked_fill(~mask[:, :, None], float("-inf"))  # [B, L, P]
                base = np.where(pool >= 0, np.take_along_axis(scores, rows, 1), -np.inf)
                for t in TEMPERATURES:
                    soft = (t * torch.logsumexp(sims / t, dim=1)).nan_to_num(0.0, neginf=0.0).numpy()
                    for w in WEIGHTS:
                        order = np.argsort(-(base + w * soft), axis=1, kind="stable")[:, :10]
                        hit = (np.take_along_axis(pool, order, 1) == targets).any(axis=1) & new
                        hits[variants.index((pool_size, t, w))] += int(hit.sum())
        cells = " ".join(
            f"P{p}/t{t:g}/w{w:g}: {h / new_queries:.4f}" for (p, t, w), h in zip(variants, hits, strict=True)
        )
        print(
            f"{split} ({new_queries} new-item queries), recall@10 seen excluded: model {own / new_queries:.4f}; {cells}"
        )


if __name__ == "__main__":
    main()
