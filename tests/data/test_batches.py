"""HistoryBatch: one typed batch from the data layer through evaluation to the rankers (no string-keyed dicts)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from twotower.data.batches import HistoryBatch, SequenceDataset, build_windows, time_gap_buckets
from twotower.data.datamodule import HistoryDataset
from twotower.data.sequences import EventLog
from twotower.evaluation.queries import split_queries
from twotower.evaluation.rankers import Interactions, PopularityRanker

WEIGHTS = np.array([1.0, 5.0, 10.0], dtype=np.float32)  # view, add_to_cart, purchase


def event_log() -> EventLog:
    # buyer a: items 0, 1 (cart), 2; buyer b: items 3, 1; one event a second
    return EventLog(
        buyer=np.array([0, 0, 0, 1, 1], np.int32),
        item=np.array([0, 1, 2, 3, 1], np.int32),
        event=np.array([0, 1, 2, 0, 2], np.int8),
        timestamp=np.arange(5, dtype=np.int64) * 1_000_000,
        buyer_ids=["a", "b"],
    )


def test_the_dataset_yields_one_typed_batch_with_the_field_dtypes() -> None:
    batch = HistoryDataset(event_log(), np.array([2, 4]), 100, WEIGHTS).__getitems__([0, 1])
    assert isinstance(batch, HistoryBatch) and len(batch) == 2
    assert batch.history_items.dtype == torch.int64 and batch.history_weights.dtype == torch.float32
    assert batch.history_mask.dtype == torch.bool and batch.target.dtype == torch.int64
    assert batch.history_items.tolist() == [[0, 1], [0, 3]]  # trimmed to the longest history, right-aligned
    assert batch.history_weights.tolist() == [[1.0, 5.0], [0.0, 1.0]]
    assert batch.history_mask.tolist() == [[True, True], [False, True]]
    assert batch.target.tolist() == [2, 1]


def test_from_arrays_casts_to_the_field_dtypes_and_marks_a_missing_target() -> None:
    batch = HistoryBatch.from_arrays([[3, 4]], [[1, 10]], [[0, 1]])
    assert batch.history_items.dtype == torch.int64 and batch.history_weights.dtype == torch.float32
    assert batch.history_mask.tolist() == [[False, True]]
    assert batch.target.tolist() == [-1]  # no known target: never a real item
    assert HistoryBatch.from_arrays([[3]], [[1.0]], [[True]], target=[7]).target.tolist() == [7]


def test_stack_builds_a_batch_from_one_example_rows() -> None:
    rows = [HistoryBatch.from_arrays([i, i + 1], [1.0, 5.0], [True, True], target=i) for i in range(3)]
    batch = HistoryBatch.stack(rows)
    assert batch.history_items.tolist() == [[0, 1], [1, 2], [2, 3]] and batch.target.tolist() == [0, 1, 2]
    with pytest.raises(TypeError, match="HistoryBatch rows"):
        HistoryBatch.stack([{"history_items": torch.zeros(2)}])


def test_map_items_moves_history_and_target_to_bundle_rows_and_keeps_padding() -> None:
    batch = HistoryBatch.from_arrays(
        [[0, 2], [1, 1]], [[0.0, 1.0], [1.0, 1.0]], [[False, True], [True, True]], [1, 0]
    )
    mapped = batch.map_items(np.array([5, 6, 7]))
    assert mapped.history_items.tolist() == [[0, 7], [6, 6]]  # the padded slot stays 0, not mapping[0]
    assert mapped.target.tolist() == [6, 5]
    assert torch.equal(mapped.history_weights, batch.history_weights)
    unknown = HistoryBatch.from_arrays([[2]], [[1.0]], [[True]]).map_items(np.array([5, 6, 7]))
    assert unknown.target.tolist() == [-1]


def test_split_query_batches_are_history_batches_in_the_bundles_item_order() -> None:
    events, positions = event_log(), np.array([2, 4])
    mapping = np.array([4, 3, 2, 1])  # data item i is bundle row 4 - i
    dataset = HistoryDataset(events, positions, 100, WEIGHTS)
    queries = split_queries(events, positions, dataset, mapping, 100, WEIGHTS)
    [(index, batch, history)] = list(queries.batches(batch_size=8))
    assert isinstance(batch, HistoryBatch) and index.tolist() == [0, 1]
    assert batch.history_items.tolist() == [[4, 3], [0, 1]]  # buyer b's padded slot stays 0
    assert batch.target.tolist() == queries.targets.tolist() == [2, 3]
    # the ranker batch and the scoring function's history input hold the same rows
    mask = batch.history_mask.numpy()
    np.testing.assert_array_equal(mask, history.mask)
    np.testing.assert_array_equal(batch.history_items.numpy()[mask], history.items[history.mask])


def test_rankers_refuse_the_old_string_keyed_batches_with_a_clear_error() -> None:
    ranker = PopularityRanker().fit(Interactions(np.zeros(2), np.array([0, 1]), np.ones(2), num_items=3))
    old = {
        "history_items": np.array([[1]]),
        "history_weights": np.ones((1, 1)),
        "history_mask": np.ones((1, 1), bool),
    }
    with pytest.raises(TypeError, match=r"HistoryBatch\.from_arrays"):
        ranker.scores(old)
    assert ranker.scores(HistoryBatch.from_arrays(**old)).shape == (1, 3)


def test_time_gap_buckets_by_hand_for_both_alignments() -> None:
    day = 86_400.0
    times = np.array(
        [
            [
                100.0,
                100.0,
                160.0,
                160.0 + day,
                160.0 + 40 * day,
                0.0,
            ],  # same, 1 min, 1 day, 40 days, then back
            [np.nan, 0.0, 0.0, 3 * day, 3 * day + 3600.0, 3 * day + 3601.0],  # unknown first time
        ]
    )
    mask = np.array([[True] * 6, [False, True, True, True, True, True]])  # row 1 right-aligned, 1 padding
    assert time_gap_buckets(times, mask).tolist() == [[0, 1, 2, 3, 6, 0], [0, 0, 1, 4, 2, 2]]
    assert time_gap_buckets(np.zeros((2, 1)), np.ones((2, 1), bool)).tolist() == [[0], [0]]


def test_gathered_histories_and_sequence_windows_carry_time_gaps() -> None:
    events = event_log()  # one event a second: gap bucket 2 (up to an hour) between a buyer's events
    batch = HistoryDataset(events, np.array([2, 4]), 100, WEIGHTS).__getitems__([0, 1])
    assert batch.history_gaps.tolist() == [[0, 2], [0, 0]]  # a history's oldest event and padding: 0
    windows = SequenceDataset(events, build_windows(events, np.array([1, 2, 4]), 4), WEIGHTS)
    sequences = windows.__getitems__(list(range(len(windows))))
    # windows hold the targets' histories: buyer a's events 0-1, buyer b's event 3 then padding
    assert sequences.items.tolist() == [[0, 1], [3, 0]] and sequences.gaps.tolist() == [[0, 2], [0, 0]]
