"""Non-learned baselines that rank the same candidate set as the model, for offline evaluation.

Every baseline is a plain class: ``fit(interactions)`` on the training period, then
``recommend(batch, k) -> int64 [B, k]`` item indices, best first, for a batch of padded histories (the
``history_items`` / ``history_weights`` / ``history_mask`` arrays a ``HistoryDataset`` yields). They are
vectorized over the batch (numpy, scipy.sparse, torch) and know nothing of Hydra or Lightning.

- :class:`PopularityRecommender` — the most interacted-with items of the training period, the same list for all.
- :class:`ItemKNNRecommender` — item-to-item co-occurrence within a window of each buyer's training sequence,
  cosine-normalized; a buyer's scores are the event-weighted sum of the rows of their history items.
- :class:`TextOnlyRecommender` — the frozen text encoder's product vectors, averaged over the history by
  event weight, ranked by cosine. No training: what the text alone knows.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import scipy.sparse as sp
import torch
import torch.nn.functional as F

from twotower.metrics import topk_scores_chunked

__all__ = [
    "Interactions",
    "Recommender",
    "PopularityRecommender",
    "ItemKNNRecommender",
    "TextOnlyRecommender",
    "weighted_history_matrix",
]


@dataclass
class Interactions:
    """Training-period events sorted by (buyer, time): what baselines may learn from.

    buyer: int [n]; item: int [n] catalog item index in ``[0, num_items)``; weight: float [n] event weight.
    """

    buyer: np.ndarray
    item: np.ndarray
    weight: np.ndarray
    num_items: int

    def __post_init__(self) -> None:
        self.buyer, self.item = np.asarray(self.buyer), np.asarray(self.item, dtype=np.int64)
        self.weight = np.asarray(self.weight, dtype=np.float32)
        if not (len(self.buyer) == len(self.item) == len(self.weight)):
            raise ValueError(
                f"buyer, item and weight must have the same length; got {len(self.buyer)}, {len(self.item)}, "
                f"{len(self.weight)}"
            )
        if len(self.item) and (self.item.min() < 0 or self.item.max() >= self.num_items):
            raise ValueError(
                f"item indices must lie in [0, {self.num_items}); got {self.item.min()}..{self.item.max()}"
            )
        if len(self.buyer) > 1 and (np.diff(self.buyer) < 0).any():
            raise ValueError("interactions must be sorted by buyer (then time), as EventLog keeps them")


def _as_numpy(value: Any) -> np.ndarray:
    return value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)


def _history(batch: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    items = _as_numpy(batch["history_items"]).astype(np.int64)
    weights = _as_numpy(batch["history_weights"]).astype(np.float32)
    mask = _as_numpy(batch["history_mask"]).astype(bool)
    if items.ndim != 2 or items.shape != weights.shape or items.shape != mask.shape:
        raise ValueError(
            f"history_items, history_weights and history_mask must all be [B, L]; got {items.shape}, "
            f"{weights.shape}, {mask.shape}"
        )
    return items, weights, mask


def weighted_history_matrix(batch: Mapping[str, Any], num_items: int) -> sp.csr_matrix:
    """Sparse ``[B, num_items]``: entry (b, i) = summed event weight of item i in row b's history."""
    items, weights, mask = _history(batch)
    rows = np.broadcast_to(np.arange(items.shape[0])[:, None], items.shape)  # [B, L]
    # coo -> csr sums repeated (row, item) pairs: a re-viewed item counts once per event
    return sp.coo_matrix(
        (weights[mask], (rows[mask], items[mask])), shape=(items.shape[0], num_items), dtype=np.float32
    ).tocsr()


class Recommender(Protocol):
    """What the evaluator needs from a method: fit on the training period, then top-k per history."""

    name: str

    def fit(self, interactions: Interactions) -> Recommender: ...

    def recommend(self, batch: Mapping[str, Any], k: int) -> np.ndarray:
        """int64 ``[B, k]`` item indices, best first, for a batch of padded histories."""
        ...


