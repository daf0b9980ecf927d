"""Would item-kNN help the model find new items? Re-rank the model's best new items by a co-occurrence score.

For every val and test query of a bundle's data: the model's `pool` best items outside the buyer's history
(the list the service returns with seen items excluded, before any learned boost), re-ranked by
`model score / 0.1 + w * knn / max knn in the pool`, the kNN score being whole-history item-kNN over the
training period (as `twotower.evaluate`'s `item_knn`). Prints recall@10 for each w; w = 0 is the model's own list
and a large w orders the pool by kNN alone. Also the plain kNN list (seen excluded) for reference.

    PYTHONPATH=. python experiments/knn_rerank_check.py BUNDLE [--weighting idf] [data overrides...]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from bundle_data import load_bundle_data, queries_of  # experiments/, beside this script

from twotower.evaluate import _interactions
from twotower.evaluation.knn import WEIGHTINGS, ItemKNNRanker
from twotower.evaluation.rankers import ModelRanker
from twotower.model.buyer_tower import load_buyer_tower
from twotower.scoring import ScoringSettings, rank_dense

WEIGHTS = (0.0, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 1000.0)

EXCLUDED = ScoringSettings(exclude_seen=True)  # the service's lists with seen items excluded


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("bundle", type=Path)
    parser.add_argument("--weighting", choices=WEIGHTINGS, default="cosine")
    parser.add_argument("--pool", type=int, default=50)
    args, overrides = parser.parse_known_args()
    bundle, dm, mapping = load_bundle_data(args.bundle, overrides, "knn_rerank_check")
    num_items = len(bundle.catalog)
    model = ModelRanker(load_buyer_tower(bundle.checkpoint_path), bundle.embeddings)
    knn = ItemKNNRanker(window=None, weighting=args.weighting).fit(_interactions(dm, mapping, num_items))
    for split in ("val", "test"):
        queries = queries_of(dm, mapping, split)
        hits, knn_hits = np.zeros(len(WEIGHTS)), 0
        for index, batch, history in queries.batches(512):
            model_scores, knn_scores = model.scores(batch), knn.scores(batch)
            pool, _ = rank_dense(model_scores, history, EXCLUDED, args.pool)  # -1: no item
            rows = np.maximum(pool, 0)
            # raw inner products (rank_dense's scores are rescaled by the row's best)
            pooled_model = np.where(pool >= 0, np.take_along_axis(model_scores, rows, 1), -np.inf)
            pooled_knn = np.where(pool >= 0, np.take_along_axis(knn_scores, rows, 1), 0.0)
            pooled_knn = pooled_knn / np.maximum(pooled_knn.max(axis=1, keepdims=True), 1e-9)
            targets = queries.targets[index][:, None]
            for j, weight in enumerate(WEIGHTS):
                order = np.argsort(-(pooled_model / 0.1 + weight * pooled_knn), axis=1)[:, :10]
                hits[j] += (np.take_along_axis(pool, order, 1) == targets).any(axis=1).sum()
            knn_top, _ = rank_dense(knn_scores, history, EXCLUDED, 10)
            knn_hits += (knn_top == targets).any(axis=1).sum()
        n = len(queries)
        cells = " ".join(f"w={w:g}: {h / n:.4f}" for w, h in zip(WEIGHTS, hits, strict=True))
        print(
            f"{split} ({n} queries), recall@10 with seen items excluded: item_knn {knn_hits / n:.4f}; {cells}"
        )


if __name__ == "__main__":
    main()
