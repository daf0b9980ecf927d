"""Events -> time-ordered buyer histories -> causal next-item examples, split by time.

Memory stays O(events): events live in flat numpy arrays sorted by (buyer, time); an example is only
the position of its target event, and its history is sliced out of the arrays when a batch is built.

(Just over ~300 lines: events, splits and examples share the sorted-array layout described here.)
"""

from __future__ import annotations

import logging
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from twotower.data.batches import HistoryBatch, time_gap_buckets
from twotower.data.catalog import Catalog
from twotower.data.io import DEFAULT_CHUNKSIZE, DEFAULT_ENCODING, read_table
from twotower.data.report import DataReport
from twotower.data.schema import EVENT_COLUMNS, DataValidationError, EventSchema, normalize_id

log = logging.getLogger(__name__)

INVALID_TIME = np.iinfo(np.int64).min
# The range every pandas API handles (datetime64[ns]: 1677-09-21 .. 2262-04-11), in microseconds. Outside it
# a value is garbage (inf, 1e300, a stray 30-digit number), and float -> int64 casts of it differ by platform.
MIN_TIME = pd.Timestamp.min.value // 1000 + 1
MAX_TIME = pd.Timestamp.max.value // 1000
SPLITS = ("train", "val", "test")
SPLIT_METHODS = ("temporal", "leave_last_out")


# An ISO time that names its zone: "...T10:00:00Z", "... 10:00+03:00", "...T10:00:00.5-0500". ([0-9] and
# " " rather than \d and \s: pyarrow-backed strings (pandas 3) then match it in C, ~6x faster.)
_ZONED = r"[T ][0-9]{2}(?::?[0-9]{2}){0,2}(?:[.,][0-9]+)? *(?:[Zz]|[+-][0-9]{2}(?::?[0-9]{2})?) *$"


def _micros(utc_times: pd.Series) -> np.ndarray:
    if utc_times.dt.tz is not None:  # pandas 2.1 returns tz-naive NaT when utc=True parsed nothing
        utc_times = utc_times.dt.tz_convert(None)
    return utc_times.to_numpy(dtype="datetime64[us]").astype(np.int64)


def _iso_micros(text: pd.Series) -> np.ndarray:
    """int64 UTC microseconds of ISO strings (naive = UTC); INVALID_TIME where unparseable.

    Zoned and naive strings are parsed apart: pandas 2.2 applies the offset of the last zoned string to
    the naive ones after it ("2024-01-01 00:00" read after a "+03:00" time came out 3 hours early).
    """
    out = np.full(len(text), INVALID_TIME, dtype=np.int64)
    zoned = text.astype(str).str.contains(_ZONED, regex=True, na=False).to_numpy(dtype=bool)
    for rows in (zoned, ~zoned):
        if rows.any():
            parsed = pd.to_datetime(text[rows], utc=True, format="ISO8601", errors="coerce")
            ok = parsed.notna().to_numpy()
            micros = np.full(len(parsed), INVALID_TIME, dtype=np.int64)
            micros[ok] = _micros(parsed[ok])
            out[rows] = micros
    return out


def parse_timestamps(values: pd.Series) -> np.ndarray:
    """int64 microseconds since the Unix epoch (UTC); INVALID_TIME where unparseable or out of range.

    Accepts datetimes, ISO-8601 strings with or without a zone (naive = UTC), and epoch seconds,
    milliseconds or microseconds (as numbers or digit strings; told apart by magnitude). Times outside
    [MIN_TIME, MAX_TIME] (years 1677..2262), infinities and NaN are INVALID_TIME on every platform.
    """
    out = np.full(len(values), INVALID_TIME, dtype=np.int64)
    if pd.api.types.is_datetime64_any_dtype(values):
        parsed = pd.to_datetime(values, utc=True)
        ok = parsed.notna().to_numpy()
        out[ok] = _micros(parsed[ok])
        return _in_range(out)
    numeric = pd.to_numeric(values, errors="coerce")
    is_number = numeric.notna().to_numpy()
    if is_number.any():
        number = numeric.to_numpy(dtype=np.float64, na_value=np.nan)[is_number]
        scale = np.where(number >= 1e14, 1.0, np.where(number >= 1e11, 1e3, 1e6))  # us, ms or s -> us
        micros = number * scale
        # check before the cast: float -> int64 of inf or 1e300 is undefined (INT64_MIN on x86, saturated on ARM)
        fits = np.isfinite(micros) & (micros >= MIN_TIME) & (micros <= MAX_TIME)
        out[np.flatnonzero(is_number)[fits]] = np.round(micros[fits]).astype(np.int64)
    if not is_number.all():
        out[~is_number] = _iso_micros(values[~is_number])
    return _in_range(out)


