"""Sequence windows (every next-item target of a buyer in one causal pass), typed batches, config objects,
full vs sampled softmax, and text retention."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from twotower.assembly import RUNTIME_ARGS
from twotower.config import ConfigError, validate_config
from twotower.data.batches import SequenceBatch, SequenceDataset, build_windows
from twotower.data.sequences import EventLog, gather_histories
from twotower.model.buyer_tower import BuyerTower
from twotower.model.retention import retention_queries, text_retention


def _events(lengths: list[int], same_time_pairs: bool = True) -> EventLog:
    """Buyers with the given numbers of events; with same_time_pairs, events 2k and 2k+1 share a timestamp."""
    buyer = np.concatenate([np.full(n, b, dtype=np.int32) for b, n in enumerate(lengths)])
    timestamp = np.concatenate([np.arange(n) // (2 if same_time_pairs else 1) for n in lengths]).astype(
        np.int64
    )
    rng = np.random.default_rng(0)
    return EventLog(
        buyer=buyer,
        item=rng.integers(0, 30, len(buyer)).astype(np.int32),
        event=rng.integers(0, 3, len(buyer)).astype(np.int8),
        timestamp=timestamp,
        buyer_ids=[f"b{b}" for b in range(len(lengths))],
    )


@pytest.mark.parametrize("length", [2, 5, 8])
def test_each_target_is_owned_once_and_sees_only_its_history(length):
    events = _events([1, 3, 11, 26])
    targets = np.flatnonzero(events.history_end > events.buyer_start[events.buyer])
    windows = build_windows(events, targets, length)
    owned = np.sort(windows.targets)
    assert np.array_equal(owned, np.sort(targets))
    batch = SequenceDataset(events, windows, np.array([1.0, 5.0, 10.0], np.float32)).__getitems__(
        list(range(len(windows.start)))
    )
    assert isinstance(batch, SequenceBatch) and len(batch) == len(targets)
    for t, w, q in zip(
        windows.targets, batch.query_window.tolist(), batch.query_position.tolist(), strict=True
    ):
        start = windows.start[w]
        assert start + q == events.history_end[t] - 1  # the query is the last event of the history
        assert start >= events.buyer_start[events.buyer[t]]  # same buyer
        history = events.history_end[t] - events.buyer_start[events.buyer[t]]
        assert q + 1 >= min(history, length // 2)  # at least half a window of history when there is one
        assert bool(batch.mask[w, : q + 1].all())
        assert torch.equal(
            batch.items[w, : q + 1], torch.from_numpy(events.item[start : start + q + 1]).long()
        )


def test_sequence_queries_equal_per_target_histories():
    """The buyer tower over a window at a target's query position equals forward() on that target's history."""
    events = _events([9, 14])
    targets = np.flatnonzero(events.history_end > events.buyer_start[events.buyer])
    weights_by_event = np.array([1.0, 5.0, 10.0], np.float32)
    windows = build_windows(events, targets, 100)  # one window per buyer: full histories
    batch = SequenceDataset(events, windows, weights_by_event).__getitems__([0, 1])
    torch.manual_seed(0)
    vectors = F.normalize(torch.randn(30, 16), dim=-1)
    tower = BuyerTower("transformer", 16).eval()
    with torch.no_grad():
        queries = tower.forward_all(vectors[batch.items], batch.weights, batch.mask)[
            batch.query_window, batch.query_position
        ]
        single = gather_histories(events, windows.targets, 100, weights_by_event)
        expected = tower(vectors[single.history_items], single.history_weights, single.history_mask)
    torch.testing.assert_close(queries, expected, atol=1e-5, rtol=1e-4)
    assert torch.equal(batch.target, single.target)


def test_a_misspelled_tower_key_fails_at_start_up_naming_it(tiny_config):
    cfg = tiny_config("+model.item_tower.hiden_dim=3")
    with pytest.raises(ConfigError, match=r"model\.item_tower\.hiden_dim"):
        validate_config(cfg, RUNTIME_ARGS)
    cfg = tiny_config("+model.buyer_tower.aggregation=attention")
    with pytest.raises(ConfigError, match=r"model\.buyer_tower\.aggregation"):
        validate_config(cfg, RUNTIME_ARGS)
    validate_config(tiny_config("model/buyer_tower=transformer"), RUNTIME_ARGS)
    validate_config(tiny_config("model.buyer_tower.aggregation_method=attention"), RUNTIME_ARGS)


def _swap_case(text: str, rng: np.random.Generator) -> str:
    return "".join(c.upper() if rng.random() < 0.5 else c.lower() for c in text)


def test_retention_queries_are_fixed_and_noisy():
    titles = [f"product number {i}" for i in range(50)]
    first, sources = retention_queries(titles, _swap_case, num_queries=20, seed=0)
    again, same = retention_queries(titles, _swap_case, num_queries=20, seed=0)
    assert first == again and np.array_equal(sources, same) and len(set(sources)) == 20
    assert all(q.lower() == titles[s] for q, s in zip(first, sources, strict=True))


def test_text_retention_is_one_for_the_encoder_and_low_for_a_scrambled_tower():
    torch.manual_seed(0)
    catalog = F.normalize(torch.randn(200, 16), dim=-1)
    sources = torch.arange(0, 200, 2)
    queries = F.normalize(catalog[sources] + 0.2 * torch.randn(100, 16), dim=-1)
    same = text_retention(queries, sources, catalog, catalog, lambda x: x)
    assert same.ratio == 1.0 and same.raw_recall > 0.9
    shuffled = catalog[torch.randperm(200)]  # item vectors that forgot which text is which
    assert text_retention(queries, sources, catalog, shuffled, lambda x: x).ratio < 0.2


def test_length_buckets_cover_every_window_once_per_epoch():
    from twotower.data.batches import LengthBucketBatchSampler

    lengths = np.random.default_rng(0).integers(1, 100, 203)
    sampler = LengthBucketBatchSampler(lengths, batch_size=8, pool=4)
    for _ in range(2):
        batches = list(sampler)
        assert len(batches) == len(sampler)
        assert sorted(i for b in batches for i in b) == list(range(203))
    padded = sum(len(b) * lengths[b].max() for b in batches)
    assert padded < 0.8 * sum(len(b) * 99 for b in batches)  # far less padding than random batches would get
