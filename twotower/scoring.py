"""The served scoring function: model scores + the buyer's history -> the ranked top-k list.

One function for offline evaluation (``twotower.evaluate``, every method in its table) and for ``/retrieve``,
so both rank identically. Plain numpy/torch, no HTTP.

Given a method's scores (a dense ``[B, N]`` matrix, or the index's top candidates plus the exact scores of
the history items), the list is built as follows:

1. Scores are divided by the query's best score ``|s_top1|`` (a monotone per-query rescaling: without a repeat
   score it changes no order; with one, it makes ``repeat_weight`` comparable across methods and queries).
2. ``exclude_seen``: items of the history are never returned.
3. Otherwise, with ``repeat_weight > 0``, each history item gets ``repeat_weight * r / max(r)`` added, where
   ``r = sum over its occurrences of event_weight * 0.5 ** (age_days / half_life_days)`` (count, event type
   and recency in one number; ``max`` over the query's history).
   With learned ``repeat_coefficients`` (fitted on val,
   :func:`twotower.evaluation.learned_repeat.fit_learned_score`)
   a history item's score is instead ``c_score * s + sum_i c_i * f_i + c_bias`` over :data:`REPEAT_FEATURES`:
   the buyer's own history of the item (log1p of decayed counts at several half-lives, count, event-weight sum,
   days since its last occurrence; ages measured from the history's newest event, so offline and online agree
   without knowing "now") and the catalog's training-period statistics of the item (:func:`item_features`).
   New items score ``s + sum_j u_j * g_j`` over the same item statistics, among the method's ``boost_pool``
   best new items only; new items beyond them follow all others, by their own score. So any
   ``max(k, boost_pool) + L`` candidates give the same list, and a shorter list is a prefix of a longer one
   (the service's k=10 list is the top 10 of evaluate's k=50 lists). Which of the buyer's items come back, and
   when new items beat them, is learned. With ``exclude_seen`` and learned coefficients, history items are excluded and
   new items still get that boost (shops without repeats: what sells now still counts).
   With ``history_similarity = w`` (either exclusion setting), the same ``boost_pool`` best new items also add
   ``w`` times :func:`history_similarity`, their soft maximum similarity to the history's items (needs the
   catalog's item vectors): an item close to one of a buyer's several interests can rise.
4. Top k by final score; ties go to the lower item index (deterministic). With seen items allowed and
   ``max_repeat_items = m``, at most m of the k slots go to history items (the best m by final score); the
   others go to the best new items. Slots left empty (exclusion leaves fewer than k items) hold index -1.

Example:
    >>> import numpy as np
    >>> history = History(items=np.array([[2, 2]]), mask=np.ones((1, 2), bool))
    >>> scores = np.array([[0.9, 0.8, 0.1, 0.0]], dtype=np.float32)
    >>> rank_dense(scores, history, ScoringSettings(exclude_seen=True), k=2)[0].tolist()
    [[0, 1]]
    >>> rank_dense(scores, history, ScoringSettings(exclude_seen=False, repeat_weight=1.0), k=2)[0].tolist()
    [[2, 0]]

(Over ~300 lines: the scoring function, its settings and their choice on val are one contract shared by
evaluate and /retrieve.)
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, fields, replace
from typing import Any, Protocol

import numpy as np
import torch

__all__ = [
    "REPEAT_COEFFICIENTS",
    "REPEAT_FEATURES",
    "History",
    "ScoringSettings",
    "best_new_items",
    "candidate_pool",
    "choose_settings",
    "rank_candidates",
    "rank_dense",
    "learned_new_item_boost",
    "pool_similarity",
    "learned_repeat_scores",
    "item_features",
    "repeat_features",
    "repeat_scores",
    "settings_grid",
    "top_candidates",
]

SECONDS_PER_DAY = 86_400.0
MANIFEST_KEY = "scoring"  # where a bundle manifest records the served settings
# ... and the settings for requests that set the other exclusion (chosen on val for it, like the served ones)
OTHER_EXCLUSION_KEY = "scoring_other_exclusion"
# the learned repeat score's inputs, per distinct history item: first the buyer's own history of the item (each
# enters as log1p; ages are measured from the history's newest event), then the item's training-period
# statistics from the catalog (:func:`item_features`: how much it sells, how often its buyers come back for it,
# how much it sells lately), the same for every buyer
REPEAT_HALF_LIVES = (7.0, 30.0, 90.0, 365.0)
BUYER_ITEM_FEATURES = (
    *(f"decayed_{h:g}d" for h in REPEAT_HALF_LIVES),
    "count",
    "event_weight_sum",
    "days_since_last",
)
ITEM_FEATURES = ("item_log_count", "item_repeat_logit", "item_log_recent_count")
REPEAT_FEATURES = (*BUYER_ITEM_FEATURES, *ITEM_FEATURES)
# pseudo-interactions at the catalog's mean repeat share (the share of an item sold a few times shrinks to it)
REPEAT_PRIOR_STRENGTH = 5.0
# the soft maximum's temperature in history_similarity (inner products of unit item vectors): measured best of
# 0.05 and 0.1 on MovieLens and Online Retail val (experiments/RESULTS.md, "History similarity")
HISTORY_SIMILARITY_TEMPERATURE = 0.05
# repeat_coefficients: one per feature, then the weight of the method's own score on history items, then a bias
# then the weights of the catalog's item features added to new items' scores (what sells now can beat a
# history item for a slot)
NEW_ITEM_COEFFICIENTS = tuple(f"new_{name}" for name in ITEM_FEATURES)
REPEAT_COEFFICIENTS = (*REPEAT_FEATURES, "score", "bias", *NEW_ITEM_COEFFICIENTS)
LEGACY_COEFFICIENTS = len(BUYER_ITEM_FEATURES) + 2  # learned before the catalog's item features existed


@dataclass(frozen=True)
class ScoringSettings:
    """How a list is built from model scores and the history (chosen on the validation split, see module doc).

    exclude_seen: never return an item of the request's history.
    repeat_weight: weight of the repeat score added to history items (0 = none; ignored with exclude_seen).
    half_life_days: recency half-life of the repeat score (None: no decay, counts only).
    event_weighted: weight each occurrence by its event weight (a purchase counts more than a view).
    max_repeat_items: at most this many history items per list when seen items are allowed (None: no cap).
        With a global repeat weight, long histories otherwise fill every slot with history items and the
        new-item recall of repeat-blended lists collapses (experiments/RESULTS.md).
    repeat_coefficients: a learned repeat score (one value per name in :data:`REPEAT_COEFFICIENTS`, fitted on
        val) that replaces ``repeat_weight``/``half_life_days``/``event_weighted`` for history items and adds
        the catalog's item features to new items' scores; None = the configured score above. With
        ``exclude_seen`` only the new items' part applies.
    boost_pool: how many of the method's best new items the learned boost may reorder (the rest follow them).
    history_similarity: weight of :func:`history_similarity` added to those ``boost_pool`` best new items'
        scores (0 = off): an item close to any one of the buyer's items rises, which one buyer vector cannot
        express for a buyer of several interests. Needs the catalog's item vectors.
    """

    exclude_seen: bool = True
    repeat_weight: float = 0.0
    half_life_days: float | None = 90.0
    event_weighted: bool = True
    max_repeat_items: int | None = None
    repeat_coefficients: tuple[float, ...] | None = None
    boost_pool: int = 50
    history_similarity: float = 0.0

    def __post_init__(self) -> None:
        if not math.isfinite(self.repeat_weight) or self.repeat_weight < 0:
            raise ValueError(f"scoring.repeat_weight must be a finite number >= 0, got {self.repeat_weight}")
        if self.half_life_days is not None and not self.half_life_days > 0:
            raise ValueError(f"scoring.half_life_days must be > 0 or null, got {self.half_life_days}")
        cap = self.max_repeat_items
        if cap is not None and (isinstance(cap, bool) or not isinstance(cap, int) or cap < 0):
            raise ValueError(f"scoring.max_repeat_items must be an integer >= 0 or null, got {cap!r}")
        pool = self.boost_pool
        if isinstance(pool, bool) or not isinstance(pool, int) or pool < 1:
            raise ValueError(f"scoring.boost_pool must be an integer >= 1, got {pool!r}")
        weight = self.history_similarity
        if isinstance(weight, bool) or not isinstance(weight, int | float) or not 0 <= weight < math.inf:
            raise ValueError(f"scoring.history_similarity must be a finite number >= 0, got {weight!r}")
        object.__setattr__(self, "history_similarity", float(weight))
        coefficients = self.repeat_coefficients
        if coefficients is not None:
            if isinstance(coefficients, str | bytes) or not isinstance(coefficients, Sequence):
                raise ValueError(
                    f"scoring.repeat_coefficients must be a list of numbers or null, got {coefficients!r}"
                )
            if len(coefficients) == LEGACY_COEFFICIENTS:
                # learned before the item features existed: they weigh 0, so the score is unchanged
                width = len(BUYER_ITEM_FEATURES)
                zeros = [0.0] * len(ITEM_FEATURES)
                coefficients = (*coefficients[:width], *zeros, *coefficients[width:], *zeros)
            if len(coefficients) != len(REPEAT_COEFFICIENTS) or not all(
                isinstance(c, int | float) and not isinstance(c, bool) and math.isfinite(c)
                for c in coefficients
            ):
                raise ValueError(
                    f"scoring.repeat_coefficients must be {len(REPEAT_COEFFICIENTS)} finite numbers "
                    f"({', '.join(REPEAT_COEFFICIENTS)}); got {list(coefficients)!r}"
                )
            object.__setattr__(self, "repeat_coefficients", tuple(float(c) for c in coefficients))

    @property
    def learned(self) -> bool:
        """Whether history items get the learned repeat score."""
        return not self.exclude_seen and self.repeat_coefficients is not None

    @property
    def boosted(self) -> bool:
        """Whether new items get the learned boost from the catalog's item features (learned coefficients,
        with or without exclusion)."""
        return self.repeat_coefficients is not None

    @property
    def reorders_new_items(self) -> bool:
        """Whether the method's ``boost_pool`` best new items are reordered (learned boost, history similarity)."""
        return self.boosted or self.history_similarity > 0

    def candidates_needed(self, k: int) -> int:
        """How many of the method's best items (besides the history's) a list of ``k`` needs to be exact."""
        return max(k, self.boost_pool) if self.reorders_new_items else k

    @property
    def uses_repeat(self) -> bool:
        """Whether history items get a configured repeat score (:func:`repeat_scores`)."""
        return not self.exclude_seen and not self.learned and self.repeat_weight > 0

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready; :meth:`from_dict` reads it back (e.g. from a bundle manifest's ``scoring`` entry)."""
        data = asdict(self)
        if self.repeat_coefficients is not None:
            data["repeat_coefficients"] = list(self.repeat_coefficients)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ScoringSettings:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown scoring settings {unknown}; known: {sorted(known)}")
        return cls(**dict(data))

    def describe(self) -> str:
        similar = f", history similarity {self.history_similarity:g}" if self.history_similarity else ""
        if self.exclude_seen:
            return "exclude seen" + (", learned new-item boost" if self.boosted else "") + similar
        cap = "" if self.max_repeat_items is None else f", at most {self.max_repeat_items} seen per list"
        if self.learned:
            return f"seen allowed, learned repeat score{cap}{similar}"
        if not self.repeat_weight:
            return f"seen allowed, no repeat score{cap}{similar}"
        return (
            f"seen allowed, repeat {self.repeat_weight:g} (half-life {self.half_life_days} d){cap}{similar}"
        )


@dataclass
class History:
    """The request's history, right- or left-padded rows ``[B, L]``.

    items: int catalog rows (anything where ``mask`` is False); mask: bool.
    weights: float event weights (``EventSchema.weight_array[codes]``); None = 1 for every event.
    times: float epoch seconds (NaN = unknown: no decay); None = all unknown.
    now: float ``[B]`` epoch seconds of the request (offline: the target's time); None = each row's latest
    known history time.
    """

    items: np.ndarray
    mask: np.ndarray
    weights: np.ndarray | None = None
    times: np.ndarray | None = None
    now: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.items = np.asarray(self.items, dtype=np.int64)
        self.mask = np.asarray(self.mask, dtype=bool)
        if self.items.ndim != 2 or self.mask.shape != self.items.shape:
            raise ValueError(
                f"history items and mask must both be [B, L]; got {self.items.shape} and {self.mask.shape}"
            )
        for name in ("weights", "times"):
            value = getattr(self, name)
            if value is not None and np.shape(value) != self.items.shape:
                raise ValueError(f"history {name} must be [B, L] = {self.items.shape}; got {np.shape(value)}")
        if self.now is not None and np.shape(self.now) != (len(self.items),):
            raise ValueError(f"history now must be [B] = [{len(self.items)}]; got {np.shape(self.now)}")

    def __len__(self) -> int:
        return len(self.items)

    def take(self, rows: np.ndarray | slice) -> History:
        """The sub-batch of the given rows."""
        pick = lambda a: None if a is None else a[rows]  # noqa: E731
        return History(
            pick(self.items), pick(self.mask), pick(self.weights), pick(self.times), pick(self.now)
        )


def _row_keys(items: np.ndarray, span: int) -> np.ndarray:
    """int64 keys unique per (row, item): set operations on all rows at once, O(n log n) not O(L^2)."""
    return np.arange(len(items), dtype=np.int64)[:, None] * span + items


def _first_occurrence(history: History) -> np.ndarray:
    """bool [B, L]: the first (leftmost) position of each distinct item of each row."""
    items, mask = history.items, history.mask
    first = np.zeros(items.size, dtype=bool)
    if mask.any():
        flat = np.flatnonzero(mask.ravel())
        keys = _row_keys(items, int(items[mask].max()) + 1).ravel()[flat]
        _, position = np.unique(keys, return_index=True)  # the first in row-major order = leftmost
        first[flat[position]] = True
    return first.reshape(items.shape)


def _item_groups(history: History) -> tuple[np.ndarray, int]:
    """int64 [n masked positions]: each masked position's (row, item) group, and the number of groups."""
    mask = history.mask
    if not mask.any():
        return np.zeros(0, dtype=np.int64), 0
    keys = _row_keys(history.items, int(history.items[mask].max()) + 1)[mask]
    _, inverse = np.unique(keys, return_inverse=True)
    return inverse, int(inverse.max()) + 1


def _ages_days(history: History, reference: np.ndarray | None) -> np.ndarray:
    """float64 [B, L]: days from each event to ``reference`` [B] (None: each row's newest known time); 0 where
    the time is unknown or masked."""
    if history.times is None:
        return np.zeros(history.items.shape)
    times = np.asarray(history.times, dtype=np.float64)
    known = np.isfinite(times) & history.mask
    if reference is None:
        reference = np.where(known, times, -np.inf).max(axis=1)
    with np.errstate(invalid="ignore"):  # rows without any known time: ages masked to 0 below
        age = np.maximum(np.asarray(reference, dtype=np.float64)[:, None] - times, 0.0)
    return np.where(known, age, 0.0) / SECONDS_PER_DAY


def repeat_scores(history: History, half_life_days: float | None, event_weighted: bool = True) -> np.ndarray:
    """float32 [B, L]: at each position, the decayed, event-weighted count of its item in the history."""
    contribution = np.ones(history.items.shape, dtype=np.float64)
    if event_weighted and history.weights is not None:
        contribution *= history.weights
    if half_life_days is not None:
        contribution *= 0.5 ** (_ages_days(history, history.now) / half_life_days)
    out = np.zeros(history.items.shape, dtype=np.float32)
    inverse, groups = _item_groups(history)
    if groups:
        out[history.mask] = np.bincount(inverse, weights=contribution[history.mask], minlength=groups)[
            inverse
        ]
    return out


class CatalogStatistics(Protocol):
    """What :func:`item_features` reads: a ``twotower.data.catalog.Catalog``'s training-period counts per item."""

    popularity: np.ndarray  # interactions
    repeats: np.ndarray  # interactions whose buyer had the item before
    recent_popularity: np.ndarray  # interactions of the period's last 30 days


def item_features(catalog: CatalogStatistics) -> np.ndarray:
    """float32 [N, 3]: :data:`ITEM_FEATURES` of every catalog item, from its training-period counts.

    The repeat share is smoothed towards the catalog's mean share with :data:`REPEAT_PRIOR_STRENGTH`
    pseudo-interactions, so an item sold twice, once again, does not look like a staple; all zeros (a bundle
    without the statistics) give constant columns, which a learned score cannot use.
    """
    popularity, repeats, recent = (  # a hand-edited catalog's NaN, inf or negative counts count as 0
        np.maximum(np.nan_to_num(np.asarray(a, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0), 0.0)
        for a in (catalog.popularity, catalog.repeats, catalog.recent_popularity)
    )
    repeats = np.minimum(repeats, popularity)
    total = popularity.sum()
    prior = np.clip(repeats.sum() / total if total > 0 else 0.0, 1e-3, 1 - 1e-3)
    share = (repeats + REPEAT_PRIOR_STRENGTH * prior) / (popularity + REPEAT_PRIOR_STRENGTH)
    share = np.clip(share, 1e-4, 1 - 1e-4)
    columns = (np.log1p(popularity), np.log(share / (1 - share)), np.log1p(recent))
    return np.stack(columns, axis=1).astype(np.float32)


def repeat_features(history: History, catalog_features: np.ndarray | None = None) -> np.ndarray:
    """float32 [B, L, F]: at each position, :data:`REPEAT_FEATURES` of its item (0 where masked).

    The buyer's own history of the item enters as log1p of each count. Ages are measured from the row's newest
    known event (not the request time): the service and evaluate see the same history and so the same
    features. Unknown times count as age 0. ``catalog_features``: :func:`item_features` of the catalog
    ``[N, 3]``, indexed by the history's items; None = zeros.
    """
    mask = history.mask
    out = np.zeros((*history.items.shape, len(REPEAT_FEATURES)), dtype=np.float32)
    if catalog_features is not None:
        rows = np.where(mask, history.items, 0)
        out[..., len(BUYER_ITEM_FEATURES) :] = np.where(mask[..., None], catalog_features[rows], 0.0)
    inverse, groups = _item_groups(history)
    if not groups:
        return out
    weights = (
        np.ones(history.items.shape) if history.weights is None else np.asarray(history.weights, np.float64)
    )
    ages = _ages_days(history, None)[mask]
    weights = weights[mask]
    columns = [
        np.bincount(inverse, weights=weights * 0.5 ** (ages / h), minlength=groups) for h in REPEAT_HALF_LIVES
    ]
    columns.append(np.bincount(inverse, minlength=groups).astype(np.float64))
    columns.append(np.bincount(inverse, weights=weights, minlength=groups))
    last = np.full(groups, np.inf)
    np.minimum.at(last, inverse, ages)
    columns.append(last)
    per_group = np.log1p(np.maximum(np.stack(columns, axis=1), 0.0))  # [groups, buyer-item features]
    out[..., : len(BUYER_ITEM_FEATURES)][mask] = per_group[inverse]
    return out


def learned_repeat_scores(
    features: np.ndarray, history_scores: np.ndarray, coefficients: Sequence[float]
) -> np.ndarray:
    """float64 [B, L]: the learned score of each history position from its :func:`repeat_features` [B, L, F] and
    the method's (rescaled) score of the item [B, L]."""
    c = np.asarray(coefficients, dtype=np.float64)
    width = len(REPEAT_FEATURES)
    return features.astype(np.float64) @ c[:width] + c[width] * history_scores + c[width + 1]


def learned_new_item_boost(
    ids: np.ndarray, catalog_features: np.ndarray | None, coefficients: Sequence[float]
) -> np.ndarray:
    """float64 [B, C]: what the learned score adds to new items ``ids`` (-1 = none: 0) from the catalog's
    :func:`item_features` ``[N, 3]`` (None: 0 everywhere)."""
    if catalog_features is None:
        return np.zeros(ids.shape)
    weights = np.asarray(coefficients, dtype=np.float64)[-len(NEW_ITEM_COEFFICIENTS) :]
    boost = catalog_features[np.maximum(ids, 0)].astype(np.float64) @ weights
    return np.where(ids >= 0, boost, 0.0)


def history_similarity(item_vectors: np.ndarray, history: History, ids: np.ndarray) -> np.ndarray:
    """float64 [B, C]: how close each item ``ids`` (-1 = none: 0) is to the buyer's items, a soft maximum over
    the history's positions of the item vectors' inner products, ``t * log sum_h exp(<v_h, v_c> / t)`` with
    ``t`` = :data:`HISTORY_SIMILARITY_TEMPERATURE` (a repeated item counts once per occurrence). Rows without
    a history give 0. ``item_vectors``: the catalog's item vectors ``[N, D]`` (the bundle's embeddings).
    """
    ids = np.asarray(ids, dtype=np.int64)
    out = np.zeros(ids.shape, dtype=np.float64)
    mask = np.asarray(history.mask, dtype=bool)
    rows = np.flatnonzero(mask.any(axis=1) & (ids >= 0).any(axis=1))
    t = HISTORY_SIMILARITY_TEMPERATURE
    for start in range(0, len(rows), 256):  # bounded memory: [256, L, C] inner products at a time
        chunk = rows[start : start + 256]
        past = item_vectors[np.where(mask[chunk], history.items[chunk], 0)].astype(np.float32)  # [b, L, D]
        items = item_vectors[np.maximum(ids[chunk], 0)].astype(np.float32)  # [b, C, D]
        sims = np.where(mask[chunk][:, :, None], past @ items.transpose(0, 2, 1), -np.inf) / t  # [b, L, C]
        top = sims.max(axis=1)  # [b, C], finite: every chosen row has a history item
        soft = t * (top + np.log(np.exp(sims - top[:, None, :]).sum(axis=1)))
        out[chunk] = np.where(ids[chunk] >= 0, soft, 0.0)
    return out


def pool_similarity(
    item_vectors: np.ndarray, history: History, new_ids: np.ndarray, in_pool: np.ndarray, pool_size: int
) -> np.ndarray:
    """float64 [B, C]: :func:`history_similarity` of the new items ``new_ids`` [B, C] that ``in_pool`` marks (at
    most ``pool_size`` a row, as :func:`best_new_items` gives them), 0 for the others."""
    # only the pool's items, moved to the front columns: the inner products cost pool_size, not C, per row
    front = np.argsort(~in_pool, axis=1, kind="stable")[:, :pool_size]
    pooled = np.where(np.take_along_axis(in_pool, front, 1), np.take_along_axis(new_ids, front, 1), -1)
    out = np.zeros(new_ids.shape)
    np.put_along_axis(out, front, history_similarity(item_vectors, history, pooled), axis=1)
    return out


def top_candidates(scores: np.ndarray | torch.Tensor, count: int) -> np.ndarray:
    """int64 [B, count]: the ``count`` best items per row by (score desc, index asc), in index order."""
    if not torch.is_tensor(scores):
        array = np.asarray(scores, dtype=np.float32)
        scores = torch.from_numpy(array if array.flags.writeable else array.copy())
    s = scores
    s = torch.nan_to_num(s.float(), nan=float("-inf"))
    count = min(count, s.shape[1])
    threshold = torch.topk(s, count, dim=1).values[:, -1:]  # [B, 1] the count-th best score
    above, tied = s > threshold, s == threshold
    need = count - above.sum(dim=1, keepdim=True)  # tied items to take: the lowest indices
    take = above | (tied & (tied.cumsum(dim=1) <= need))
    return take.nonzero()[:, 1].reshape(len(s), count).numpy().astype(np.int64)


def candidate_pool(
    candidate_ids: np.ndarray, candidate_scores: np.ndarray, history: History, history_scores: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """What a list is chosen from: ``(ids int64, scores float64, valid bool)``, each ``[B, L + C]``.

    The first ``L`` columns are the history positions (each distinct item once, at its first position, with its
    exact score; -1 elsewhere), then the candidates not in the history. Scores are divided by the row's best
    ``|s_top1|`` (step 1 of the module doc). Inputs as in :func:`rank_candidates`.
    """
    ids = np.asarray(candidate_ids, dtype=np.int64)
    base = np.asarray(candidate_scores, dtype=np.float64)
    items, mask = history.items, history.mask
    if ids.shape != base.shape or len(ids) != len(items) or np.shape(history_scores) != items.shape:
        raise ValueError(
            f"candidate ids/scores must be [B, C] and history_scores [B, L] for the history's B={len(items)}; "
            f"got {ids.shape}, {base.shape}, {np.shape(history_scores)}"
        )
    first = _first_occurrence(history)
    span = int(max(items[mask].max(initial=0), ids.max(initial=0))) + 1
    in_history = (ids >= 0) & np.isin(_row_keys(ids, span), _row_keys(items, span)[mask])
    pool_ids = np.concatenate([np.where(first, items, -1), np.where(in_history, -1, ids)], axis=1)
    pool = np.concatenate([np.asarray(history_scores, dtype=np.float64), base], axis=1)
    valid = (pool_ids >= 0) & np.isfinite(pool)
    top1 = np.where(valid, pool, -np.inf).max(axis=1, initial=-np.inf)  # [B]
    scale = np.where(np.isfinite(top1) & (top1 != 0), np.abs(top1), 1.0)
    return pool_ids, pool / scale[:, None], valid


def best_new_items(
    pool_ids: np.ndarray, pool: np.ndarray, valid: np.ndarray, width: int, k: int
) -> np.ndarray:
    """bool [B, C]: the ``k`` best new items of a :func:`candidate_pool` (its columns after the ``width`` history
    ones) by the method's score, ties to the lower index. The learned new-item boost reorders the
    ``boost_pool`` best only, so a list is the same from any ``max(k, boost_pool) + L`` candidates (an index's
    answer, a dense ranking)."""
    scores = np.where(valid[:, width:], pool[:, width:], -np.inf)
    order = np.lexsort((pool_ids[:, width:], -scores), axis=1)[:, :k]
    best = np.zeros(scores.shape, dtype=bool)
    np.put_along_axis(best, order, True, axis=1)
    return best


def rank_candidates(
    candidate_ids: np.ndarray,
    candidate_scores: np.ndarray,
    history: History,
    history_scores: np.ndarray,
    settings: ScoringSettings,
    k: int,
    repeat: np.ndarray | None = None,
    catalog_features: np.ndarray | None = None,
    item_vectors: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Top-k ``(ids int64 [B, k], scores float32 [B, k])`` from candidates and the history (see module doc).

    candidate_ids / candidate_scores ``[B, C]``: e.g. an index's answer (-1 = empty slot). Exact results need
    the ``settings.candidates_needed(k) + L`` best items (``L`` = history width). history_scores ``[B, L]``: the model's score of each
    history item (used for history items whether or not they are among the candidates). ``repeat``: a
    precomputed :func:`repeat_scores` for these settings, or :func:`repeat_features` for learned settings (saves
    work when many settings are tried). ``catalog_features``: the catalog's :func:`item_features`, for learned
    settings. ``item_vectors``: the catalog's item vectors ``[N, D]``, for ``settings.history_similarity``.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if settings.history_similarity and item_vectors is None:
        raise ValueError("scoring.history_similarity needs the catalog's item vectors (a model's bundle)")
    pool_ids, pool, valid = candidate_pool(candidate_ids, candidate_scores, history, history_scores)
    width = history.items.shape[1]
    if settings.exclude_seen:
        valid[:, :width] = False
    elif settings.learned:
        features = repeat_features(history, catalog_features) if repeat is None else repeat
        pool[:, :width] = learned_repeat_scores(features, pool[:, :width], settings.repeat_coefficients)
    elif settings.repeat_weight > 0:
        if repeat is None:
            repeat = repeat_scores(history, settings.half_life_days, settings.event_weighted)
        peak = repeat.max(axis=1, initial=0.0)
        share = np.divide(repeat, peak[:, None], out=np.zeros(repeat.shape), where=peak[:, None] > 0)
        pool[:, :width] += settings.repeat_weight * share
    tier = np.zeros(pool.shape, dtype=np.int8)  # 0 first; 1: new items beyond the boost pool; 2: invalid
    if settings.reorders_new_items:
        new_ids = pool_ids[:, width:]
        boost = np.zeros(new_ids.shape)
        if settings.boosted:
            boost += learned_new_item_boost(new_ids, catalog_features, settings.repeat_coefficients)
        in_pool = best_new_items(pool_ids, pool, valid, width, settings.boost_pool)
        if settings.history_similarity:
            boost += settings.history_similarity * pool_similarity(
                item_vectors, history, new_ids, in_pool, settings.boost_pool
            )
        if boost.any():
            pool[:, width:] += np.where(in_pool, boost, 0.0)
            tier[:, width:] = ~in_pool
    tier[~valid] = 2
    pool = np.where(valid, pool, -np.inf)
    order = np.lexsort((pool_ids, -pool, tier), axis=1)  # tier, then score desc, then index asc
    if not settings.exclude_seen and settings.max_repeat_items is not None:
        # history items are the first `width` pool columns: keep the best max_repeat_items of them; the others
        # become invalid and move behind every candidate (their slots go to the best new items)
        is_history = order < width
        dropped = is_history & (np.cumsum(is_history, axis=1) > settings.max_repeat_items)
        rows, _ = np.nonzero(dropped)
        pool[rows, order[dropped]] = -np.inf
        order = np.take_along_axis(order, np.argsort(dropped, axis=1, kind="stable"), axis=1)
    order = order[:, :k]
    top_ids = np.take_along_axis(pool_ids, order, axis=1)
    top_scores = np.take_along_axis(pool, order, axis=1)
    top_ids[~np.isfinite(top_scores)] = -1
    if top_ids.shape[1] < k:  # fewer candidates than k: pad
        pad = k - top_ids.shape[1]
        top_ids = np.pad(top_ids, ((0, 0), (0, pad)), constant_values=-1)
        top_scores = np.pad(top_scores, ((0, 0), (0, pad)), constant_values=-np.inf)
    return top_ids, top_scores.astype(np.float32)


def history_scores_of(scores: np.ndarray | torch.Tensor, history: History) -> np.ndarray:
    """float32 [B, L]: the dense scores ``[B, N]`` at the history's items (0 where masked)."""
    dense = scores.numpy() if torch.is_tensor(scores) else np.asarray(scores)
    rows = np.where(history.mask, history.items, 0)
    return np.where(history.mask, np.take_along_axis(dense, rows, axis=1), 0.0).astype(np.float32)


def rank_dense(
    scores: np.ndarray | torch.Tensor, history: History, settings: ScoringSettings, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`rank_candidates` over a dense score matrix ``[B, N]`` (every item is a candidate)."""
    dense = scores.numpy() if torch.is_tensor(scores) else np.asarray(scores)
    ids = top_candidates(dense, settings.candidates_needed(k) + history.items.shape[1])
    return rank_candidates(
        ids, np.take_along_axis(dense, ids, axis=1), history, history_scores_of(dense, history), settings, k
    )


def settings_grid(base: ScoringSettings, grid: Mapping[str, Sequence[Any]] | None) -> list[ScoringSettings]:
    """Every combination of ``grid`` (field -> values) applied to ``base``, without equivalent duplicates
    (with exclusion, only ``repeat_coefficients`` matters; without a repeat weight, only ``max_repeat_items``)."""
    grid = dict(grid or {})
    names = list(grid)
    out: list[ScoringSettings] = []
    seen: set[tuple] = set()
    for values in itertools.product(*(list(grid[n]) for n in names)):
        settings = replace(base, **dict(zip(names, values, strict=True)))
        key = (
            (True, settings.repeat_coefficients, settings.history_similarity)
            if settings.exclude_seen
            else (False, 0.0, settings.max_repeat_items, settings.history_similarity)
            if not settings.repeat_weight and not settings.learned
            else tuple(getattr(settings, f.name) for f in fields(settings))
        )
        if key not in seen:
            seen.add(key)
            out.append(settings)
    return out


def choose_settings(
    candidates: Sequence[ScoringSettings], score: Callable[[ScoringSettings], float]
) -> tuple[ScoringSettings, list[dict[str, Any]]]:
    """The settings with the highest ``score`` (e.g. validation recall@10; first wins ties) and the trace."""
    if not candidates:
        raise ValueError("choose_settings needs at least one candidate")
    trace = [{**s.to_dict(), "score": float(score(s))} for s in candidates]
    best = max(range(len(trace)), key=lambda i: (trace[i]["score"], -i))
    return candidates[best], trace