def _in_range(micros: np.ndarray) -> np.ndarray:
    return np.where((micros >= MIN_TIME) & (micros <= MAX_TIME), micros, INVALID_TIME)


@dataclass
class EventLog:
    """Kept events sorted by (buyer, timestamp); positions index every array."""

    buyer: np.ndarray  # int32 [n]
    item: np.ndarray  # int32 [n] catalog item index
    event: np.ndarray  # int8 [n] index into EVENT_TYPES
    timestamp: np.ndarray  # int64 [n] microseconds UTC
    buyer_ids: list[str]
    buyer_start: np.ndarray = field(init=False)  # int64 [num_buyers + 1] first position of each buyer
    history_end: np.ndarray = field(init=False)  # int64 [n] history of position t is [.., history_end[t])

    def __post_init__(self) -> None:
        counts = np.bincount(self.buyer, minlength=len(self.buyer_ids))
        self.buyer_start = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        # A target sees only events strictly earlier in time: events sharing its timestamp are excluded.
        n = len(self.buyer)
        new_run = np.ones(n, dtype=bool)
        if n > 1:
            new_run[1:] = (self.buyer[1:] != self.buyer[:-1]) | (self.timestamp[1:] != self.timestamp[:-1])
        run_starts = np.flatnonzero(new_run)
        self.history_end = run_starts[np.cumsum(new_run) - 1].astype(np.int64)

    def __len__(self) -> int:
        return len(self.buyer)

    def keep_buyers(self, fraction: float, seed: int = 0) -> EventLog:
        """The events of a seeded ``fraction`` of the buyers, chosen by a hash of the buyer id (the same buyers
        for the same ids, fraction and seed, whatever the file order); buyers are renumbered."""
        if check_buyer_fraction(fraction) == 1:
            return self
        hashes = np.array([zlib.crc32(f"{seed}:{b}".encode()) for b in self.buyer_ids], dtype=np.uint64)
        kept = hashes < np.uint64(fraction * 2**32)
        new_index = np.cumsum(kept) - 1
        rows = kept[self.buyer]
        return EventLog(
            buyer=new_index[self.buyer[rows]].astype(np.int32),
            item=self.item[rows],
            event=self.event[rows],
            timestamp=self.timestamp[rows],
            buyer_ids=[b for b, k in zip(self.buyer_ids, kept, strict=True) if k],
        )


def check_buyer_fraction(fraction: float) -> float:
    """``fraction`` if it is a share of buyers to keep, in (0, 1]; else a ValueError naming the setting."""
    if not 0 < fraction <= 1:
        raise ValueError(f"data.buyer_fraction must be in (0, 1], got {fraction}")
    return fraction


