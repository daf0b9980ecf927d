"""Typed training/evaluation batches, and sequence windows: every next-item target of a buyer in one pass.

`HistoryBatch` is one history per target (evaluation, and the per-target training mode). `SequenceBatch`
holds windows of buyers' event sequences and all the training targets whose query is a position of a
window: a causal buyer tower run once over a window gives the query of every target in it.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import numpy as np
import torch
from numpy.typing import ArrayLike
from torch import Tensor
from torch.utils.data import Dataset, Sampler

if TYPE_CHECKING:  # sequences.py builds HistoryBatch: a runtime import here would be circular
    from twotower.data.sequences import EventLog


# Time since the previous event of the same history, in buckets: 0 = none (the history's oldest event, padding,
# an unknown or out-of-order time), 1 = the same timestamp (lines of one invoice), then up to 1 hour, 1 day,
# 7 days, 30 days, and longer. One definition for training windows, evaluation and serving requests.
GAP_BUCKET_EDGES_S = np.array([0.0, 3600.0, 86400.0, 7 * 86400.0, 30 * 86400.0])
NUM_GAP_BUCKETS = len(GAP_BUCKET_EDGES_S) + 2


def time_gap_buckets(times_s: ArrayLike, mask: ArrayLike) -> np.ndarray:
    """int64 [B, L]: the gap bucket (see :data:`GAP_BUCKET_EDGES_S`) of each position of histories whose real
    positions are contiguous (left- or right-aligned), from epoch seconds ``times_s`` [B, L] (NaN = unknown).

    Example:
        >>> time_gap_buckets([[0.0, 0.0, 60.0, 2e6, np.nan]], [[True] * 5]).tolist()
        [[0, 1, 2, 5, 0]]
    """
    times = np.asarray(times_s, dtype=np.float64)
    mask = np.asarray(mask, dtype=bool)
    out = np.zeros(times.shape, dtype=np.int64)
    if times.shape[-1] < 2:
        return out
    gap = times[..., 1:] - times[..., :-1]
    known = mask[..., 1:] & mask[..., :-1] & np.isfinite(gap) & (gap >= 0)
    bucket = 1 + np.searchsorted(GAP_BUCKET_EDGES_S, np.where(known, gap, 0.0), side="left")
    out[..., 1:] = np.where(known, bucket, 0)
    return out


def _tensor(values: ArrayLike, dtype: type) -> Tensor:
    array = np.asarray(values, dtype=dtype)  # np.ascontiguousarray would turn a scalar target into [1]
    return torch.from_numpy(array if array.flags.c_contiguous else array.copy())


@dataclass
class HistoryBatch:
    """One right-aligned padded history per target (newest event last): what training, evaluation and every
    ranker take. Built by ``gather_histories``; by hand with :meth:`from_arrays`."""

    history_items: Tensor  # int64 [B, L] catalog item indices (0 where padded)
    history_weights: Tensor  # float32 [B, L] event weights (0 where padded)
    history_mask: Tensor  # bool [B, L]
    target: Tensor  # int64 [B] (-1: no known target, e.g. a ranking request built by hand)
    history_gaps: Tensor | None = None  # int64 [B, L] time_gap_buckets (None: times unknown, all 0)

    @classmethod
    def from_arrays(
        cls,
        history_items: ArrayLike,
        history_weights: ArrayLike,
        history_mask: ArrayLike,
        target: ArrayLike | None = None,
        history_gaps: ArrayLike | None = None,
    ) -> HistoryBatch:
        """From numpy arrays (or anything ``np.asarray`` takes), cast to the field dtypes (no copy when they
        match). ``target`` None: -1 per row, for a batch that is only ranked (rankers never read the target)."""
        items = _tensor(history_items, np.int64)
        return cls(
            history_items=items,
            history_weights=_tensor(history_weights, np.float32),
            history_mask=_tensor(history_mask, bool),
            target=torch.full(items.shape[:-1], -1) if target is None else _tensor(target, np.int64),
            history_gaps=None if history_gaps is None else _tensor(history_gaps, np.int64),
        )

    @classmethod
    def stack(cls, rows: Sequence[HistoryBatch]) -> HistoryBatch:
        """One batch from one-example rows (fields ``[L]``, target a scalar), as a DataLoader collates a dataset
        without batch gathering."""
        if not rows or not all(isinstance(row, HistoryBatch) for row in rows):
            kinds = sorted({type(row).__name__ for row in rows})
            raise TypeError(
                f"HistoryBatch.stack needs a non-empty list of HistoryBatch rows; got {kinds or 'none'}"
            )
        return cls(
            history_items=torch.stack([row.history_items for row in rows]),
            history_weights=torch.stack([row.history_weights for row in rows]),
            history_mask=torch.stack([row.history_mask for row in rows]),
            target=torch.stack([row.target for row in rows]),
            history_gaps=(
                torch.stack([row.history_gaps for row in rows])
                if all(row.history_gaps is not None for row in rows)
                else None
            ),
        )

    def map_items(self, mapping: np.ndarray) -> HistoryBatch:
        """Item indices (history and target) through ``mapping`` int [num items], e.g. data catalog -> bundle
        rows (``catalog_mapping``); padding stays 0, a -1 target stays -1."""
        table = torch.from_numpy(np.asarray(mapping, dtype=np.int64))
        items = torch.where(self.history_mask, table[self.history_items], 0)
        target = torch.where(self.target >= 0, table[self.target.clamp_min(0)], self.target)
        return replace(self, history_items=items, target=target)

    def __len__(self) -> int:
        return len(self.target)


@dataclass
class SequenceBatch:
    """Left-aligned windows of event sequences and every target whose query position lies in one of them."""

    items: Tensor  # int64 [W, L] (0 where padded, at the end)
    weights: Tensor  # float32 [W, L]
    mask: Tensor  # bool [W, L]
    query_window: Tensor  # int64 [T] the window row of each target's query
    query_position: Tensor  # int64 [T] the column whose causal output is the target's query
    target: Tensor  # int64 [T]
    gaps: Tensor | None = None  # int64 [W, L] time_gap_buckets (None: times unknown, all 0)

    def __len__(self) -> int:
        return len(self.target)


@dataclass
class Windows:
    """Window starts/ends (event positions) and the targets each window owns, grouped by window."""

    start: np.ndarray  # int64 [W]
    end: np.ndarray  # int64 [W] exclusive
    target_offsets: np.ndarray  # int64 [W + 1] targets of window w are targets[offsets[w]:offsets[w + 1]]
    targets: np.ndarray  # int64 [T] target event positions


def build_windows(events: EventLog, target_positions: np.ndarray, length: int) -> Windows:
    """Tile each buyer's sequence with windows of `length` events, stride length - length // 2.

    A target whose history ends at position e (exclusive; events sharing its timestamp excluded, as in
    `EventLog.history_end`) is owned by the first window holding position e - 1; it then sees at least the
    last length // 2 events of its history (all of it near the start of a sequence) and never a later one.
    """
    if length < 2:
        raise ValueError(f"sequence windows need length >= 2, got {length}")
    targets = np.sort(np.asarray(target_positions, dtype=np.int64))
    stride = length - length // 2
    query = events.history_end[targets] - 1  # [T] position of each target's query
    buyer = events.buyer[targets].astype(np.int64)
    first = events.buyer_start[buyer]  # [T]
    relative = query - first
    k = np.maximum(0, -(-(relative - length + 1) // stride))  # ceil division: first window holding the query
    # one window per (buyer, k); targets sorted by position are already sorted by (buyer, k)
    key_change = np.ones(len(targets), dtype=bool)
    key_change[1:] = (buyer[1:] != buyer[:-1]) | (k[1:] != k[:-1])
    window_of_target = np.cumsum(key_change) - 1
    heads = np.flatnonzero(key_change)
    start = first[heads] + k[heads] * stride
    end = np.zeros(len(heads), dtype=np.int64)
    np.maximum.at(end, window_of_target, query + 1)  # trim each window after its last query
    offsets = np.concatenate([heads, [len(targets)]]).astype(np.int64)
    return Windows(start=start.astype(np.int64), end=end, target_offsets=offsets, targets=targets)


class SequenceDataset(Dataset):
    """Sequence windows; `__getitems__` builds a whole `SequenceBatch` with vectorized gathers."""

    def __init__(self, events: EventLog, windows: Windows, weights_by_event: np.ndarray) -> None:
        self.events, self.windows, self.weights_by_event = events, windows, weights_by_event

    def __len__(self) -> int:
        return len(self.windows.start)

    @property
    def num_targets(self) -> int:
        return len(self.windows.targets)

    def __getitems__(self, indices: Sequence[int]) -> SequenceBatch:
        w = self.windows
        rows = np.asarray(indices, dtype=np.int64)
        start, end = w.start[rows], w.end[rows]
        length = max(1, int((end - start).max())) if len(rows) else 1
        index = start[:, None] + np.arange(length, dtype=np.int64)[None, :]  # [W, L]
        mask = index < end[:, None]
        index = np.where(mask, index, 0)
        items = np.where(mask, self.events.item[index], 0).astype(np.int64)
        weights = np.where(mask, self.weights_by_event[self.events.event[index]], 0.0).astype(np.float32)
        counts = w.target_offsets[rows + 1] - w.target_offsets[rows]  # [W]
        target_index = np.concatenate(
            [np.arange(w.target_offsets[r], w.target_offsets[r + 1]) for r in rows]
        ).astype(np.int64)
        targets = w.targets[target_index]
        query_window = np.repeat(np.arange(len(rows), dtype=np.int64), counts)
        query_position = self.events.history_end[targets] - 1 - start[query_window]
        times = self.events.timestamp[index] / 1e6  # [W, L] epoch seconds
        return SequenceBatch(
            items=torch.from_numpy(items),
            weights=torch.from_numpy(weights),
            mask=torch.from_numpy(mask),
            gaps=torch.from_numpy(time_gap_buckets(times, mask)),
            query_window=torch.from_numpy(query_window),
            query_position=torch.from_numpy(query_position.astype(np.int64)),
            target=torch.from_numpy(self.events.item[targets].astype(np.int64)),
        )

    def __getitem__(self, index: int) -> SequenceBatch:
        return self.__getitems__([index])


class LengthBucketBatchSampler(Sampler[list[int]]):
    """Random batches of windows of similar length: padding to the batch's longest window costs compute.

    Each epoch: shuffle, cut into pools of `pool` batches, sort each pool by window length, batch it, then
    shuffle the batches. Every window appears exactly once per epoch.
    """

    def __init__(self, lengths: np.ndarray, batch_size: int, pool: int = 50, seed: int = 0) -> None:
        self.lengths, self.batch_size, self.pool = np.asarray(lengths), batch_size, pool
        self.seed, self.epoch = seed, 0

    def __len__(self) -> int:
        return -(-len(self.lengths) // self.batch_size)

    def __iter__(self) -> Iterator[list[int]]:
        rng = np.random.default_rng(self.seed + self.epoch)
        self.epoch += 1
        order = rng.permutation(len(self.lengths))
        batches: list[list[int]] = []
        step = self.batch_size * self.pool
        for start in range(0, len(order), step):
            chunk = order[start : start + step]
            chunk = chunk[np.argsort(self.lengths[chunk], kind="stable")]
            batches.extend(
                chunk[i : i + self.batch_size].tolist() for i in range(0, len(chunk), self.batch_size)
            )
        for index in rng.permutation(len(batches)):
            yield batches[index]
