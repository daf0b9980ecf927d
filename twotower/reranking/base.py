"""Re-ranking stage: the interface, the registry, the per-bundle context, and the pass-through reranker.

A reranker reorders the top ``candidates`` items that retrieval returned (best first) and keeps ``k``.
It is pure numpy, with no HTTP, Lightning or Hydra: the service and ``twotower.evaluate`` call the same
object. A new reranker is one class decorated with ``@register_reranker("name")`` and one yaml under
``conf/reranker/`` whose keys equal the constructor arguments.

Two steps, so that per-request work is O(candidates):
- construction (from the config) validates the options (operators, types, ranges);
- ``prepare(context)`` once per loaded bundle validates the catalog columns the options name and
  precomputes per-catalog arrays (filter mask, boosts, group codes), memoized on the context, so a
  reload that builds a new context starts clean.

Example (the intended call sites, once wired):
    >>> reranker = hydra.utils.instantiate(cfg.reranker)            # at startup
    >>> context = RerankContext.from_catalog(recommender.catalog, recommender.embeddings)  # per bundle
    >>> reranker.prepare(context)                                     # at load: bad columns fail here
    >>> fetch = reranker.fetch_size(k)                                # retrieve this many, not k
    >>> rows, scores = reranker.rerank(rows, scores, k, context)      # per request, rows best first
    >>> # offline: RerankedRanker(model, reranker, context) (offline.py), or rerank_batch(...)
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Hashable, Mapping
from typing import Any

import numpy as np
import pandas as pd

__all__ = [
    "RERANKERS",
    "Passthrough",
    "RerankContext",
    "Reranker",
    "build_reranker",
    "register_reranker",
    "rerank_batch",
]

log = logging.getLogger(__name__)

RERANKERS: dict[str, type[Reranker]] = {}


def register_reranker(name: str) -> Callable[[type[Reranker]], type[Reranker]]:
    def register(cls: type[Reranker]) -> type[Reranker]:
        cls.name = name
        RERANKERS[name] = cls
        return cls

    return register


def build_reranker(name: str, **options: Any) -> Reranker:
    """A registered reranker by name (what `reranker=NAME` selects), with its constructor options."""
    if name not in RERANKERS:
        raise ValueError(f"unknown reranker {name!r}; registered: {', '.join(sorted(RERANKERS))}")
    return RERANKERS[name](**options)


class RerankContext:
    """What rerankers may read about one loaded bundle: catalog columns (numpy arrays of length N, row =
    item index) and the item vectors float32 [N, D]. Immutable after construction; rerankers memoize
    their per-catalog arrays in it (``memo``), so contexts must not be shared across bundles.
    """

    def __init__(self, columns: Mapping[str, Any] | pd.DataFrame, item_vectors: np.ndarray | None = None):
        if isinstance(columns, pd.DataFrame):
            columns = {str(name): columns[name].to_numpy() for name in columns.columns}
        self.columns: dict[str, np.ndarray] = {name: np.asarray(values) for name, values in columns.items()}
        self.item_vectors = None if item_vectors is None else np.asarray(item_vectors, dtype=np.float32)
        sizes = {name: len(values) for name, values in self.columns.items()}
        if self.item_vectors is not None:
            if self.item_vectors.ndim != 2:
                raise ValueError(f"item_vectors must be [N, D]; got shape {self.item_vectors.shape}")
            sizes["item_vectors"] = self.item_vectors.shape[0]
        if len(set(sizes.values())) > 1:
            raise ValueError(f"catalog columns and item vectors must all have N rows; got {sizes}")
        self.num_items = next(iter(sizes.values()), 0)
        self._memo: dict[Hashable, Any] = {}
        self._lock = threading.RLock()  # builds may memoize their own parts

    @classmethod
    def from_catalog(
        cls,
        catalog: Any,
        item_vectors: np.ndarray | None,
        extra: Mapping[str, Any] | pd.DataFrame | None = None,
    ) -> RerankContext:
        """Columns of a `twotower.data.catalog.Catalog` (product_id, title, brand, category, popularity...)
        plus `extra` columns (e.g. price, in_stock from a product feed), all indexed by item row."""
        frame = catalog.to_frame().drop(columns=["aliases"], errors="ignore")
        columns: dict[str, Any] = {str(c): frame[c].to_numpy() for c in frame.columns}
        if isinstance(extra, pd.DataFrame) and "product_id" in extra.columns:
            extra = _align_by_product_id(catalog, extra)
        if extra is not None:
            columns.update({str(name): np.asarray(values) for name, values in extra.items()})
        return cls(columns, item_vectors)

    def column(self, name: str, needed_by: str) -> np.ndarray:
        """A column by name, or a ValueError that names it and lists the columns the catalog has."""
        if name not in self.columns:
            raise ValueError(
                f"{needed_by} names catalog column {name!r}, which this catalog does not have; "
                f"available columns: {', '.join(sorted(self.columns))}"
            )
        return self.columns[name]

    def memo(self, key: Hashable, build: Callable[[], Any]) -> Any:
        """`build()` once per key per context (thread-safe: workers and reload may race on first use)."""
        if key in self._memo:  # the per-request path: a dict read, no lock
            return self._memo[key]
        with self._lock:
            if key not in self._memo:
                self._memo[key] = build()
            return self._memo[key]


def _align_by_product_id(catalog: Any, extra: pd.DataFrame) -> dict[str, np.ndarray]:
    """Columns of a product feed keyed by product_id, as arrays indexed by item row. Feed rows whose id the
    catalog does not know are dropped and logged with their count; items missing from the feed get NaN
    (numeric, bool) or None, which no filter value matches."""
    rows = np.asarray(catalog.resolve(extra["product_id"].tolist()), dtype=np.int64)
    known = rows >= 0
    if not known.all():
        log.warning("%d product feed rows name products the catalog does not have; ignored", (~known).sum())
    out: dict[str, np.ndarray] = {}
    for name in extra.columns:
        if name == "product_id":
            continue
        values = extra[name].to_numpy()[known]
        numeric = values.dtype.kind in "biuf"
        column = np.full(len(catalog), np.nan if numeric else None, dtype=np.float64 if numeric else object)
        column[rows[known]] = values
        out[str(name)] = column
    return out


class Reranker:
    """Base class. Subclasses implement `_rerank` on validated inputs and may override `_prepare`."""

    name = "base"
    candidates = 0  # how many retrieved items to reorder; 0 = just k (nothing to reorder)

    def fetch_size(self, k: int) -> int:
        """How many items retrieval should return for a list of k."""
        return max(int(k), int(self.candidates))

    def prepare(self, context: RerankContext) -> None:
        """Validate the columns this reranker needs and precompute its arrays; call once per bundle load."""
        context.memo(self, lambda: self._prepare(context))

    def _prepare(self, context: RerankContext) -> Any:
        return None

    def rerank(
        self, rows: np.ndarray, scores: np.ndarray, k: int, context: RerankContext
    ) -> tuple[np.ndarray, np.ndarray]:
        """Reorder ``rows`` (int64 [n] catalog rows, best first; -1 = empty slot, dropped) with their
        ``scores`` float32 [n]; returns at most ``k`` (rows int64, scores float32), fewer when filters or
        caps leave fewer."""
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        scores = np.asarray(scores, dtype=np.float32).reshape(-1)
        if rows.shape != scores.shape:
            raise ValueError(f"rows and scores must have the same length; got {len(rows)} and {len(scores)}")
        if k < 1:
            raise ValueError(f"k must be >= 1; got {k}")
        valid = rows >= 0
        if not valid.all():
            rows, scores = rows[valid], scores[valid]
        if len(rows) and int(rows.max()) >= context.num_items:
            raise ValueError(f"row {int(rows.max())} is outside the catalog ({context.num_items} items)")
        state = context.memo(self, lambda: self._prepare(context))
        return self._rerank(rows, scores, k, context, state)

    def _rerank(
        self, rows: np.ndarray, scores: np.ndarray, k: int, context: RerankContext, state: Any
    ) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}(candidates={self.candidates})"


@register_reranker("none")
class Passthrough(Reranker):
    """No re-ranking: the first k retrieved items, as retrieved (the default)."""

    def __init__(self) -> None:
        self.candidates = 0

    def _rerank(
        self, rows: np.ndarray, scores: np.ndarray, k: int, context: RerankContext, state: Any
    ) -> tuple[np.ndarray, np.ndarray]:
        return rows[:k], scores[:k]


def rerank_batch(
    reranker: Reranker, rows: np.ndarray, scores: np.ndarray, k: int, context: RerankContext
) -> tuple[np.ndarray, np.ndarray]:
    """Re-rank every query of a batch (offline evaluation): ``rows`` int [B, C] and ``scores`` [B, C] ->
    (int64 [B, k], float32 [B, k]); lists left shorter than k are padded with row -1 and score -inf (what
    `twotower.evaluation.metrics.RetrievalMetrics.update` treats as empty slots)."""
    rows, scores = np.asarray(rows), np.asarray(scores)
    if rows.ndim != 2 or rows.shape != scores.shape:
        raise ValueError(f"rows and scores must both be [B, C]; got {rows.shape} and {scores.shape}")
    out_rows = np.full((len(rows), k), -1, dtype=np.int64)
    out_scores = np.full((len(rows), k), -np.inf, dtype=np.float32)
    for b in range(len(rows)):
        picked, picked_scores = reranker.rerank(rows[b], scores[b], k, context)
        out_rows[b, : len(picked)] = picked
        out_scores[b, : len(picked)] = picked_scores
    return out_rows, out_scores
