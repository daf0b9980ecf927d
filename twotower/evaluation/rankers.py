"""Rankers: the model and the non-learned baselines, each scoring the whole candidate catalog for a batch.

Every ranker is a plain class: ``fit(interactions)`` on the training period, then
``scores(batch) -> float32 [B, N]`` for a :class:`~twotower.data.batches.HistoryBatch` of padded histories
(as a ``HistoryDataset`` yields it; by hand: ``HistoryBatch.from_arrays(items, weights, mask)``). Lists are built from the scores
by the served scoring function (:mod:`twotower.scoring`: seen-item exclusion, repeat score, deterministic
ties), the same for every ranker. ``recommend(batch, k)`` is the plain top-k of the scores (no exclusion).

- :class:`PopularityRanker` — training-period interaction counts, the same list for all. With a repeat score
  in the scoring settings it is the ``repeat`` baseline (the buyer's own items first, then popular ones).
- :class:`RecentPopularityRanker` — counts over the last ``days`` of the training period.
- :class:`~twotower.evaluation.knn.ItemKNNRanker` — item-to-item co-occurrence (in ``knn.py``).
- :class:`TextOnlyRanker` — the frozen text encoder's product vectors: what the text alone knows.
- :class:`ModelRanker` — the trained buyer tower over the bundle's item vectors (exact, or through its index).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import scipy.sparse as sp
import torch
import torch.nn.functional as F
from torch import nn

from twotower.data.batches import HistoryBatch
from twotower.scoring import SECONDS_PER_DAY, History, ScoringSettings, rank_dense

__all__ = [
    "Interactions",
    "Ranker",
    "PopularityRanker",
    "RecentPopularityRanker",
    "TextOnlyRanker",
    "ModelRanker",
    "weighted_history_matrix",
]


@dataclass
class Interactions:
    """Training-period events sorted by (buyer, time): what baselines may learn from.

    buyer: int [n]; item: int [n] catalog item index in ``[0, num_items)``; weight: float [n] event weight;
    time: float [n] epoch seconds (optional; ``RecentPopularityRanker`` needs it).
    """

    buyer: np.ndarray
    item: np.ndarray
    weight: np.ndarray
    num_items: int
    time: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.buyer, self.item = np.asarray(self.buyer), np.asarray(self.item, dtype=np.int64)
        self.weight = np.asarray(self.weight, dtype=np.float32)
        lengths = [len(self.buyer), len(self.item), len(self.weight)]
        if self.time is not None:
            self.time = np.asarray(self.time, dtype=np.float64)
            lengths.append(len(self.time))
        if len(set(lengths)) != 1:
            raise ValueError(f"buyer, item, weight (and time) must have the same length; got {lengths}")
        if len(self.item) and (self.item.min() < 0 or self.item.max() >= self.num_items):
            raise ValueError(
                f"item indices must lie in [0, {self.num_items}); got {self.item.min()}..{self.item.max()}"
            )
        if len(self.buyer) > 1 and (np.diff(self.buyer) < 0).any():
            raise ValueError("interactions must be sorted by buyer (then time), as EventLog keeps them")


def as_numpy(value: Any) -> np.ndarray:
    return value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)


def history_arrays(batch: HistoryBatch) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(items int64, weights float32, mask bool)``, each ``[B, L]``, from a ranker batch."""
    if not isinstance(batch, HistoryBatch):
        raise TypeError(
            f"rankers take a twotower.data.batches.HistoryBatch, got {type(batch).__name__}; build one from "
            "arrays with HistoryBatch.from_arrays(history_items, history_weights, history_mask)"
        )
    items = as_numpy(batch.history_items).astype(np.int64)
    weights = as_numpy(batch.history_weights).astype(np.float32)
    mask = as_numpy(batch.history_mask).astype(bool)
    if items.ndim != 2 or items.shape != weights.shape or items.shape != mask.shape:
        raise ValueError(
            f"history_items, history_weights and history_mask must all be [B, L]; got {items.shape}, "
            f"{weights.shape}, {mask.shape}"
        )
    return items, weights, mask


