import warnings

import numpy as np
import pandas as pd
import pytest

from twotower.data.catalog import load_catalog
from twotower.data.report import DataReport
from twotower.data.schema import DataValidationError, EventSchema
from twotower.data.sequences import (
    INVALID_TIME,
    MAX_TIME,
    MIN_TIME,
    build_examples,
    gather_histories,
    item_recent_counts,
    item_repeat_counts,
    load_events,
    parse_timestamps,
)


def test_timestamps_in_every_accepted_form():
    values = pd.Series(
        [
            "2024-01-01T00:00:00Z",
            "2024-01-01 03:00:00+03:00",
            "2024-01-01 00:00:00",
            "1704067200",
            "1704067200000",
            "1704067200000000",
            "not-a-date",
            None,
        ]
    )
    micros = parse_timestamps(values)
    expected = 1704067200 * 10**6
    assert micros[:6].tolist() == [expected] * 6
    assert micros[6] == INVALID_TIME and micros[7] == INVALID_TIME
    as_datetimes = parse_timestamps(pd.Series(pd.to_datetime(["2024-01-01T00:00:00Z"])))
    assert as_datetimes.tolist() == [expected]


def test_out_of_range_timestamps_are_invalid_without_platform_casts():
    """inf/1e300 used to go through a float -> int64 cast whose result differs by CPU (INT64_MIN on x86,
    saturated on ARM, so kept there) and years past 2262 were kept although pandas cannot hold them."""
    values = pd.Series(
        ["inf", "-inf", "1e300", "-1e300", "99999999999999999999999", "1e18", "-1e17", "9999-01-01T00:00:00Z"]
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "invalid value encountered in cast"
        micros = parse_timestamps(values)
        numbers = parse_timestamps(pd.Series([np.inf, 1e300, 2**62, 1704067200.0]))
    assert micros.tolist() == [INVALID_TIME] * len(values)
    assert numbers.tolist() == [INVALID_TIME] * 3 + [1704067200 * 10**6]
    edges = parse_timestamps(
        pd.Series(["2262-04-11T00:00:00Z", "2262-04-12T00:00:00Z", "-86400", "1677-09-22"])
    )
    assert MIN_TIME < edges[3] < edges[2] < edges[0] < MAX_TIME and edges[1] == INVALID_TIME
    assert edges[2] == -86400 * 10**6


def test_out_of_range_timestamps_are_counted_drops(tiny_data, tmp_path):
    events = pd.read_csv(tiny_data["events"], dtype=str, keep_default_na=False)
    events.loc[0, "created_at"], events.loc[1, "created_at"] = "inf", "1e300"
    path = tmp_path / "events.csv"
    events.to_csv(path, index=False)
    report = DataReport()
    load_events(path, load_catalog(tiny_data["products"]), report=report, show_progress=False)
    assert report.dropped["events.bad_timestamp"] == 1 + 2


def test_bad_rows_are_dropped_and_counted_once(tiny_data):
    report = DataReport()
    catalog = load_catalog(tiny_data["products"], report=report)
    events = load_events(tiny_data["events"], catalog, report=report, show_progress=False)
    assert report.rows_read["events"] == 13
    assert {k: v for k, v in report.dropped.items() if k.startswith("events.")} == {
        "events.unknown_product_id": 1,
        "events.unknown_event_name": 1,
        "events.bad_timestamp": 1,
        "events.missing_buyer_id": 1,
        "events.missing_product_id": 1,
        "events.exact_duplicate": 1,
    }
    assert len(events) == 13 - 6 == report.events_kept
    assert events.buyer_ids == ["u1", "u2"]
    # the order on the duplicate id counts for its canonical product (p1 = item 0)
    u1 = slice(events.buyer_start[0], events.buyer_start[1])
    assert events.item[u1].tolist() == [0, 1, 0, 3] and events.event[u1].tolist() == [0, 1, 2, 2]
    assert np.all(np.diff(events.timestamp[u1]) > 0)
    assert "dropped" in report.summary() and "events.bad_timestamp=1" in report.summary()


def test_chunked_reading_equals_whole_reading(tiny_data):
    catalog = load_catalog(tiny_data["products"])
    whole = load_events(tiny_data["events"], catalog, show_progress=False)
    chunked = load_events(tiny_data["events"], catalog, chunksize=2, show_progress=False)
    for name in ("buyer", "item", "event", "timestamp"):
        np.testing.assert_array_equal(getattr(whole, name), getattr(chunked, name))
    assert whole.buyer_ids == chunked.buyer_ids


def test_parquet_file_and_directory_of_parts_equal_csv(tiny_data, tmp_path):
    catalog = load_catalog(tiny_data["products"])
    frame = pd.read_csv(tiny_data["events"], dtype=str, keep_default_na=False)
    frame.to_parquet(tmp_path / "events.parquet")
    parts = tmp_path / "events_parts"
    parts.mkdir()
    frame.iloc[:5].to_parquet(parts / "part-0000.parquet")
    frame.iloc[5:].to_parquet(parts / "part-0001.parquet")
    csv = load_events(tiny_data["events"], catalog, show_progress=False)
    for source in (tmp_path / "events.parquet", parts):
        other = load_events(source, catalog, show_progress=False)
        np.testing.assert_array_equal(csv.item, other.item)
        np.testing.assert_array_equal(csv.timestamp, other.timestamp)


def test_missing_events_file_and_no_usable_rows(tiny_data, tmp_path):
    catalog = load_catalog(tiny_data["products"])
    with pytest.raises(DataValidationError, match="no such file"):
        load_events(tmp_path / "nope.csv", catalog)
    bad = tmp_path / "bad.csv"
    bad.write_text("user_id,item_id,event_type,timestamp\nu1,p1,scroll,2024-01-01\n", encoding="utf-8")
    with pytest.raises(DataValidationError, match="no usable events.*unknown_event_name"):
        load_events(bad, catalog, show_progress=False)


def _assert_causal(events, positions, max_history=100):
    batch = gather_histories(events, positions, max_history, EventSchema().weight_array)
    for row, position in enumerate(positions):
        buyer = events.buyer[position]
        start, end = events.buyer_start[buyer], events.buyer_start[buyer + 1]
        expected = [p for p in range(start, end) if events.timestamp[p] < events.timestamp[position]][
            -max_history:
        ]
        got = batch.history_items[row][batch.history_mask[row]].tolist()
        assert got == events.item[expected].tolist()
        assert batch.target[row] == events.item[position]


def test_temporal_split_is_causal_and_respects_cuts(tiny_data):
    catalog = load_catalog(tiny_data["products"])
    events = load_events(tiny_data["events"], catalog, show_progress=False)
    examples = build_examples(
        events, EventSchema(), val_cut="2024-01-04T00:00:00Z", test_cut="2024-01-05T12:00:00Z"
    )
    ts = events.timestamp
    val_time = parse_timestamps(pd.Series(["2024-01-04T00:00:00Z"]))[0]
    test_time = parse_timestamps(pd.Series(["2024-01-05T12:00:00Z"]))[0]
    assert np.all(ts[examples.positions["train"]] < val_time)
    assert np.all((ts[examples.positions["val"]] >= val_time) & (ts[examples.positions["val"]] < test_time))
    assert np.all(ts[examples.positions["test"]] >= test_time)
    assert sum(len(p) for p in examples.positions.values()) > 0
    for positions in examples.positions.values():
        _assert_causal(events, positions)
    np.testing.assert_array_equal(examples.train_events, ts < val_time)


def test_same_timestamp_events_are_not_history():
    from twotower.data.sequences import EventLog

    events = EventLog(
        buyer=np.array([0, 0, 0, 0], np.int32),
        item=np.array([5, 6, 7, 8], np.int32),
        event=np.zeros(4, np.int8),
        timestamp=np.array([1, 2, 2, 3], np.int64),
        buyer_ids=["u"],
    )
    batch = gather_histories(events, np.array([1, 2, 3]), 10, EventSchema().weight_array)
    assert batch.history_items[0][batch.history_mask[0]].tolist() == [5]
    assert batch.history_items[1][batch.history_mask[1]].tolist() == [5]  # 6 shares the timestamp
    assert batch.history_items[2][batch.history_mask[2]].tolist() == [5, 6, 7]


def test_item_repeat_and_recent_counts_by_hand():
    from twotower.data.sequences import EventLog

    day = 86_400 * 10**6
    # buyer 0: item 1 on days 0, 0 (same basket: not a repeat), 5 and 40; item 2 on day 40
    # buyer 1: item 1 on day 50 (its first time: not a repeat), item 2 on days 10 and 60 (60 is masked out)
    events = EventLog(
        buyer=np.array([0, 0, 0, 0, 0, 1, 1, 1], np.int32),
        item=np.array([1, 1, 1, 1, 2, 2, 1, 2], np.int32),
        event=np.zeros(8, np.int8),
        timestamp=np.array([0, 0, 5, 40, 40, 10, 50, 60], np.int64) * day,
        buyer_ids=["a", "b"],
    )
    mask = np.array([True] * 7 + [False])
    np.testing.assert_array_equal(item_repeat_counts(events, mask, 4), [0, 2, 0, 0])
    np.testing.assert_array_equal(item_repeat_counts(events, np.ones(8, bool), 4), [0, 2, 1, 0])
    # the last 30 days before the newest masked event (day 50): days 40 and 50
    np.testing.assert_array_equal(item_recent_counts(events, mask, 4), [0, 2, 1, 0])
    np.testing.assert_array_equal(item_recent_counts(events, np.zeros(8, bool), 4), [0, 0, 0, 0])


def test_max_history_keeps_the_most_recent_and_weights_follow_events():
    from twotower.data.sequences import EventLog

    events = EventLog(
        buyer=np.zeros(5, np.int32),
        item=np.arange(5, dtype=np.int32),
        event=np.array([0, 1, 2, 0, 0], np.int8),
        timestamp=np.arange(5, dtype=np.int64),
        buyer_ids=["u"],
    )
    batch = gather_histories(events, np.array([4]), 3, EventSchema().weight_array)
    assert batch.history_items[0].tolist() == [1, 2, 3]
    assert batch.history_weights[0].tolist() == [5.0, 10.0, 1.0]
    assert batch.history_mask.all()


def test_leave_last_out_split(tiny_data):
    catalog = load_catalog(tiny_data["products"])
    events = load_events(tiny_data["events"], catalog, show_progress=False)
    examples = build_examples(events, EventSchema(), method="leave_last_out")
    for buyer in range(len(events.buyer_ids)):
        start, end = events.buyer_start[buyer], events.buyer_start[buyer + 1]
        mine = {s: [p for p in examples.positions[s] if start <= p < end] for s in ("train", "val", "test")}
        assert len(mine["test"]) == 1 and mine["test"][0] == end - 1
        assert all(p < mine["test"][0] for p in mine["train"] + mine["val"])
        assert all(p < mine["val"][0] for p in mine["train"])
    for positions in examples.positions.values():
        _assert_causal(events, positions)


def test_target_event_types_and_bad_split_settings(tiny_data):
    catalog = load_catalog(tiny_data["products"])
    events = load_events(tiny_data["events"], catalog, show_progress=False)
    purchases = build_examples(
        events, EventSchema(), target_event_types=["purchase"], val_cut=0.5, test_cut=0.9
    )
    for positions in purchases.positions.values():
        assert np.all(events.event[positions] == 2)
    with pytest.raises(DataValidationError, match="quantile"):
        build_examples(events, EventSchema(), val_cut=1.5)
    with pytest.raises(DataValidationError, match="unknown"):
        build_examples(events, EventSchema(), method="random")


def test_trim_keeps_only_the_longest_history_in_the_batch():
    from twotower.data.sequences import EventLog

    events = EventLog(
        buyer=np.array([0, 0, 0, 1, 1], np.int32),
        item=np.arange(5, dtype=np.int32),
        event=np.zeros(5, np.int8),
        timestamp=np.arange(5, dtype=np.int64),
        buyer_ids=["a", "b"],
    )
    full = gather_histories(events, np.array([2, 4]), 100, EventSchema().weight_array)
    trimmed = gather_histories(events, np.array([2, 4]), 100, EventSchema().weight_array, trim=True)
    assert full.history_items.shape == (2, 100) and trimmed.history_items.shape == (2, 2)
    for got, want in [
        (trimmed.history_items, full.history_items),
        (trimmed.history_weights, full.history_weights),
        (trimmed.history_mask, full.history_mask),
    ]:
        np.testing.assert_array_equal(got, want[:, -2:])
    np.testing.assert_array_equal(trimmed.target, full.target)


def test_keep_buyers_takes_a_seeded_hashed_share_and_renumbers():
    from twotower.data.sequences import EventLog

    buyers = 400
    ids = [f"buyer-{i}" for i in range(buyers)]
    buyer = np.repeat(np.arange(buyers, dtype=np.int32), 3)
    events = EventLog(
        buyer=buyer,
        item=(np.arange(len(buyer)) % 7).astype(np.int32),
        event=np.zeros(len(buyer), np.int8),
        timestamp=np.tile(np.array([1, 2, 3], np.int64), buyers),
        buyer_ids=ids,
    )
    kept = events.keep_buyers(0.25)
    assert 0.15 * buyers < len(kept.buyer_ids) < 0.35 * buyers
    assert len(kept) == 3 * len(kept.buyer_ids)  # whole buyers: every event of a kept buyer stays
    assert np.array_equal(np.unique(kept.buyer), np.arange(len(kept.buyer_ids)))  # renumbered densely
    for b, buyer_id in enumerate(kept.buyer_ids):  # each kept buyer keeps its own events, in order
        old = ids.index(buyer_id)
        assert kept.item[kept.buyer == b].tolist() == events.item[events.buyer == old].tolist()
    # the same buyers whatever the order of the file; another seed takes others; 1 keeps everything
    shuffled = EventLog(buyer, events.item, events.event, events.timestamp, ids[::-1])
    assert set(shuffled.keep_buyers(0.25).buyer_ids) == set(kept.buyer_ids)
    assert set(events.keep_buyers(0.25, seed=1).buyer_ids) != set(kept.buyer_ids)
    assert events.keep_buyers(1.0) is events
    with pytest.raises(ValueError, match="buyer_fraction"):
        events.keep_buyers(0.0)


def test_datamodule_buyer_fraction_counts_the_dropped_events(tmp_path):
    from twotower.data.datamodule import TwoTowerDataModule

    products = pd.DataFrame({"id": ["a", "b", "c"], "title": ["x", "y", "z"], "description": ["", "", ""]})
    products.to_csv(tmp_path / "products.csv", index=False)
    rows = [
        (f"u{b}", "abc"[t], "purchase", f"2024-01-{t + 1:02d}T00:00:00Z")
        for b in range(200)
        for t in range(3)
    ]
    pd.DataFrame(rows, columns=["distinct_id", "product_id", "event_name", "created_at"]).to_csv(
        tmp_path / "events.csv", index=False
    )

    def setup(fraction):
        dm = TwoTowerDataModule(
            str(tmp_path / "events.csv"), str(tmp_path / "products.csv"), buyer_fraction=fraction
        )
        dm.setup("fit")
        return dm

    full, part = setup(1.0), setup(0.3)
    assert len(full.events) == 600 and 0.2 * 600 < len(part.events) < 0.4 * 600
    assert part.report.dropped["events.buyer_fraction"] == len(full.events) - len(part.events)
    assert "events.buyer_fraction" not in full.report.dropped
    with pytest.raises(ValueError, match="buyer_fraction"):
        TwoTowerDataModule("e.csv", "p.csv", buyer_fraction=1.5)