def load_events(
    path: str | Path,
    catalog: Catalog,
    schema: EventSchema | None = None,
    report: DataReport | None = None,
    chunksize: int = DEFAULT_CHUNKSIZE,
    show_progress: bool = True,
    *,
    encoding: str = DEFAULT_ENCODING,
) -> EventLog:
    """Read events in chunks, normalize them, drop (and count) unusable rows, sort per buyer by time.

    Buyer and product ids are matched in `normalize_id` form; `encoding` is the CSV's text encoding.
    """
    schema = schema or EventSchema()
    report = report if report is not None else DataReport()
    buyer_index: dict[str, int] = {}
    parts: list[tuple[np.ndarray, ...]] = []
    progress = tqdm(
        desc=f"reading {Path(path).name}", unit=" rows", unit_scale=True, disable=not show_progress
    )
    for chunk in read_table(path, EVENT_COLUMNS, chunksize=chunksize, encoding=encoding):
        report.rows_read["events"] += len(chunk)
        progress.update(len(chunk))
        buyer_codes, buyer_uniques = pd.factorize(chunk["buyer_id"].map(normalize_id, na_action="ignore"))
        buyer_map = np.array(
            [buyer_index.setdefault(b, len(buyer_index)) if b else -1 for b in buyer_uniques] + [-1],
            dtype=np.int64,
        )
        buyer = buyer_map[buyer_codes]
        item_codes, item_uniques = pd.factorize(chunk["product_id"].map(normalize_id, na_action="ignore"))
        item_map = np.array(
            [catalog.aliases.get(p, -2) if p else -1 for p in item_uniques] + [-1], dtype=np.int64
        )
        item = item_map[item_codes]
        event = schema.codes(chunk["event_type"])
        timestamp = parse_timestamps(chunk["timestamp"])

        # Each dropped row is counted once, under the first reason that applies.
        reasons = [
            ("events.missing_buyer_id", buyer < 0),
            ("events.missing_product_id", item == -1),
            ("events.unknown_product_id", item == -2),
            ("events.unknown_event_name", event < 0),
            ("events.bad_timestamp", timestamp == INVALID_TIME),
        ]
        bad = np.zeros(len(chunk), dtype=bool)
        for reason, mask in reasons:
            report.drop(reason, int((mask & ~bad).sum()))
            bad |= mask
        keep = ~bad
        parts.append(
            (buyer[keep].astype(np.int32), item[keep].astype(np.int32), event[keep], timestamp[keep])
        )
    progress.close()
    if not parts or sum(len(p[0]) for p in parts) == 0:
        raise DataValidationError(
            f"{path}: no usable events after cleaning; dropped: {dict(report.dropped)}. Check the event names "
            "(data.event_aliases), the timestamps (ISO-8601 or epoch) and that product ids match the products file."
        )
    buyer, item, event, timestamp = (np.concatenate(column) for column in zip(*parts, strict=True))
    del parts
    order = np.lexsort((event, item, timestamp, buyer))  # buyer, then time; ties broken deterministically
    buyer, item, event, timestamp = buyer[order], item[order], event[order], timestamp[order]
    del order
    duplicate = np.zeros(len(buyer), dtype=bool)
    duplicate[1:] = (
        (buyer[1:] == buyer[:-1])
        & (item[1:] == item[:-1])
        & (event[1:] == event[:-1])
        & (timestamp[1:] == timestamp[:-1])
    )
    report.drop("events.exact_duplicate", int(duplicate.sum()))
    if duplicate.any():
        keep = ~duplicate
        buyer, item, event, timestamp = buyer[keep], item[keep], event[keep], timestamp[keep]
    # Re-number buyers densely in sorted order so buyer_start offsets line up with positions.
    used, buyer = np.unique(buyer, return_inverse=True)
    ids_by_code = np.array(list(buyer_index), dtype=object)
    events = EventLog(
        buyer=buyer.astype(np.int32),
        item=item,
        event=event,
        timestamp=timestamp,
        buyer_ids=ids_by_code[used].tolist(),
    )
    report.events_kept = len(events)
    report.buyers = len(events.buyer_ids)
    return events


def _cut_time(events: EventLog, cut: float | str, name: str) -> int:
    """A cut point given as a quantile of event time (0 < q < 1) or as a timestamp string."""
    if isinstance(cut, int | float) and not isinstance(cut, bool):
        if not 0.0 < float(cut) < 1.0:
            raise DataValidationError(
                f"split {name}={cut}: a numeric cut is a time quantile and must be in (0, 1)"
            )
        return int(np.quantile(events.timestamp, float(cut), method="lower"))
    micros = parse_timestamps(pd.Series([str(cut)]))[0]
    if micros == INVALID_TIME:
        raise DataValidationError(
            f"split {name}={cut!r} is neither a quantile in (0, 1) nor an ISO-8601 timestamp"
        )
    return int(micros)


@dataclass
class Examples:
    """Target positions per split, the events visible to training, and the cut points used."""

    positions: dict[str, np.ndarray]  # split -> int64 [n_split] target positions into the EventLog
    train_events: np.ndarray  # bool [n_events]: events from the training period (popularity, cold items)
    cuts: dict[str, object]