def weighted_history_matrix(batch: HistoryBatch, num_items: int) -> sp.csr_matrix:
    """Sparse ``[B, num_items]``: entry (b, i) = summed event weight of item i in row b's history."""
    items, weights, mask = history_arrays(batch)
    rows = np.broadcast_to(np.arange(items.shape[0])[:, None], items.shape)  # [B, L]
    # coo -> csr sums repeated (row, item) pairs: a re-viewed item counts once per event
    return sp.coo_matrix(
        (weights[mask], (rows[mask], items[mask])), shape=(items.shape[0], num_items), dtype=np.float32
    ).tocsr()


class Ranker(Protocol):
    """What the evaluator needs from a method: fit on the training period, then scores per history."""

    name: str

    def fit(self, interactions: Interactions) -> Ranker: ...

    def scores(self, batch: HistoryBatch) -> np.ndarray:
        """float32 ``[B, N]``: higher = better, for every catalog item."""
        ...


def plain_top_k(ranker: Ranker, batch: HistoryBatch, k: int) -> np.ndarray:
    """int64 ``[B, k]``: the ranker's top k with seen items allowed and no repeat score (ties: lower index)."""
    items, _, mask = history_arrays(batch)
    return rank_dense(ranker.scores(batch), History(items, mask), ScoringSettings(exclude_seen=False), k)[0]


def _check_fitted(value: Any, name: str) -> Any:
    if value is None:
        raise RuntimeError(f"{name}: call fit() before scores()")
    return value


class _Broadcast:
    """A ranker whose scores are one vector, the same for every buyer."""

    name = "broadcast"
    vector: np.ndarray | None = None

    def scores(self, batch: HistoryBatch) -> np.ndarray:
        vector = _check_fitted(self.vector, self.name)
        return np.broadcast_to(vector, (len(history_arrays(batch)[0]), len(vector)))

    def recommend(self, batch: HistoryBatch, k: int) -> np.ndarray:
        return plain_top_k(self, batch, k)


class PopularityRanker(_Broadcast):
    """Training-period interaction counts (ties: lower item index first)."""

    name = "popularity"

    def __init__(self, weighted: bool = False) -> None:
        """``weighted``: count event weights (a purchase counts 10 views) instead of events."""
        self.weighted = weighted

    def fit(self, interactions: Interactions) -> PopularityRanker:
        weights = interactions.weight if self.weighted else None
        self.vector = np.bincount(
            interactions.item, weights=weights, minlength=interactions.num_items
        ).astype(np.float32)
        return self


class RecentPopularityRanker(_Broadcast):
    """Interaction counts over the last ``days`` of the training period; older popularity breaks ties."""

    name = "recent_popularity"

    def __init__(self, days: float = 30.0) -> None:
        if not days > 0:
            raise ValueError(f"recent_popularity days must be > 0, got {days}")
        self.days = float(days)

    def fit(self, interactions: Interactions) -> RecentPopularityRanker:
        if interactions.time is None:
            raise ValueError("recent_popularity needs interaction times (Interactions.time)")
        n = interactions.num_items
        total = np.bincount(interactions.item, minlength=n).astype(np.float64)
        recent = np.zeros(n)
        if len(interactions.time):
            since = interactions.time.max() - self.days * SECONDS_PER_DAY
            recent = np.bincount(interactions.item[interactions.time >= since], minlength=n).astype(
                np.float64
            )
        # counts are integers: all-time popularity scaled into [0, 0.5) only orders items with equal recent counts
        self.vector = (recent + 0.5 * total / (total.max() + 1.0)).astype(np.float32)
        return self


