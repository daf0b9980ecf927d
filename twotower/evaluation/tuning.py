"""Rank a split with a method under given scoring settings, and choose a method's settings on the val split.

A method is a ranker (with a small grid of its own parameters) plus the scoring settings of the served
scoring function (:mod:`twotower.scoring`). Each ranker scores a split once: its candidates (the exact top
``k + L`` items and the history items' scores) are kept, and every scoring setting of the grid is ranked from
them - exactly what ranking from the dense scores gives (see :func:`twotower.scoring.rank_dense`).

A repeat grid may list ``repeat_coefficients: [null, fit]``: ``fit`` learns the repeat score on val (with
seen items excluded, only its new-item boost)
(:mod:`twotower.evaluation.learned_repeat`). It is fitted on the first half of the val queries and kept only if
it beats the grid's best on the second half (queries are in buyer order, so the halves share almost no buyer);
then it is refitted on all of val. When the grid also lists ``history_similarity`` weights (the model), that
weight is fitted together with the repeat score, and the listed weights are then tried on top of the best.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from twotower.evaluation.learned_repeat import LearnedScore, fit_learned_score
from twotower.evaluation.queries import SplitQueries
from twotower.scoring import (
    ScoringSettings,
    history_scores_of,
    rank_candidates,
    repeat_features,
    repeat_scores,
    settings_grid,
    top_candidates,
)

log = logging.getLogger(__name__)

__all__ = [
    "Candidates",
    "Choice",
    "MethodSpec",
    "Outcome",
    "candidates_of",
    "choose_served_settings",
    "rank_split",
    "recall_at",
    "tune_and_rank",
    "tune_method",
]

FIT = "fit"  # in a repeat grid's repeat_coefficients: learn them on val
SIMILARITY_KEY = "history_similarity"  # in a repeat grid: weights tried on top of the best setting


@dataclass
class Candidates:
    """One ranker's answer on a split: ids/scores ``[Q, C]`` (C = k + L) and history-item scores ``[Q, L]``."""

    ids: np.ndarray
    scores: np.ndarray
    history_scores: np.ndarray


def candidates_of(
    ranker: Any, queries: SplitQueries, k: int, batch_size: int, use_index: bool = False
) -> Candidates:
    """Score every query once; ``use_index``: ask the ranker's vector index (``ModelRanker.candidates``)."""
    count = k + queries.history.items.shape[1]
    parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    for _, batch, history in queries.batches(batch_size):
        if use_index:
            ids, scores, hist = ranker.candidates(batch, count, np.where(history.mask, history.items, 0))
            hist = np.where(history.mask, hist, 0.0)
        else:
            dense = np.asarray(ranker.scores(batch), dtype=np.float32)
            ids = top_candidates(dense, count)
            scores, hist = np.take_along_axis(dense, ids, axis=1), history_scores_of(dense, history)
        parts.append((ids.astype(np.int32), scores.astype(np.float32), hist.astype(np.float32)))
    width = max(p[0].shape[1] for p in parts)
    pad = [(np.pad(i, ((0, 0), (0, width - i.shape[1])), constant_values=-1), s, h) for i, s, h in parts]
    pad = [(i, np.pad(s, ((0, 0), (0, width - s.shape[1])), constant_values=-np.inf), h) for i, s, h in pad]
    return Candidates(*(np.concatenate(column) for column in zip(*pad, strict=True)))


class RepeatCache:
    """Repeat scores of a split's histories per (half-life, event weighting), computed once."""

    def __init__(self, queries: SplitQueries) -> None:
        self.queries = queries
        self._cache: dict[tuple, np.ndarray] = {}

    def get(self, settings: ScoringSettings) -> np.ndarray | None:
        """:func:`repeat_scores` for configured settings, :func:`repeat_features` for learned ones."""
        if settings.learned:
            return self.features()
        if not settings.uses_repeat:
            return None
        key = (settings.half_life_days, settings.event_weighted)
        if key not in self._cache:
            self._cache[key] = repeat_scores(self.queries.history, *key)
        return self._cache[key]

    def features(self) -> np.ndarray:
        if "features" not in self._cache:
            self._cache["features"] = repeat_features(self.queries.history, self.queries.catalog_features)
        return self._cache["features"]