def _check_fitted(num_items: int | None, name: str) -> int:
    if num_items is None:
        raise RuntimeError(f"{name}: call fit() before recommend()")
    return num_items


def _topk_dense(scores: np.ndarray | torch.Tensor, k: int) -> np.ndarray:
    scores = torch.as_tensor(scores)
    return torch.topk(scores, min(k, scores.shape[1]), dim=1).indices.numpy().astype(np.int64)  # [B, k]


class PopularityRecommender:
    """The top-k items by training-period interaction count (ties: lower item index first)."""

    name = "popularity"

    def __init__(self, weighted: bool = False) -> None:
        """``weighted``: count event weights (a purchase counts 10 views) instead of events."""
        self.weighted = weighted
        self.counts: np.ndarray | None = None
        self.order: np.ndarray | None = None

    def fit(self, interactions: Interactions) -> PopularityRecommender:
        weights = interactions.weight if self.weighted else None
        self.counts = np.bincount(
            interactions.item, weights=weights, minlength=interactions.num_items
        ).astype(np.float64)
        self.order = np.lexsort((np.arange(len(self.counts)), -self.counts))  # count desc, index asc
        return self

    def recommend(self, batch: Mapping[str, Any], k: int) -> np.ndarray:
        if self.order is None:
            raise RuntimeError("popularity: call fit() before recommend()")
        batch_size = _as_numpy(batch["history_items"]).shape[0]
        return np.broadcast_to(self.order[:k], (batch_size, min(k, len(self.order)))).copy()


class ItemKNNRecommender:
    """Item-to-item co-occurrence kNN over the buyers' training sequences.

    Two items co-occur when they appear within ``window`` positions of each other in one buyer's
    time-ordered training events (repeats of the same item are not co-occurrence). Counts are
    cosine-normalized, ``C_ij / sqrt(n_i * n_j)`` with ``n_i`` the item's interaction count, so popular
    items do not dominate every row; only the ``neighbors`` strongest entries per item row are kept.
    A buyer's score for item j is ``sum_h w_h * S[h, j]`` over history items h with event weights w_h.
    ``self_similarity`` sets ``S[i, i]``: the history items themselves stay candidates (about half of
    next-item targets on the sample data are re-interactions, and the model may return them too).
    Items no history item co-occurs with are ordered by popularity, so every list is filled to k.
    """

    name = "item_knn"

    def __init__(self, window: int = 5, neighbors: int = 200, self_similarity: float = 1.0) -> None:
        if window < 1:
            raise ValueError(f"item_knn window must be >= 1, got {window}")
        if neighbors < 1:
            raise ValueError(f"item_knn neighbors must be >= 1, got {neighbors}")
        self.window, self.neighbors, self.self_similarity = window, neighbors, float(self_similarity)
        self.similarity: sp.csr_matrix | None = None
        self.num_items: int | None = None
        self._tiebreak: np.ndarray | None = None

    def fit(self, interactions: Interactions) -> ItemKNNRecommender:
        buyer, item, n = interactions.buyer, interactions.item, interactions.num_items
        left, right = [], []
        for offset in range(1, self.window + 1):
            same_buyer = buyer[offset:] == buyer[:-offset]  # [n - offset]
            left.append(item[:-offset][same_buyer])
            right.append(item[offset:][same_buyer])
        a, b = np.concatenate(left), np.concatenate(right)
        distinct = a != b
        a, b = a[distinct], b[distinct]
        rows, cols = np.concatenate([a, b]), np.concatenate([b, a])  # symmetric
        counts = sp.coo_matrix(
            (np.ones(len(rows), np.float32), (rows, cols)), shape=(n, n)
        ).tocsr()  # sums dups
        item_counts = np.bincount(item, minlength=n).astype(np.float32)
        norm = 1.0 / np.sqrt(np.maximum(item_counts, 1.0))
        similarity = sp.diags(norm) @ counts @ sp.diags(norm)
        similarity = self._keep_top(similarity.tocsr(), self.neighbors)
        if self.self_similarity:
            similarity = similarity + sp.identity(n, dtype=np.float32, format="csr") * self.self_similarity
        self.similarity = similarity.astype(np.float32).tocsr()
        self.num_items = n
        # Popularity as a tie-breaker far below any real score: a rank in [0, 1) scaled by 1e-6.
        ranks = np.argsort(np.argsort(-item_counts, kind="stable"), kind="stable")
        self._tiebreak = ((n - ranks) / (n + 1) * 1e-6).astype(np.float32)
        return self

    @staticmethod
    def _keep_top(matrix: sp.csr_matrix, top: int) -> sp.csr_matrix:
        """Keep the ``top`` largest entries of each row (prunes the long tail of one-off co-occurrences)."""
        matrix.sort_indices()
        lengths = np.diff(matrix.indptr)
        if not len(lengths) or lengths.max() <= top:
            return matrix
        keep = np.ones(matrix.nnz, dtype=bool)
        for row in np.flatnonzero(lengths > top):  # only the few dense rows
            start, stop = matrix.indptr[row], matrix.indptr[row + 1]
            values = matrix.data[start:stop]
            drop = np.argpartition(-values, top)[top:]
            keep[start + drop] = False
        matrix = matrix.copy()
        matrix.data[~keep] = 0.0
        matrix.eliminate_zeros()
        return matrix

    def scores(self, batch: Mapping[str, Any]) -> np.ndarray:
        """Dense float32 ``[B, num_items]`` scores (before the popularity tie-break)."""
        num_items = _check_fitted(self.num_items, self.name)
        history = weighted_history_matrix(batch, num_items)  # [B, N]
        return np.asarray((history @ self.similarity).todense(), dtype=np.float32)  # [B, N]

    def recommend(self, batch: Mapping[str, Any], k: int) -> np.ndarray:
        return _topk_dense(self.scores(batch) + self._tiebreak[None, :], k)


