"""The serving core, without HTTP: product ids -> buyer vector -> top-k -> catalog-enriched items.

Lists are built by the served scoring function (:func:`twotower.scoring.rank_candidates`, the one
``twotower.evaluate`` ranks with) under the bundle's recorded scoring settings (``Bundle.scoring``: seen-item
exclusion, repeat score, cap on history items), from the index's top ``k + L`` candidates and the exact scores
of the ``L`` history items the buyer tower sees.

Built once from a bundle; everything a request needs is precomputed (id -> row dict, popularity order,
category/brand -> rows), so a request costs a few dict lookups, one batched buyer-tower call, one batched
index search and O(k) enrichment. History items use the bundle's stored item embeddings: no text is encoded
per request.

Per-request problems (unknown event type, nothing to encode) come back as `QueryError` values in the result
list instead of being raised, so one bad request never fails the other requests of its batch.

Over 300 lines on purpose: request preparation, search and enrichment all read the same precomputed
tables of one immutable object (swapped whole on reload); split, they would pass those tables around.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from twotower.data.batches import time_gap_buckets
from twotower.data.schema import EVENT_TYPES, normalize_id, normalize_key
from twotower.model.buyer_tower import BuyerTower, load_buyer_tower
from twotower.retrieval.bundle import Bundle, load_bundle
from twotower.retrieval.index import IndexBuilder, VectorIndex
from twotower.scoring import History, ScoringSettings, item_features, rank_candidates
from twotower.serving.schemas import MAX_INTERACTIONS

log = logging.getLogger(__name__)


class QueryError(ValueError):
    """A request that cannot be answered as asked; `status` is the HTTP status it maps to."""

    def __init__(self, message: str, status: int = 422) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class Query:
    """One buyer's request. `event_types` are raw names (any known spelling); `timestamps` are epoch seconds.

    `exclude_seen`: None = the bundle's scoring settings; True/False different from theirs: the bundle's
    settings for that exclusion (``Bundle.scoring_for``).
    """

    product_ids: Sequence[str]
    event_types: Sequence[str]
    timestamps: Sequence[float | None] | None = None
    k: int = 10
    exclude_seen: bool | None = None
    categories: Sequence[str] | None = None
    brands: Sequence[str] | None = None
    cache_key: Hashable | None = None  # set by the service when the buyer-vector cache is on (stages.py)
    keep: int | None = None  # set by the re-ranking stage: k is its candidates, `keep` the items returned


@dataclass
class Recommendation:
    items: list[dict[str, Any]]
    unknown_product_ids: list[str]
    fallback: str | None
    model_version: str


@dataclass
class BuyerVector:
    embedding: np.ndarray  # float32 [D]
    unknown_product_ids: list[str]
    model_version: str


@dataclass
class _Prepared:
    """The history the buyer tower sees (and the scoring function scores): the latest max_history known items."""

    rows: np.ndarray  # int64 [L] known history rows, in request order
    weights: np.ndarray  # float32 [L] event weights
    times: np.ndarray  # float64 [L] epoch seconds, NaN = not given (no decay, see twotower.scoring.History)
    unknown: list[str]
    cache_key: Hashable | None = None
    keep: int | None = None


@dataclass
class RecommenderSettings:
    """Serving knobs. `index` rebuilds the bundle's index at load (e.g. "hnsw" for a bundle exported with flat)."""

    threads: int = 1
    index: str | None = None
    index_options: dict | None = None
    overfetch: float = 2.0
    exact_filter_max: int = 20_000
    max_interactions: int = MAX_INTERACTIONS  # the request schema's limit (serving.schemas)

    def __post_init__(self) -> None:
        if self.threads < 1:
            raise ValueError(f"recommender.threads must be >= 1, got {self.threads}")
        if self.overfetch < 1:
            raise ValueError(f"recommender.overfetch must be >= 1, got {self.overfetch}")
        if self.exact_filter_max < 0:
            raise ValueError(f"recommender.exact_filter_max must be >= 0, got {self.exact_filter_max}")
        if not 1 <= self.max_interactions <= MAX_INTERACTIONS:
            raise ValueError(
                f"recommender.max_interactions must be in [1, {MAX_INTERACTIONS}] (the request schema's limit), "
                f"got {self.max_interactions}"
            )