def rank_split(
    candidates: Candidates,
    queries: SplitQueries,
    settings: ScoringSettings,
    k: int,
    batch_size: int,
    repeats: RepeatCache | None = None,
    item_vectors: np.ndarray | None = None,
) -> np.ndarray:
    """int64 ``[Q, k]``: every query's list under ``settings`` (the served scoring function, batch by batch);
    ``item_vectors``: the method's item vectors, for settings with a history similarity."""
    repeat = (repeats or RepeatCache(queries)).get(settings)
    out = np.empty((len(queries), k), dtype=np.int64)
    for start in range(0, len(queries), batch_size):
        rows = slice(start, min(start + batch_size, len(queries)))
        out[rows] = rank_candidates(
            candidates.ids[rows],
            candidates.scores[rows],
            queries.history.take(rows),
            candidates.history_scores[rows],
            settings,
            k,
            None if repeat is None else repeat[rows],
            catalog_features=queries.catalog_features,
            item_vectors=item_vectors,
        )[0]
    return out


def recall_at(rankings: np.ndarray, targets: np.ndarray, k: int) -> float:
    return float((rankings[:, :k] == targets[:, None]).any(axis=1).mean()) if len(targets) else 0.0


@dataclass
class MethodSpec:
    """A table row: ``make(params)`` builds an unfitted ranker; ``grid`` lists ranker parameter sets to try;
    ``repeat_grid`` the scoring fields to try when seen items are allowed (None: no repeat score);
    ``fixed``: settings not to tune (the bundle's recorded ones); ``fixed_other``: the same for the other
    exclusion setting (the bundle's settings for requests that set it; None: tuned)."""

    name: str
    make: Callable[[dict[str, Any]], Any]
    grid: list[dict[str, Any]] = field(default_factory=lambda: [{}])
    repeat_grid: Mapping[str, Sequence[Any]] | None = None
    fixed: ScoringSettings | None = None
    fixed_other: ScoringSettings | None = None


@dataclass
class Choice:
    """The chosen ranker parameters and scoring settings for one exclusion setting, with the val score."""

    params: dict[str, Any]
    settings: ScoringSettings
    val_score: float

    def to_dict(self) -> dict[str, Any]:
        return {"ranker": self.params, "scoring": self.settings.to_dict(), "val_score": self.val_score}


def _settings_for(spec: MethodSpec, exclude: bool) -> tuple[list[ScoringSettings], bool, list[float]]:
    """The grid's settings for one exclusion setting, whether to learn a repeat score too, and the history-
    similarity weights to try on top of the best (the grid's ``history_similarity``; none for recorded settings)."""
    for recorded in (spec.fixed, spec.fixed_other):
        if recorded is not None and recorded.exclude_seen == exclude:
            return [recorded], False, []
    base = replace(
        spec.fixed or ScoringSettings(),
        exclude_seen=exclude,
        repeat_weight=0.0,
        repeat_coefficients=None,
        history_similarity=0.0,  # tried on top of the grid's best (tune_method)
    )
    grid = dict(spec.repeat_grid or {})
    weights = [float(w) for w in grid.pop(SIMILARITY_KEY, [])]
    coefficients = list(grid.pop("repeat_coefficients", [None]))
    if exclude:
        grid = {}  # the repeat fields change nothing when seen items are excluded; the learned boost does
    if any(c not in (None, FIT) for c in coefficients):
        raise ValueError(
            f"{spec.name}: a repeat grid's repeat_coefficients may list null and {FIT!r} (learn on val); "
            f"got {coefficients!r}"
        )
    return settings_grid(base, grid), FIT in coefficients, weights


def _learned_choice(
    candidates: Candidates,
    val: SplitQueries,
    grid_best: ScoringSettings,
    grid_ranked: np.ndarray,
    k: int,
    batch_size: int,
    repeats: RepeatCache,
    item_vectors: np.ndarray | None = None,
) -> tuple[ScoringSettings, np.ndarray, dict[str, Any]] | None:
    """Learned repeat settings (refitted on all of val when they beat ``grid_best``, whose val lists are
    ``grid_ranked``, on the held-out half; see the module doc), their val lists and their trace entry (``kept``:
    whether they did); None when nothing could be learned. ``item_vectors``: fit the history similarity's
    weight with them."""
    half = len(val) // 2
    features = repeats.features()

    def fit(rows: slice) -> LearnedScore | None:
        return fit_learned_score(
            candidates.ids[rows],
            candidates.scores[rows],
            val.history.take(rows),
            candidates.history_scores[rows],
            val.targets[rows],
            features=features[rows],
            catalog_features=val.catalog_features,
            boost_pool=grid_best.boost_pool,
            exclude_seen=grid_best.exclude_seen,
            item_vectors=item_vectors,
        )

    def settings_of(learned: LearnedScore) -> ScoringSettings:
        return replace(
            grid_best,
            repeat_weight=0.0,
            max_repeat_items=None,
            repeat_coefficients=learned.coefficients,
            history_similarity=learned.history_similarity,
        )

    learned = fit(slice(0, half)) if half else None
    if learned is None:
        return None
    held_out = slice(half, None)
    trial = settings_of(learned)
    trial_ranked = rank_split(candidates, val, trial, k, batch_size, repeats, item_vectors)
    held_out_recall = recall_at(trial_ranked[held_out], val.targets[held_out], k)
    grid = recall_at(grid_ranked[held_out], val.targets[held_out], k)
    entry = {
        f"held_out_recall@{k}": held_out_recall,
        f"grid_best_held_out_recall@{k}": grid,
        "kept": held_out_recall > grid,
    }
    if not entry["kept"]:
        return trial, trial_ranked, entry
    refitted = settings_of(fit(slice(None)) or learned)
    return refitted, rank_split(candidates, val, refitted, k, batch_size, repeats, item_vectors), entry


