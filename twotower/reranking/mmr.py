"""Diversity: maximal marginal relevance (Carbonell & Goldstein, 1998) in the item-vector space.

Picks k of the candidates one at a time, each maximizing

    relevance_weight * relevance(i) - (1 - relevance_weight) * max_{j picked} cosine(v_i, v_j)

where relevance is the retrieval score, min-max scaled to [0, 1] over the candidates (``normalize_scores``;
cosine lives in [-1, 1], raw inner products do not) and ``relevance_weight`` is MMR's lambda: 1 keeps the
retrieval order, 0 picks the most relevant item and then, each time, the candidate least similar to what is
already picked. Ties go to the better-retrieved candidate, so the result is deterministic.

Cost per list: k steps of one [C, D] x [D] product (O(k * C * D)), plus the gather of the C vectors;
the per-item norms are computed once per bundle in ``prepare``. The returned scores are the retrieval
scores of the picked items (the list order is MMR's, so they need not decrease).

Example:
    >>> mmr = MaximalMarginalRelevance(candidates=100, relevance_weight=0.7)
    >>> mmr.prepare(context)     # needs context.item_vectors
    >>> rows, scores = mmr.rerank(rows, scores, k=10, context=context)
"""

from __future__ import annotations

import numpy as np

from twotower.reranking.base import RerankContext, Reranker, register_reranker


@register_reranker("mmr")
class MaximalMarginalRelevance(Reranker):
    """MMR over the item vectors with a tunable lambda (``relevance_weight``); see the module docstring."""

    def __init__(
        self, candidates: int = 100, relevance_weight: float = 0.7, normalize_scores: bool = True
    ) -> None:
        if int(candidates) < 1:
            raise ValueError(f"reranker.candidates must be >= 1; got {candidates}")
        if not 0.0 <= float(relevance_weight) <= 1.0:
            raise ValueError(
                f"reranker.relevance_weight (MMR's lambda) must be in [0, 1]; got {relevance_weight}"
            )
        self.candidates = int(candidates)
        self.relevance_weight = float(relevance_weight)
        self.normalize_scores = bool(normalize_scores)

    def __repr__(self) -> str:
        return (
            f"MaximalMarginalRelevance(candidates={self.candidates}, relevance_weight={self.relevance_weight}, "
            f"normalize_scores={self.normalize_scores})"
        )

    def _prepare(self, context: RerankContext) -> np.ndarray:
        vectors = context.item_vectors
        if vectors is None:
            raise ValueError("the mmr reranker needs the item vectors: build RerankContext with item_vectors")

        def build() -> np.ndarray:
            norms = np.linalg.norm(vectors, axis=1).astype(np.float32)
            norms[norms == 0] = 1.0  # a zero vector is similar to nothing (cosine 0), not NaN
            return norms

        return context.memo("reranking.norms", build)  # shared by every MMR instance on this bundle

    def _rerank(
        self, rows: np.ndarray, scores: np.ndarray, k: int, context: RerankContext, state: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        count = len(rows)
        if count <= 1 or self.relevance_weight == 1.0:
            order = np.argsort(-scores, kind="stable")[:k]  # pure relevance: skip the vector work
            return rows[order], scores[order]
        assert context.item_vectors is not None  # checked in _prepare
        vectors = context.item_vectors[rows]  # [C, D]; cosine = dot * inverse norms (no normalized copy)
        inverse_norm = 1.0 / state[rows]  # [C]
        relevance = scores.astype(np.float64)
        if self.normalize_scores:
            low, high = relevance.min(), relevance.max()
            relevance = (relevance - low) / (high - low) if high > low else np.zeros_like(relevance)
        gain = self.relevance_weight * relevance  # [C]
        penalty = 1.0 - self.relevance_weight
        max_similarity = np.full(count, -np.inf)  # [C] to anything picked so far; +inf marks picked items
        picked = np.empty(min(k, count), dtype=np.int64)
        for step in range(len(picked)):
            objective = gain if step == 0 else gain - penalty * max_similarity  # picked: -inf (penalty > 0)
            choice = int(np.argmax(objective))  # the first maximum: ties go to the better-retrieved candidate
            picked[step] = choice
            if step + 1 < len(picked):  # the last pick needs no similarity update
                cosine = vectors @ vectors[choice]  # O(C * D)
                cosine *= inverse_norm * inverse_norm[choice]
                np.maximum(max_similarity, cosine, out=max_similarity)
                max_similarity[choice] = np.inf
        return rows[picked], scores[picked]