def build_examples(
    events: EventLog,
    schema: EventSchema,
    target_event_types: Sequence[str] = ("view", "add_to_cart", "purchase"),
    method: str = "temporal",
    val_cut: float | str = 0.8,
    test_cut: float | str = 0.9,
) -> Examples:
    """Causal next-item examples: a target at position t has as history the buyer's events strictly before it.

    temporal: train targets lie before val_cut, val targets in [val_cut, test_cut), test targets after test_cut;
    histories may use everything before their target. leave_last_out: per buyer, the last eligible target is
    test, the one before it val, the rest train.
    """
    if method not in SPLIT_METHODS:
        raise DataValidationError(f"split method {method!r} is unknown; use one of {list(SPLIT_METHODS)}")
    target_codes = schema.type_codes(target_event_types)
    has_history = events.history_end > events.buyer_start[events.buyer]
    eligible = np.isin(events.event, target_codes) & has_history
    if method == "temporal":
        val_time, test_time = _cut_time(events, val_cut, "val_cut"), _cut_time(events, test_cut, "test_cut")
        if test_time < val_time:
            raise DataValidationError(f"test_cut ({test_cut}) must not come before val_cut ({val_cut})")
        ts = events.timestamp
        masks = {"train": ts < val_time, "val": (ts >= val_time) & (ts < test_time), "test": ts >= test_time}
        positions = {name: np.flatnonzero(eligible & mask) for name, mask in masks.items()}
        train_events = ts < val_time
        cuts = {
            "method": method,
            "val_cut": pd.Timestamp(val_time, unit="us", tz="UTC").isoformat(),
            "test_cut": pd.Timestamp(test_time, unit="us", tz="UTC").isoformat(),
        }
    else:
        candidates = np.flatnonzero(eligible)
        buyer = events.buyer[candidates]
        # rank from the end within each buyer: 0 = last eligible target
        ends = np.searchsorted(buyer, buyer, side="right")
        rank_from_end = ends - 1 - np.arange(len(candidates))
        positions = {
            "test": candidates[rank_from_end == 0],
            "val": candidates[rank_from_end == 1],
            "train": candidates[rank_from_end >= 2],
        }
        first_held_out = np.full(len(events.buyer_ids), len(events), dtype=np.int64)
        held_out = np.concatenate([positions["val"], positions["test"]])
        np.minimum.at(first_held_out, events.buyer[held_out], events.history_end[held_out])
        train_events = np.arange(len(events)) < first_held_out[events.buyer]
        cuts = {"method": method}
    return Examples(positions=positions, train_events=train_events, cuts=cuts)


def item_counts(events: EventLog, mask: np.ndarray, num_items: int) -> np.ndarray:
    """Interactions per item among the masked events: float32 [num_items]."""
    return np.bincount(events.item[mask], minlength=num_items).astype(np.float32)


RECENT_DAYS = 30.0  # the window of item_recent_counts


def item_repeat_counts(events: EventLog, mask: np.ndarray, num_items: int) -> np.ndarray:
    """Per item, the masked events whose buyer had the item at an earlier time among the masked events
    (re-purchases, re-views): float32 [num_items]. With ``item_counts``, an item's repeat propensity."""
    item, time = events.item[mask], events.timestamp[mask]
    pair = events.buyer[mask].astype(np.int64) * num_items + item
    order = np.lexsort((time, pair))  # by pair, then time
    item, pair, time = item[order], pair[order], time[order]
    starts = np.flatnonzero(np.r_[True, pair[1:] != pair[:-1]]) if len(pair) else np.zeros(0, np.int64)
    first_time = np.repeat(time[starts], np.diff(np.r_[starts, len(pair)]))  # each pair's first time
    repeated = time > first_time  # strictly later: events of the first basket are not repeats
    return np.bincount(item[repeated], minlength=num_items).astype(np.float32)


def item_recent_counts(
    events: EventLog, mask: np.ndarray, num_items: int, days: float = RECENT_DAYS
) -> np.ndarray:
    """Interactions per item among the masked events of the last ``days`` before the newest of them:
    float32 [num_items] (what sells now, where ``item_counts`` is what sold over the whole period)."""
    if not mask.any():
        return np.zeros(num_items, dtype=np.float32)
    newest = events.timestamp[mask].max()
    recent = mask & (events.timestamp > newest - int(days * 86_400 * 1e6))
    return item_counts(events, recent, num_items)


def gather_histories(
    events: EventLog,
    positions: np.ndarray,
    max_history: int,
    weights_by_event: np.ndarray,
    trim: bool = False,
) -> HistoryBatch:
    """Right-aligned padded histories for a batch of target positions (vectorized), as one `HistoryBatch`.

    L = max_history, the most recent events last (with trim, L = the batch's longest history).
    """
    positions = np.asarray(positions, dtype=np.int64)
    end = events.history_end[positions]  # [B]
    start = np.maximum(events.buyer_start[events.buyer[positions]], end - max_history)  # [B]
    if trim and len(positions):
        max_history = max(1, int((end - start).max()))  # no all-padding columns: less work per batch
    offsets = np.arange(max_history, dtype=np.int64)[None, :] - max_history  # [1, L], -L..-1
    index = end[:, None] + offsets  # [B, L]
    mask = index >= start[:, None]
    index = np.where(mask, index, 0)
    items = np.where(mask, events.item[index], 0).astype(np.int64)
    weights = np.where(mask, weights_by_event[events.event[index]], 0.0).astype(np.float32)
    gaps = time_gap_buckets(events.timestamp[index] / 1e6, mask)
    return HistoryBatch.from_arrays(items, weights, mask, events.item[positions], history_gaps=gaps)
