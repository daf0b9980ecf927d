"""The re-ranking stage offline: a ranking method followed by a reranker, as one evaluation method.

`RerankedRanker` has the `fit(interactions)` / `recommend(batch, k) -> int [B, k]` interface of the
methods `twotower.evaluate` ranks with, so the stage's effect on recall@K, ndcg@K, diversity and coverage
is measured beside the plain model in one run. `reranked_model(bundle, reranker)` builds one for a bundle's
model and is a `_target_`, so it works today as an extra baseline node, with no change to evaluate:

Example:
    python -m twotower.evaluate bundle=B \\
      +baselines.model_mmr._target_=twotower.reranking.offline.reranked_model +baselines.model_mmr.bundle=B \\
      +baselines.model_mmr.reranker._target_=twotower.reranking.MaximalMarginalRelevance
    # once wired (lead): methods[f"model+{reranker.name}"] = RerankedRanker(methods["model"], reranker,
    #     RerankContext.from_catalog(bundle.catalog, bundle.embeddings))

Candidate scores: a method with `buyer_vectors(batch)` (the model) is scored by inner product with the item
vectors, as retrieval scores are; any other method gets rank scores (1 at the top, falling linearly), which
MMR's min-max scaling reads the same way. Lists the reranker leaves short of k are padded with -1.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from twotower.reranking.base import RerankContext, Reranker, rerank_batch

if TYPE_CHECKING:  # typing only: the reranking core stays numpy-only at run time
    from twotower.data.batches import HistoryBatch

__all__ = ["RerankedRanker", "reranked_model"]


class RerankedRanker:
    """`method`'s top `reranker.fetch_size(k)` per query, reordered by `reranker`, cut to k."""

    def __init__(self, method: Any, reranker: Reranker, context: RerankContext) -> None:
        self.method = method
        self.reranker = reranker
        self.context = context
        reranker.prepare(context)  # bad columns fail here, before any ranking
        self.name = f"{getattr(method, 'name', 'method')}+{reranker.name}"

    def fit(self, interactions: Any = None) -> RerankedRanker:
        self.method.fit(interactions)
        return self

    def candidate_scores(self, batch: HistoryBatch, rows: np.ndarray) -> np.ndarray:
        """float32 [B, C] scores of the candidates ``rows`` int [B, C] (-1 = empty slot, score -inf)."""
        empty = rows < 0
        if hasattr(self.method, "buyer_vectors") and self.context.item_vectors is not None:
            buyers = np.asarray(self.method.buyer_vectors(batch), dtype=np.float32)  # [B, D]
            safe = np.where(empty, 0, rows)
            scores = np.empty(rows.shape, dtype=np.float32)
            for start in range(0, len(rows), 128):  # [128, C, D] gathered at a time bounds the memory
                items = self.context.item_vectors[safe[start : start + 128]]
                scores[start : start + 128] = np.einsum("bd,bcd->bc", buyers[start : start + 128], items)
        else:
            width = rows.shape[1]
            scores = np.broadcast_to(1.0 - np.arange(width, dtype=np.float32) / width, rows.shape).copy()
        scores[empty] = -np.inf
        return scores

    def recommend(self, batch: HistoryBatch, k: int) -> np.ndarray:
        rows = np.asarray(self.method.recommend(batch, self.reranker.fetch_size(k)), dtype=np.int64)
        reranked, _ = rerank_batch(self.reranker, rows, self.candidate_scores(batch, rows), k, self.context)
        return reranked


def reranked_model(
    bundle: str | Path, reranker: Reranker, extra_columns: Mapping[str, Any] | None = None
) -> RerankedRanker:
    """The bundle's model (exact full-catalog ranking, as `twotower.evaluate` ranks it) followed by `reranker`;
    `extra_columns` adds catalog columns (e.g. price) for business rules."""
    # imported here: evaluation pulls in torch and the model; the reranking core stays numpy-only
    from twotower.evaluation.rankers import ModelRanker
    from twotower.model.buyer_tower import load_buyer_tower
    from twotower.retrieval.bundle import load_bundle

    loaded = load_bundle(bundle, load_index=False)
    model = ModelRanker(load_buyer_tower(loaded.checkpoint_path), loaded.embeddings)
    context = RerankContext.from_catalog(loaded.catalog, loaded.embeddings, extra=extra_columns)
    return RerankedRanker(model, reranker, context)