def tune_method(
    spec: MethodSpec,
    fit: Callable[[Any], Any],
    val: SplitQueries,
    exclusions: Sequence[bool],
    k: int,
    batch_size: int,
    repeats: RepeatCache,
) -> tuple[dict[bool, Choice], list[dict[str, Any]], dict[str, Any]]:
    """Best (ranker params, settings) per exclusion setting by val recall@k (first wins ties), the trace of
    every grid point, and the fitted rankers by params key (reused on the test split)."""
    best: dict[bool, Choice] = {}
    trace: list[dict[str, Any]] = []
    fitted: dict[str, Any] = {}
    # enough candidates for a learned boost's pool too (every setting tried shares the base's boost_pool)
    count = max(k, (spec.fixed or ScoringSettings()).boost_pool)

    def scored(
        settings: ScoringSettings, candidates: Candidates, vectors: np.ndarray | None, params: dict
    ) -> tuple[float, ScoringSettings, np.ndarray]:
        """(val recall, settings, val lists) of one setting, traced."""
        ranked = rank_split(candidates, val, settings, k, batch_size, repeats, vectors)
        score = recall_at(ranked, val.targets, k)
        trace.append({"ranker": params, "scoring": settings.to_dict(), f"val_recall@{k}": score})
        return score, settings, ranked

    for params in spec.grid:
        ranker = fitted.setdefault(repr(sorted(params.items())), fit(spec.make(params)))
        candidates = candidates_of(ranker, val, count, batch_size)
        vectors = getattr(ranker, "item_vectors", None)  # for recorded settings with a history similarity too
        for exclude in exclusions:
            grid, learn, weights = _settings_for(spec, exclude)
            if weights and vectors is None:
                raise ValueError(
                    f"{spec.name}: {SIMILARITY_KEY} needs a ranker with item vectors (the model)"
                )
            # the best of this ranker's grid: (val recall, settings, val lists)
            local: tuple[float, ScoringSettings, np.ndarray] | None = None
            for settings in grid:
                tried = scored(settings, candidates, vectors, params)
                if local is None or tried[0] > local[0]:
                    local = tried
            if learn and local is not None:
                learned = _learned_choice(
                    candidates,
                    val,
                    local[1],
                    local[2],
                    k,
                    batch_size,
                    repeats,
                    vectors if any(w > 0 for w in weights) else None,
                )
                if learned is not None:
                    settings, ranked, entry = learned
                    score = recall_at(ranked, val.targets, k)
                    trace.append(
                        {"ranker": params, "scoring": settings.to_dict(), f"val_recall@{k}": score, **entry}
                    )
                    if entry["kept"] and score > local[0]:
                        local = (score, settings, ranked)
            # the history similarity's listed weights, on top of the best repeat setting (a product with the
            # whole grid would multiply the settings to try; the learned score fits its own weight)
            for weight in weights:
                if local is not None and weight != local[1].history_similarity:
                    tried = scored(replace(local[1], history_similarity=weight), candidates, vectors, params)
                    if tried[0] > local[0]:
                        local = tried
            if local is not None and (exclude not in best or local[0] > best[exclude].val_score):
                best[exclude] = Choice(dict(params), local[1], local[0])
        del candidates
    for exclude, choice in best.items():
        log.info(
            "%s (exclude_seen=%s): chose %s, %s on val (recall@%d %.4f)",
            spec.name, exclude, choice.params or "defaults", choice.settings.describe(), k, choice.val_score,
        )  # fmt: skip
    return best, trace, fitted


@dataclass
class Outcome:
    """``served``: the served exclusion setting; ``rankings[exclude][method]`` int64 [Q, max_k]; the choices."""

    served: bool
    rankings: dict[bool, dict[str, np.ndarray]]
    chosen: dict[str, dict[bool, Choice]]
    tuning: dict[str, Any]
    index_meta: dict[str, Any]