class TextOnlyRanker:
    """Cosine between the event-weighted mean of the history's text vectors and every product's text vector."""

    name = "text_only"

    def __init__(self, item_vectors: np.ndarray | torch.Tensor) -> None:
        """``item_vectors``: float ``[N, d]`` text-encoder vectors of the candidate catalog, row = item index."""
        vectors = torch.as_tensor(np.asarray(item_vectors, dtype=np.float32))
        if vectors.dim() != 2 or not len(vectors):
            raise ValueError(f"text_only needs item vectors [N, d]; got shape {tuple(vectors.shape)}")
        self.item_vectors = F.normalize(vectors, dim=1)

    def fit(self, interactions: Interactions | None = None) -> TextOnlyRanker:
        if interactions is not None and interactions.num_items != len(self.item_vectors):
            raise ValueError(
                f"text_only has vectors for {len(self.item_vectors)} items but the interactions index "
                f"{interactions.num_items}; encode the same catalog"
            )
        return self  # nothing to learn

    def buyer_vectors(self, batch: HistoryBatch) -> torch.Tensor:
        """L2-normalized ``[B, d]``: sum_l w_l t_l / sum_l w_l over the unmasked history."""
        items, weights, mask = history_arrays(batch)
        weights = torch.from_numpy(np.where(mask, weights, 0.0).astype(np.float32))  # [B, L]
        coefficients = weights / weights.sum(dim=1, keepdim=True).clamp_min(1e-12)  # [B, L]
        pooled = torch.einsum(
            "bl,bld->bd", coefficients, self.item_vectors[torch.from_numpy(items)]
        )  # [B, d]
        return F.normalize(pooled, dim=1)

    def scores(self, batch: HistoryBatch) -> np.ndarray:
        return (self.buyer_vectors(batch) @ self.item_vectors.T).numpy()

    def recommend(self, batch: HistoryBatch, k: int) -> np.ndarray:
        return plain_top_k(self, batch, k)


class ModelRanker:
    """The trained model: buyer tower over the bundle's stored item vectors, inner-product scores.

    ``scores`` is exact over the whole catalog (what the model knows). ``candidates`` asks a vector index
    instead (``evaluate.use_index=true``: what the served ANN index returns, so the difference is its cost).

    Example:
        >>> ranker = ModelRanker(load_buyer_tower(bundle.checkpoint_path), bundle.embeddings)  # doctest: +SKIP
        >>> ranker.recommend(batch, k=10)  # doctest: +SKIP
    """

    name = "model"

    def __init__(
        self, buyer_tower: nn.Module, item_embeddings: np.ndarray | torch.Tensor, index: Any = None
    ) -> None:
        self.buyer_tower = buyer_tower.eval()
        self.item_embeddings = torch.as_tensor(np.asarray(item_embeddings, dtype=np.float32))
        self.index = index

    @property
    def item_vectors(self) -> np.ndarray:
        """The catalog's item vectors [N, D] (for the scoring function's history similarity)."""
        return self.item_embeddings.numpy()

    def fit(self, interactions: Any = None) -> ModelRanker:
        return self  # trained already

    @torch.no_grad()
    def buyer_vectors(self, batch: HistoryBatch) -> torch.Tensor:
        items, weights, mask = (torch.from_numpy(a) for a in history_arrays(batch))
        extra = {}  # time-gap buckets only for towers that read them; a plain pooling module gets none
        if getattr(self.buyer_tower, "uses_gaps", False) and batch.history_gaps is not None:
            extra["gaps"] = torch.as_tensor(batch.history_gaps).cpu()
        return self.buyer_tower.pool(self.item_embeddings, items, weights, mask, **extra)  # [B, D]

    def scores(self, batch: HistoryBatch) -> np.ndarray:
        return (self.buyer_vectors(batch) @ self.item_embeddings.T).numpy()

    def candidates(
        self, batch: HistoryBatch, count: int, history_items: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Through the index: ``(ids [B, count], scores [B, count], scores of history_items [B, L])``: the
        ``count`` best by the index, and the exact scores of the given rows (the request's history)."""
        if self.index is None:
            raise RuntimeError(
                "ModelRanker.candidates needs the bundle's index (load_bundle(load_index=True))"
            )
        vectors = self.buyer_vectors(batch)
        scores, ids = self.index.search(np.ascontiguousarray(vectors.numpy()), count)
        rows = torch.from_numpy(np.asarray(history_items, dtype=np.int64))
        history = torch.einsum("bld,bd->bl", self.item_embeddings[rows], vectors).numpy()
        return np.asarray(ids, np.int64), np.asarray(scores, np.float32), history

    def recommend(self, batch: HistoryBatch, k: int) -> np.ndarray:
        return plain_top_k(self, batch, k)
