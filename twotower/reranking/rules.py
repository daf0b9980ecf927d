"""Business rules: filters, additive boosts and per-group caps on any catalog column.

Options (YAML keys = constructor arguments; conf/reranker/business_rules.yaml):
- ``filters``: ``{column: condition}``; an item must pass every condition. A condition is a mapping of
  operators ``min`` / ``max`` (inclusive, numeric columns), ``eq`` / ``ne`` (one value), ``in`` / ``not_in``
  (a list), or a shorthand: a scalar means ``eq``, a list means ``in``. E.g.
  ``{price: {min: 1, max: 50}, in_stock: true, category: {not_in: [tobacco]}}``.
- ``boosts``: ``{column: {value: amount}}`` added to the retrieval score of items whose column equals
  value, e.g. ``{brand: {Samsung: 0.1}, in_stock: {true: 0.05}}`` (amounts may be negative: demotions).
- ``max_per``: ``{column: N}``: at most N items sharing a value of that column in one list, e.g.
  ``{brand: 2, category: 4}``. Items with an empty value are not grouped (never capped).
- ``backfill``: when the caps leave fewer than k items, fill the list with the best capped-out items
  (after the capped list, in score order): caps become a preference instead of a hard rule. Filters stay
  hard either way.

Text columns match on `normalize_key` (Arabic-aware, case-folded), as the service's brand/category filters
do, so ``Samsung`` matches ``samsung ``. A missing value (NaN, None) passes no condition except ``ne`` and
``not_in``. Order of operations: filter, boost, sort by the boosted score (stable), cap greedily, keep k;
the scores returned are the boosted ones, so they decrease down the list (except across a backfill).
Filters, and caps without backfill, are hard rules: a list may come back shorter than k (the service
fetches ``candidates`` items to leave room).

Example:
    >>> rules = BusinessRules(candidates=100, max_per={"brand": 2}, filters={"price": {"max": 50}})
    >>> rules.prepare(context)   # ValueError naming the column if the catalog has no `price`
    >>> rows, scores = rules.rerank(rows, scores, k=10, context=context)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from twotower.data.schema import normalize_key
from twotower.reranking.base import RerankContext, Reranker, register_reranker

OPERATORS = ("min", "max", "eq", "ne", "in", "not_in")


def plain(value: Any) -> Any:
    """Plain dicts/lists from config containers (DictConfig/ListConfig are Mapping/Sequence), recursively."""
    if isinstance(value, Mapping):
        return {key: plain(item) for key, item in value.items()}
    if isinstance(value, Sequence) and not isinstance(value, str | bytes):
        return [plain(item) for item in value]
    return value


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float | np.integer | np.floating | np.bool_)


def _conditions(column: str, condition: Any) -> dict[str, Any]:
    """Validated `{operator: operand}` for one filtered column (shorthands expanded)."""
    if isinstance(condition, list):
        condition = {"in": condition}
    elif not isinstance(condition, dict):
        condition = {"eq": condition}
    if not condition:
        raise ValueError(f"reranker filter on {column!r} is empty; give e.g. {{min: 1}} or a value")
    for op, operand in condition.items():
        if op not in OPERATORS:
            raise ValueError(
                f"reranker filter on {column!r}: unknown operator {op!r}; known: {', '.join(OPERATORS)}"
            )
        if op in ("min", "max") and (not _is_number(operand) or isinstance(operand, bool)):
            raise ValueError(f"reranker filter {column}.{op} needs a number; got {operand!r}")
        if op in ("in", "not_in") and not isinstance(operand, list):
            raise ValueError(f"reranker filter {column}.{op} needs a list of values; got {operand!r}")
        if op in ("eq", "ne") and isinstance(operand, dict | list):
            raise ValueError(f"reranker filter {column}.{op} needs one value; got {operand!r}")
    return condition


@dataclass
class _State:
    passes: np.ndarray | None  # bool [N]: passes every filter; None = no filter
    boost: np.ndarray | None  # float32 [N] added to the score; None = no boost
    groups: list[tuple[np.ndarray, int]]  # (int64 [N] group code, -1 = ungrouped; cap) per capped column


@register_reranker("business_rules")
class BusinessRules(Reranker):
    """Filters, boosts and per-brand/category (any column) caps; see the module docstring."""

    def __init__(
        self,
        candidates: int = 100,
        max_per: Mapping[str, int] | None = None,
        filters: Mapping[str, Any] | None = None,
        boosts: Mapping[str, Mapping[Any, float]] | None = None,
        backfill: bool = False,
    ) -> None:
        if int(candidates) < 1:
            raise ValueError(f"reranker.candidates must be >= 1; got {candidates}")
        self.candidates = int(candidates)
        self.backfill = bool(backfill)
        self.max_per: dict[str, int] = {}
        for column, cap in (plain(max_per) or {}).items():
            if cap is None:
                continue  # `max_per: {brand: null}` switches a cap off from the command line
            if isinstance(cap, bool) or not isinstance(cap, int) or cap < 1:
                raise ValueError(f"reranker max_per.{column} must be an integer >= 1 or null; got {cap!r}")
            self.max_per[str(column)] = cap
        self.filters = {str(c): _conditions(str(c), cond) for c, cond in (plain(filters) or {}).items()}
        self.boosts: dict[str, dict[Any, float]] = {}
        for column, table in (plain(boosts) or {}).items():
            if not isinstance(table, dict):
                raise ValueError(
                    f"reranker boosts.{column} must map column values to amounts, e.g. {{X: 0.1}}; "
                    f"got {table!r}"
                )
            for value, amount in table.items():
                if not _is_number(amount) or isinstance(amount, bool):
                    raise ValueError(f"reranker boosts.{column}.{value} must be a number; got {amount!r}")
            self.boosts[str(column)] = {value: float(amount) for value, amount in table.items()}

    def __repr__(self) -> str:
        return (
            f"BusinessRules(candidates={self.candidates}, max_per={self.max_per}, filters={self.filters}, "
            f"boosts={self.boosts}, backfill={self.backfill})"
        )

    # -- per-catalog precomputation ------------------------------------------------------------------
    @staticmethod
    def _keys(context: RerankContext, column: str, needed_by: str) -> np.ndarray:
        """A column in matching form: numeric columns as float64 (NaN = missing), text as normalize_key."""
        values = context.column(column, needed_by)

        def build() -> np.ndarray:
            if values.dtype.kind in "biuf":
                return values.astype(np.float64)
            missing = pd.isna(values)  # None, NaN, pd.NA (nullable Int64/boolean columns read from parquet)
            present = values[~missing]
            if len(present) and all(_is_number(v) for v in present):  # numbers with gaps: still numeric
                numeric = np.full(len(values), np.nan)
                numeric[~missing] = present.astype(np.float64)
                return numeric
            keys = ["" if gap else normalize_key(v) for v, gap in zip(values, missing, strict=True)]
            return np.array(keys, dtype=object)

        return context.memo(("reranking.keys", column), build)

    def _matches(self, keys: np.ndarray, column: str, operands: list) -> np.ndarray:
        if keys.dtype == object:
            wanted = {normalize_key(v) for v in operands}
            return np.fromiter((k in wanted and k != "" for k in keys), dtype=bool, count=len(keys))
        for value in operands:
            if not _is_number(value):
                raise ValueError(
                    f"reranker rule on numeric catalog column {column!r} compares it with {value!r}; "
                    "give numbers (or true/false)"
                )
        return np.isin(keys, np.asarray(operands, dtype=np.float64))

    def _prepare(self, context: RerankContext) -> _State:
        passes = None
        for column, condition in self.filters.items():
            keys = self._keys(context, column, f"reranker filters.{column}")
            ok = np.ones(len(keys), dtype=bool)
            for op, operand in condition.items():
                if op in ("min", "max"):
                    if keys.dtype == object:
                        raise ValueError(
                            f"reranker filter {column}.{op} needs a numeric column; {column!r} holds text"
                        )
                    with np.errstate(invalid="ignore"):  # NaN compares False: missing fails min/max
                        ok &= keys >= operand if op == "min" else keys <= operand
                elif op in ("eq", "in"):
                    ok &= self._matches(keys, column, operand if op == "in" else [operand])
                else:
                    ok &= ~self._matches(keys, column, operand if op == "not_in" else [operand])
            passes = ok if passes is None else passes & ok
        boost = None
        for column, table in self.boosts.items():
            keys = self._keys(context, column, f"reranker boosts.{column}")
            boost = np.zeros(len(keys), np.float32) if boost is None else boost
            for value, amount in table.items():
                boost[self._matches(keys, column, [value])] += amount
        groups = []
        for column, cap in self.max_per.items():
            keys = self._keys(context, column, f"reranker max_per.{column}")
            codes, _ = pd.factorize(keys, use_na_sentinel=True)  # NaN/None -> -1
            codes = codes.astype(np.int64)
            if keys.dtype == object:
                codes[keys == ""] = -1  # empty brand/category: not one big group
            groups.append((codes, cap))
        return _State(passes, boost, groups)

    # -- per request ----------------------------------------------------------------------------------
    def _rerank(
        self, rows: np.ndarray, scores: np.ndarray, k: int, context: RerankContext, state: _State
    ) -> tuple[np.ndarray, np.ndarray]:
        if state.passes is not None:
            keep = state.passes[rows]
            rows, scores = rows[keep], scores[keep]
        if state.boost is not None:
            scores = scores + state.boost[rows]
            order = np.argsort(-scores, kind="stable")
            rows, scores = rows[order], scores[order]
        if not state.groups:
            return rows[:k], scores[:k]
        codes = [(codes[rows].tolist(), cap) for codes, cap in state.groups]
        counts: list[dict[int, int]] = [{} for _ in codes]
        picked: list[int] = []
        for i in range(len(rows)):
            if any(
                column[i] >= 0 and counted.get(column[i], 0) >= cap
                for (column, cap), counted in zip(codes, counts, strict=True)
            ):
                continue  # a cap is full: skip; the item counts toward no group
            for (column, _), counted in zip(codes, counts, strict=True):
                counted[column[i]] = counted.get(column[i], 0) + 1
            picked.append(i)
            if len(picked) == k:
                break
        if self.backfill and len(picked) < k:
            chosen = set(picked)
            picked += [i for i in range(len(rows)) if i not in chosen][: k - len(picked)]
        index = np.asarray(picked, dtype=np.int64)
        return rows[index], scores[index]