class TextOnlyRecommender:
    """Cosine between the event-weighted mean of the history's text vectors and every product's text vector."""

    name = "text_only"

    def __init__(self, item_vectors: np.ndarray | torch.Tensor) -> None:
        """``item_vectors``: float ``[N, d]`` text-encoder vectors of the candidate catalog, row = item index."""
        vectors = torch.as_tensor(np.asarray(item_vectors, dtype=np.float32))
        if vectors.dim() != 2 or not len(vectors):
            raise ValueError(f"text_only needs item vectors [N, d]; got shape {tuple(vectors.shape)}")
        self.item_vectors = F.normalize(vectors, dim=1)

    def fit(self, interactions: Interactions | None = None) -> TextOnlyRecommender:
        if interactions is not None and interactions.num_items != len(self.item_vectors):
            raise ValueError(
                f"text_only has vectors for {len(self.item_vectors)} items but the interactions index "
                f"{interactions.num_items}; encode the same catalog"
            )
        return self  # nothing to learn

    def buyer_vectors(self, batch: Mapping[str, Any]) -> torch.Tensor:
        """L2-normalized ``[B, d]``: sum_l w_l t_l / sum_l w_l over the unmasked history."""
        items, weights, mask = _history(batch)
        weights = torch.from_numpy(np.where(mask, weights, 0.0).astype(np.float32))  # [B, L]
        coefficients = weights / weights.sum(dim=1, keepdim=True).clamp_min(1e-12)  # [B, L]
        pooled = torch.einsum(
            "bl,bld->bd", coefficients, self.item_vectors[torch.from_numpy(items)]
        )  # [B, d]
        return F.normalize(pooled, dim=1)

    def recommend(self, batch: Mapping[str, Any], k: int) -> np.ndarray:
        _, top = topk_scores_chunked(self.buyer_vectors(batch), self.item_vectors, k)
        return top.numpy().astype(np.int64)
