"""Several rerankers in a row, e.g. business rules (filters, caps) and then MMR for diversity.

Every stage but the last keeps all the items it is given (it filters, caps and reorders); the last one
keeps k. A stage passes on the items it keeps and their scores (MMR after boosts sees the boosted scores
as relevance), not its order alone: a later stage that ranks by score (MMR) undoes a reordering that did
not change scores, so caps before MMR should be hard (``backfill: false``), not backfilled.

Example:
    >>> chain = Chain([BusinessRules(filters={"in_stock": True}), MaximalMarginalRelevance()], candidates=100)
    >>> chain.prepare(context)
    >>> rows, scores = chain.rerank(rows, scores, k=10, context=context)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from twotower.reranking.base import RerankContext, Reranker, register_reranker


@register_reranker("chain")
class Chain(Reranker):
    """`stages` applied in order to the top `candidates` retrieved items."""

    def __init__(self, stages: Sequence[Reranker], candidates: int = 100) -> None:
        stages = list(stages)
        if not stages or not all(isinstance(stage, Reranker) for stage in stages):
            raise ValueError(f"reranker chain needs a non-empty list of rerankers (stages); got {stages!r}")
        if int(candidates) < 1:
            raise ValueError(f"reranker.candidates must be >= 1; got {candidates}")
        self.stages = stages
        self.candidates = int(candidates)

    def __repr__(self) -> str:
        return f"Chain(candidates={self.candidates}, stages={self.stages})"

    def _prepare(self, context: RerankContext) -> None:
        for stage in self.stages:
            stage.prepare(context)  # each stage's columns are checked at load

    def _rerank(
        self, rows: np.ndarray, scores: np.ndarray, k: int, context: RerankContext, state: Any
    ) -> tuple[np.ndarray, np.ndarray]:
        for stage in self.stages[:-1]:
            if not len(rows):
                return rows, scores
            rows, scores = stage.rerank(rows, scores, len(rows), context)
        if not len(rows):
            return rows, scores
        return self.stages[-1].rerank(rows, scores, k, context)