def tune_and_rank(
    specs: Sequence[MethodSpec],
    fit: Callable[[Any], Any],
    val: SplitQueries,
    test: SplitQueries,
    fixed: ScoringSettings | None,
    tune_k: int,
    max_k: int,
    batch_size: int,
    report_other: bool = True,
    use_index: bool = False,
) -> Outcome:
    """Choose every method's settings on ``val`` (the first spec is the model: its recorded ``fixed`` settings,
    else its better exclusion setting on val, decide what is served), then rank ``test`` with each method
    under the served exclusion setting (and the other one with ``report_other``). ``use_index`` adds a
    ``model_index`` row: the model ranked through its vector index."""
    repeats = {"val": RepeatCache(val), "test": RepeatCache(test)}
    served: bool | None = fixed.exclude_seen if fixed else None
    tuning: dict[str, Any] = {}
    chosen: dict[str, dict[bool, Choice]] = {}
    fitted: dict[str, dict[str, Any]] = {}
    for spec in tqdm(specs, desc="tuning on val", unit="method"):
        if served is None:
            exclusions = [True, False]
        else:
            exclusions = [served, not served] if report_other else [served]
        best, trace, fitted[spec.name] = tune_method(
            spec, fit, val, exclusions, tune_k, batch_size, repeats["val"]
        )
        chosen[spec.name] = best
        if served is None:  # the model without recorded settings: serve its better exclusion setting on val
            served = max(best, key=lambda e: (best[e].val_score, e))
        tuning[spec.name] = {
            **{f"exclude_seen={str(e).lower()}": c.to_dict() for e, c in best.items()},
            "grid": trace,
        }
    assert served is not None, "tune_and_rank needs at least the model's spec"
    exclusions = [served, not served] if report_other else [served]
    rankings: dict[bool, dict[str, np.ndarray]] = {e: {} for e in exclusions}
    index_meta: dict[str, Any] = {}
    for spec in tqdm(specs, desc="ranking the evaluation split", unit="method"):
        for exclude in exclusions:
            choice = chosen[spec.name][exclude]
            ranker = fitted[spec.name][repr(sorted(choice.params.items()))]
            runs = [(spec.name, False)] + ([("model_index", True)] if use_index and spec is specs[0] else [])
            for name, through_index in runs:
                started = time.perf_counter()
                count = choice.settings.candidates_needed(max_k)
                candidates = candidates_of(ranker, test, count, batch_size, use_index=through_index)
                if use_index and spec is specs[0]:  # exact vs index: the scoring seconds of both
                    index_meta[f"{name}_seconds_exclude_seen={str(exclude).lower()}"] = (
                        time.perf_counter() - started
                    )
                    index_meta["index"] = getattr(ranker.index, "info", {})
                rankings[exclude][name] = rank_split(
                    candidates,
                    test,
                    choice.settings,
                    max_k,
                    batch_size,
                    repeats["test"],
                    getattr(ranker, "item_vectors", None),
                )
    return Outcome(served, rankings, chosen, tuning, index_meta)


def choose_served_settings(
    ranker: Any,
    val: SplitQueries,
    grid: Mapping[str, Sequence[Any]] | None,
    k: int = 10,
    batch_size: int = 1024,
) -> tuple[ScoringSettings, dict[str, Any]]:
    """The scoring settings to serve a (fitted) model with: its best on ``val`` by recall@k over both
    exclusion settings and the repeat ``grid`` (e.g. at export, to record in the bundle manifest), and the
    trace (what was tried, for the manifest or a log; ``other_exclusion``: the best settings of the other
    exclusion setting, for requests that override it).

    Example:
        >>> val = split_queries(dm.events, dm.examples.positions["val"], dm.dataset("val"),  # doctest: +SKIP
        ...                     np.arange(dm.num_items), dm.max_history, dm.schema.weight_array)
        >>> settings, trace = choose_served_settings(ModelRanker(tower, embeddings), val, grid)  # doctest: +SKIP
        >>> manifest["scoring"] = settings.to_dict()  # doctest: +SKIP
    """
    spec = MethodSpec("model", lambda params: ranker, repeat_grid=grid)
    best, trace, _ = tune_method(spec, lambda r: r, val, [True, False], k, batch_size, RepeatCache(val))
    served = max(best, key=lambda e: (best[e].val_score, e))  # ties: exclude (the service's old default)
    other = best.get(not served)
    return best[served].settings, {
        "metric": f"val recall@{k}",
        "chosen": best[served].val_score,
        # what a request that sets the other exclusion is served with (its own best on val)
        **(
            {"other_exclusion": other.settings.to_dict(), "other_exclusion_val": other.val_score}
            if other
            else {}
        ),
        "grid": trace,
    }