class Recommender:
    """Answers retrieve/encode queries from one loaded bundle; immutable after construction (safe to swap)."""

    # -- service hooks (twotower/serving/stages.py), set right after loading; None = off -----------------
    stage: Any = None  # second stage (re-ranking): `retrieve` hands queries to it, `_result` the candidates
    vector_cache: Any = None  # buyer-vector cache: `_buyer_vectors` hands the histories to it

    def __init__(
        self, bundle: Bundle, buyer_tower: BuyerTower, settings: RecommenderSettings | None = None
    ) -> None:
        if bundle.index is None:
            raise ValueError(f"bundle {bundle.path} was loaded without its index (load_index=False)")
        self.settings = settings or RecommenderSettings()
        self.bundle = bundle
        self.version = bundle.version
        self.tower = buyer_tower.eval()
        self.index: VectorIndex = bundle.index
        catalog = bundle.catalog
        self.catalog = catalog
        self.embeddings = np.ascontiguousarray(bundle.embeddings, dtype=np.float32)
        self.num_items, self.dim = self.embeddings.shape
        self.schema = bundle.event_schema
        self.weight_by_code = self.schema.weight_array
        self.scoring: ScoringSettings = bundle.scoring  # chosen on val at export
        # for requests that set the other exclusion: its own settings, chosen on val at export too
        self.other_scoring: ScoringSettings = bundle.scoring_for(not self.scoring.exclude_seen)
        self.max_history = int(bundle.data_config.get("max_history") or self.settings.max_interactions)
        self._event_codes: dict[str, int] = {}
        self._aliases = self._matching_ids(catalog.aliases)  # id -> row (duplicates included): O(1)
        popularity = np.asarray(catalog.popularity, dtype=np.float32)
        self._popular = np.argsort(-popularity, kind="stable")  # rows, most popular first
        top = float(popularity.max()) if len(popularity) and popularity.max() > 0 else 1.0
        self._popularity_share = popularity / top
        self._catalog_features = item_features(catalog)  # the learned repeat score's per-item inputs
        self._rows_by_category = self._group_rows(catalog.categories)
        self._rows_by_brand = self._group_rows(catalog.brands)
        # Catalog columns as plain lists: enrichment is O(1) per returned item.
        self._fields = (
            catalog.product_ids,
            catalog.titles,
            catalog.descriptions,
            catalog.brands,
            catalog.categories,
            catalog.photo_urls,
        )

    # -- construction -------------------------------------------------------------------------------
    @classmethod
    def from_bundle(cls, path: str | Path, settings: RecommenderSettings | None = None) -> Recommender:
        """Load a bundle (checksums and consistency checked) and its buyer tower; optionally rebuild the index."""
        settings = settings or RecommenderSettings()
        torch.set_num_threads(settings.threads)
        bundle = load_bundle(path, load_index=settings.index is None)
        if settings.index is not None:
            builder = IndexBuilder(kind=settings.index, **dict(settings.index_options or {}))
            log.info("rebuilding the index of %s as %s", bundle.path, builder)
            bundle.index = builder.build(bundle.embeddings)
        tower = load_buyer_tower(bundle.checkpoint_path)
        recommender = cls(bundle, tower, settings)
        recommender.warm_up()
        return recommender

    @staticmethod
    def _matching_ids(aliases: dict[str, int]) -> dict[str, int]:
        """Alias -> row, keyed by `normalize_id` (as request ids are looked up). Normalizing is idempotent,
        so this is right whether or not the catalog already cleaned its ids; the raw spelling stays a key too."""
        table = dict(aliases)
        collisions = 0
        for alias, row in aliases.items():
            key = normalize_id(alias)
            if table.setdefault(key, row) != row:
                collisions += 1
        if collisions:
            log.warning(
                "%d catalog ids collide once normalized (invisible characters, NFKC); first kept", collisions
            )
        return table

    @staticmethod
    def _group_rows(values: Sequence[str]) -> dict[str, np.ndarray]:
        groups: dict[str, list[int]] = {}
        for row, value in enumerate(values):
            key = normalize_key(value)
            if key:
                groups.setdefault(key, []).append(row)
        return {key: np.asarray(rows, dtype=np.int64) for key, rows in groups.items()}

    def warm_up(self) -> None:
        """One query through every path so the first real request does not pay for lazy initialization."""
        pid = self.catalog.product_ids[0]
        self.retrieve([Query([pid], ["view"], k=1), Query([], [], k=1)])

    def info(self) -> dict[str, Any]:
        manifest = self.bundle.manifest
        return {
            "model_version": self.version,
            "bundle": str(self.bundle.path),
            "created_at": manifest.get("created_at"),
            "git_commit": manifest.get("git_commit"),
            "text_encoder_id": manifest.get("text_encoder_id"),
            "embedding_dim": self.dim,
            "num_products": self.num_items,
            "num_product_ids": len(self._aliases),
            "num_categories": len(self._rows_by_category),
            "num_brands": len(self._rows_by_brand),
            "index": {
                "kind": self.index.kind,
                "ntotal": self.index.ntotal,
                **{
                    k: v for k, v in self.index.info.items() if k in ("factory", "params", "recall", "metric")
                },
            },
            "aggregation": getattr(self.tower, "aggregation_method", None),
            "max_history": self.max_history,
            "scoring": self.scoring.to_dict(),
            "scoring_other_exclusion": self.other_scoring.to_dict(),
            "event_weights": dict(zip(EVENT_TYPES, self.weight_by_code.tolist(), strict=True)),
            "counts": manifest.get("counts", {}),
            "metrics": manifest.get("metrics", {}),
        }

    # -- request preparation -------------------------------------------------------------------------
    def _event_code(self, name: str) -> int:
        code = self._event_codes.get(name)
        if code is None:
            code = self.schema.code(name)
            if len(self._event_codes) < 4096:  # bounded memo of raw spellings
                self._event_codes[name] = code
        return code

    def _prepare(self, query: Query) -> _Prepared:
        n = len(query.product_ids)
        if n != len(query.event_types):
            raise QueryError(f"{n} product ids but {len(query.event_types)} event types")
        if n > self.settings.max_interactions:
            raise QueryError(f"{n} interactions; at most {self.settings.max_interactions} are accepted")
        if query.k < 1:
            raise QueryError(f"k must be >= 1, got {query.k}")
        rows: list[int] = []
        codes: list[int] = []
        times: list[float] = []
        order: list[float] = []
        unknown: list[str] = []
        stamps = query.timestamps
        for i, (pid, event) in enumerate(zip(query.product_ids, query.event_types, strict=True)):
            code = self._event_code(event)
            if code < 0:
                raise QueryError(
                    f"recent_interactions[{i}].event_type {event!r} is not a known event type; "
                    f"known: {', '.join(EVENT_TYPES)} (or their aliases)"
                )
            row = self._aliases.get(pid)
            if row is None:  # e.g. a bidi mark, zero-width space or full-width digits around a known id
                row = self._aliases.get(normalize_id(pid), -1)
            if row < 0:
                if pid not in unknown:
                    unknown.append(pid)
                continue
            rows.append(row)
            codes.append(code)
            stamp = stamps[i] if stamps is not None else None
            times.append(np.nan if stamp is None else float(stamp))
            order.append(float(i) if stamp is None else stamp)
        row_arr = np.asarray(rows, dtype=np.int64)
        code_arr = np.asarray(codes, dtype=np.int64)
        time_arr = np.asarray(times, dtype=np.float64)
        if len(rows) > self.max_history:
            # Keep the most recent max_history, as training did (by timestamp when given, else list order).
            keep = np.sort(np.argsort(np.asarray(order), kind="stable")[-self.max_history :])
            row_arr, code_arr, time_arr = row_arr[keep], code_arr[keep], time_arr[keep]
        return _Prepared(
            row_arr, self.weight_by_code[code_arr], time_arr, unknown, query.cache_key, query.keep
        )

    def settings_for(self, query: Query) -> ScoringSettings:
        """The bundle's scoring settings, or those recorded for the other exclusion setting when the request
        sets it (``Bundle.scoring_for``)."""
        if query.exclude_seen is None or query.exclude_seen == self.scoring.exclude_seen:
            return self.scoring
        return self.other_scoring

    @staticmethod
    def _history(prepared: Sequence[_Prepared]) -> History:
        """The scoring function's history for a batch, left-aligned. "now" is left unset: each row's newest
        given timestamp. With every time known that ranks as evaluate does with the target's time as "now"
        (the repeat score is divided by the history's largest, so a decay factor common to all items cancels);
        without any timestamp nothing decays."""
        width = max(1, max(len(p.rows) for p in prepared))
        items = np.zeros((len(prepared), width), dtype=np.int64)
        weights = np.zeros((len(prepared), width), dtype=np.float32)
        times = np.full((len(prepared), width), np.nan)
        mask = np.zeros((len(prepared), width), dtype=bool)
        for b, p in enumerate(prepared):
            n = len(p.rows)
            items[b, :n], weights[b, :n], times[b, :n], mask[b, :n] = p.rows, p.weights, p.times, True
        return History(items, mask, weights, times)

    def _allowed_rows(self, query: Query) -> np.ndarray | None:
        """Sorted rows passing the category/brand filters, or None when the query has no filter."""
        allowed: np.ndarray | None = None
        for values, groups in (
            (query.categories, self._rows_by_category),
            (query.brands, self._rows_by_brand),
        ):
            if not values:
                continue
            parts = [groups.get(normalize_key(v)) for v in values]
            rows = np.unique(np.concatenate([p for p in parts if p is not None] or [np.empty(0, np.int64)]))
            allowed = rows if allowed is None else np.intersect1d(allowed, rows, assume_unique=True)
        return allowed

    # -- model ---------------------------------------------------------------------------------------
    def _buyer_vectors(self, prepared: Sequence[_Prepared]) -> np.ndarray:
        """Buyer vectors float32 [B, D] for histories that have at least one known item."""
        if self.vector_cache is not None:  # hook: cached vectors skip the tower
            return self.vector_cache.vectors(prepared, self._tower_vectors)
        return self._tower_vectors(prepared)

    @torch.inference_mode()
    def _tower_vectors(self, prepared: Sequence[_Prepared]) -> np.ndarray:
        length = max(len(p.rows) for p in prepared)
        rows = np.zeros((len(prepared), length), dtype=np.int64)
        weights = np.zeros((len(prepared), length), dtype=np.float32)
        times = np.full((len(prepared), length), np.nan)
        mask = np.zeros((len(prepared), length), dtype=bool)
        # right-aligned, as training and evaluate build histories: the transformer tower reads the newest
        # (last) position, which for a shorter history in a left-aligned batch would be padding
        for b, p in enumerate(prepared):
            n = len(p.rows)
            rows[b, length - n :], weights[b, length - n :], mask[b, length - n :] = p.rows, p.weights, True
            times[b, length - n :] = p.times
        history = torch.from_numpy(self.embeddings[rows])  # [B, L, D]
        # bucketed as training buckets the event times; skipped for towers that ignore them (the default)
        gaps = torch.from_numpy(time_gap_buckets(times, mask)) if self.tower.uses_gaps else None
        vectors = self.tower(history, torch.from_numpy(weights), torch.from_numpy(mask), gaps)  # [B, D]
        return np.ascontiguousarray(vectors.float().numpy())

    # -- public API ------------------------------------------------------------------------------------
    def _prepare_batch(
        self, queries: Sequence[Query], answer_cold: Callable[[Query, _Prepared], Any]
    ) -> tuple[list, list[tuple[int, Query, _Prepared]]]:
        """Answers bad queries (QueryError) and queries with no known product (`answer_cold`) in place; the
        others get a placeholder slot, filled after one batched buyer-tower call."""
        out: list = []
        warm: list[tuple[int, Query, _Prepared]] = []
        for query in queries:
            try:
                p = self._prepare(query)
            except QueryError as error:
                out.append(error)
                continue
            if len(p.rows) == 0:
                out.append(answer_cold(query, p))
            else:
                warm.append((len(out), query, p))
                out.append(QueryError("pending"))
        return out, warm

    @staticmethod
    def _nothing_to_encode(query: Query, p: _Prepared) -> QueryError:
        unknown = ", ".join(repr(u) for u in p.unknown[:5]) or "none given"
        return QueryError(
            f"no known product in recent_interactions (unknown ids: {unknown}); nothing to encode"
        )

    def encode(self, queries: Sequence[Query]) -> list[BuyerVector | QueryError]:
        """Buyer vectors for a batch; a query with no known product is a QueryError (nothing to encode)."""
        out, warm = self._prepare_batch(queries, self._nothing_to_encode)
        if warm:
            vectors = self._buyer_vectors([p for _, _, p in warm])
            for (slot, _, p), vector in zip(warm, vectors, strict=True):
                out[slot] = BuyerVector(vector, p.unknown, self.version)
        return out

    def retrieve(self, queries: Sequence[Query], rerank: bool = True) -> list[Recommendation | QueryError]:
        """Top-k recommendations for a batch of queries (errors in place, never raised for one query)."""
        if rerank and self.stage is not None:  # hook: the second stage widens k, re-ranks, keeps k
            return self.stage.retrieve(self, queries)
        out, warm = self._prepare_batch(queries, self._popular_fallback)
        if warm:
            vectors = self._buyer_vectors([p for _, _, p in warm])
            allowed = [self._allowed_rows(query) for _, query, _ in warm]
            groups: dict[ScoringSettings, list[int]] = {}  # one batched search per scoring setting
            for i, (_, query, _) in enumerate(warm):
                if allowed[i] is None:
                    groups.setdefault(self.settings_for(query), []).append(i)
            for settings, members in groups.items():
                self._search_unfiltered([warm[i] for i in members], vectors[members], settings, out)
            for i, (slot, query, p) in enumerate(warm):
                if allowed[i] is not None:
                    out[slot] = self._search_filtered(query, p, vectors[i], allowed[i])
        return out

    # -- search ------------------------------------------------------------------------------------------
    def _rank(
        self,
        prepared: Sequence[_Prepared],
        vectors: np.ndarray,
        ids: np.ndarray,
        scores: np.ndarray,
        settings: ScoringSettings,
        k: int,
        allowed: np.ndarray | None = None,
    ) -> np.ndarray:
        """int64 [B, k] rows (-1 = none) by the served scoring function, from candidates ``[B, C]`` and the
        exact scores of the history items (those outside ``allowed`` can never be returned)."""
        history = self._history(prepared)
        history_scores = np.einsum("bld,bd->bl", self.embeddings[history.items], vectors)
        if allowed is not None:
            history_scores = np.where(np.isin(history.items, allowed), history_scores, -np.inf)
        history_scores = np.where(history.mask, history_scores, 0.0)
        return rank_candidates(
            ids,
            scores,
            history,
            history_scores,
            settings,
            k,
            catalog_features=self._catalog_features,
            item_vectors=self.embeddings,
        )[0]

    def _reachable(self, p: _Prepared, settings: ScoringSettings) -> int:
        """How many items a list can hold at most: the catalog less the history items it may not contain."""
        distinct = len(np.unique(p.rows))
        if settings.exclude_seen:
            return self.num_items - distinct
        if settings.max_repeat_items is not None:
            return self.num_items - max(0, distinct - settings.max_repeat_items)
        return self.num_items

    def _search_unfiltered(
        self,
        warm: list[tuple[int, Query, _Prepared]],
        vectors: np.ndarray,
        settings: ScoringSettings,
        out: list[Recommendation | QueryError],
    ) -> None:
        # One batched search of the k + L best (with a learned boost, its pool + L): what the scoring function
        # needs to be exact.
        pending = list(range(len(warm)))
        fetch = max(settings.candidates_needed(q.k) + len(p.rows) for _, q, p in warm)
        while pending:
            fetch = min(fetch, self.num_items)
            scores, ids = self.index.search(vectors[pending], fetch)
            k = max(warm[w][1].k for w in pending)
            top = self._rank([warm[w][2] for w in pending], vectors[pending], ids, scores, settings, k)
            retry = []
            for j, w in enumerate(pending):
                slot, query, p = warm[w]
                rows = [r for r in top[j, : query.k].tolist() if r >= 0]
                if len(rows) < min(query.k, self._reachable(p, settings)) and fetch < self.num_items:
                    retry.append(w)  # an ANN index returned fewer than asked: ask for more
                else:
                    out[slot] = self._result(rows, self._scores(rows, vectors[w]), p, None)
            pending, fetch = retry, fetch * 2

    def _search_filtered(
        self, query: Query, p: _Prepared, vector: np.ndarray, allowed: np.ndarray
    ) -> Recommendation:
        settings = self.settings_for(query)
        need = settings.candidates_needed(query.k) + len(p.rows)

        def ranked(ids: np.ndarray, scores: np.ndarray) -> list[int]:
            top = self._rank([p], vector[None, :], ids[None, :], scores[None, :], settings, query.k, allowed)
            return [r for r in top[0].tolist() if r >= 0]

        if len(allowed) <= self.settings.exact_filter_max or len(allowed) <= need:
            # Small candidate set: exact scores over it guarantee k results and cost O(|allowed| * D).
            scores = self.embeddings[allowed] @ vector  # [|allowed|]
            top = min(len(allowed), need)
            best = np.argpartition(-scores, top - 1)[:top] if top < len(allowed) else np.arange(len(allowed))
            rows = ranked(allowed[best], scores[best])
            return self._result(rows, self._scores(rows, vector), p, None)
        # Large candidate set: over-fetch from the index in proportion to how much the filter removes.
        fetch = int(need * self.settings.overfetch * self.num_items / len(allowed)) + 1
        while True:
            fetch = min(fetch, self.num_items)
            scores, ids = self.index.search(vector[None, :], fetch)
            ids = np.where(np.isin(ids[0], allowed), ids[0], -1)
            rows = ranked(ids, scores[0])
            if len(rows) >= query.k or fetch >= self.num_items:
                return self._result(rows, self._scores(rows, vector), p, None)
            fetch *= 2

    def _scores(self, rows: list[int], vector: np.ndarray) -> list[float]:
        """The returned items' inner products with the buyer vector (the model's score, before blending)."""
        return (self.embeddings[rows] @ vector).tolist() if rows else []

    def _popular_fallback(self, query: Query, p: _Prepared) -> Recommendation:
        allowed = self._allowed_rows(query)
        if allowed is None:
            ranked = self._popular[: query.k]
        else:
            ranked = allowed[np.argsort(-self._popularity_share[allowed], kind="stable")][: query.k]
        return self._result(ranked.tolist(), self._popularity_share[ranked].tolist(), p, "popular")

    def _result(
        self, rows: list[int], scores: list[float], p: _Prepared, fallback: str | None
    ) -> Recommendation:
        if p.keep is not None:  # hook: the second stage re-ranks the candidates and keeps p.keep
            rows, scores = self.stage.finish(rows, scores, p.keep)
        ids, titles, descriptions, brands, categories, photos = self._fields
        items = [
            {
                "product_id": ids[r],
                "score": s,
                "title": titles[r],
                "description": descriptions[r],
                "brand": brands[r],
                "category": categories[r],
                "photo_url": photos[r],
            }
            for r, s in zip(rows, scores, strict=True)
        ]
        return Recommendation(items, p.unknown, fallback, self.version)
