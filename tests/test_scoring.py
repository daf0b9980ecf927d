"""The served scoring function on tiny hand-checked data: exclusion, repeat blending, ties, both input paths."""

from __future__ import annotations

import json
from dataclasses import replace
from types import SimpleNamespace

import numpy as np
import pytest

from twotower.scoring import (
    BUYER_ITEM_FEATURES,
    HISTORY_SIMILARITY_TEMPERATURE,
    ITEM_FEATURES,
    REPEAT_COEFFICIENTS,
    REPEAT_FEATURES,
    REPEAT_HALF_LIVES,
    REPEAT_PRIOR_STRENGTH,
    History,
    ScoringSettings,
    choose_settings,
    history_similarity,
    item_features,
    rank_candidates,
    rank_dense,
    repeat_features,
    repeat_scores,
    settings_grid,
    top_candidates,
)

DAY = 86_400.0
SCORES = np.array([[0.9, 0.8, 0.1, 0.0]], dtype=np.float32)
NO_BOOST = [0.0] * len(ITEM_FEATURES)  # learned coefficients: no catalog boost for new items


def history(items, times_days=None, weights=None, now_days=None) -> History:
    items = np.array([items])
    return History(
        items=items,
        mask=np.ones(items.shape, dtype=bool),
        weights=None if weights is None else np.array([weights], dtype=np.float32),
        times=None if times_days is None else np.array([times_days], dtype=np.float64) * DAY,
        now=None if now_days is None else np.array([now_days * DAY]),
    )


def test_exclusion_never_returns_history_items_and_pads_with_minus_one() -> None:
    ids, scores = rank_dense(SCORES, history([0, 2]), ScoringSettings(exclude_seen=True), k=3)
    np.testing.assert_array_equal(ids, [[1, 3, -1]])  # only two unseen items exist
    assert np.isneginf(scores[0, 2])
    # padding positions (mask False) are not history: item 0 below is padding and stays a candidate
    padded = History(np.array([[0, 2]]), np.array([[False, True]]))
    np.testing.assert_array_equal(rank_dense(SCORES, padded, ScoringSettings(), k=2)[0], [[0, 1]])


def test_without_repeat_weight_the_order_is_the_models() -> None:
    settings = ScoringSettings(exclude_seen=False, repeat_weight=0.0)
    np.testing.assert_array_equal(rank_dense(SCORES, history([3, 2]), settings, k=4)[0], [[0, 1, 2, 3]])


def test_repeat_score_blends_recency_count_and_event_weight() -> None:
    # now = day 30: item 2 bought today (r = 1), item 3 bought 30 days ago (half-life 30: r = 0.5)
    h = history([3, 2], times_days=[0, 30], now_days=30)
    np.testing.assert_allclose(repeat_scores(h, 30.0), [[0.5, 1.0]])
    # final = score / top score + w * r / max r:  w = 0.5 -> 0: 1, 1: .889, 2: .111 + .5, 3: 0 + .25
    small = ScoringSettings(exclude_seen=False, repeat_weight=0.5, half_life_days=30.0)
    np.testing.assert_array_equal(rank_dense(SCORES, h, small, k=4)[0], [[0, 1, 2, 3]])
    # w = 2 -> 2: 2.111, 0: 1, 3: 1 (tie with 0: the lower index first), 1: .889
    large = ScoringSettings(exclude_seen=False, repeat_weight=2.0, half_life_days=30.0)
    ids, scores = rank_dense(SCORES, h, large, k=4)
    np.testing.assert_array_equal(ids, [[2, 0, 3, 1]])
    np.testing.assert_allclose(scores, [[0.1 / 0.9 + 2, 1, 1, 0.8 / 0.9]], rtol=1e-6)
    # count: item 3 bought twice at the same age doubles its repeat score; no decay: counts only
    np.testing.assert_allclose(repeat_scores(history([3, 3, 2], [0, 0, 30], now_days=30), 30.0), [[1, 1, 1]])
    np.testing.assert_allclose(repeat_scores(history([3, 3, 2], [0, 0, 30]), None), [[2, 2, 1]])
    # event weight: a purchase (10) outweighs a recent view (1), unless event weighting is off
    weighted = history([3, 2], times_days=[0, 30], weights=[10.0, 1.0], now_days=30)
    np.testing.assert_allclose(repeat_scores(weighted, 30.0), [[5.0, 1.0]])
    np.testing.assert_allclose(repeat_scores(weighted, 30.0, event_weighted=False), [[0.5, 1.0]])


def test_unknown_times_and_missing_now() -> None:
    # NaN time: no decay for that event; no `now`: the latest known history time
    h = history([1, 2], times_days=[np.nan, 10])
    np.testing.assert_allclose(repeat_scores(h, 1.0), [[1.0, 1.0]])
    h = history([1, 2], times_days=[9, 10])
    np.testing.assert_allclose(repeat_scores(h, 1.0), [[0.5, 1.0]])


def test_exclusion_wins_over_repeat_weight() -> None:
    settings = ScoringSettings(exclude_seen=True, repeat_weight=100.0)
    assert not settings.uses_repeat
    np.testing.assert_array_equal(rank_dense(SCORES, history([2]), settings, k=2)[0], [[0, 1]])


def test_ties_are_deterministic_lowest_index_first() -> None:
    flat = np.zeros((2, 6), dtype=np.float32)
    np.testing.assert_array_equal(top_candidates(flat, 3), [[0, 1, 2], [0, 1, 2]])
    ids = rank_dense(flat, History(np.array([[4], [0]]), np.ones((2, 1), bool)), ScoringSettings(), k=3)[0]
    np.testing.assert_array_equal(ids, [[0, 1, 2], [1, 2, 3]])
    scores = np.array([[0.5, 1.0, 0.5, 1.0, 0.5]], dtype=np.float32)
    np.testing.assert_array_equal(top_candidates(scores, 3), [[0, 1, 3]])  # 1 and 3, then the first 0.5


def test_candidate_path_equals_dense_path() -> None:
    """What /retrieve computes from an index's top candidates equals what evaluate computes from all scores."""
    rng = np.random.default_rng(0)
    batch, items, width, k = 64, 40, 6, 5
    dense = rng.normal(size=(batch, items)).astype(np.float32)
    dense[:, :5] = np.round(dense[:, :5])  # some exact ties
    h = History(
        items=rng.integers(0, items, size=(batch, width)),
        mask=rng.random((batch, width)) < 0.8,
        weights=rng.choice([1.0, 5.0, 10.0], size=(batch, width)).astype(np.float32),
        times=rng.uniform(0, 100, size=(batch, width)) * DAY,
        now=np.full(batch, 100 * DAY),
    )
    history_scores = np.where(h.mask, np.take_along_axis(dense, np.where(h.mask, h.items, 0), 1), 0.0)
    for settings in settings_grid(
        ScoringSettings(),
        {"exclude_seen": [True, False], "repeat_weight": [0.0, 0.3, 5.0], "max_repeat_items": [None, 0, 2]},
    ):
        expected = rank_dense(dense, h, settings, k)
        # an index answer: the k + L best (sorted by score, as FAISS returns them), padded with -1
        ids = top_candidates(dense, k + width)
        order = np.argsort(-np.take_along_axis(dense, ids, 1), axis=1, kind="stable")
        ids = np.take_along_axis(ids, order, 1)
        scores = np.take_along_axis(dense, ids, 1)
        ids = np.pad(ids, ((0, 0), (0, 2)), constant_values=-1)
        scores = np.pad(scores, ((0, 0), (0, 2)), constant_values=-np.inf)
        got = rank_candidates(ids, scores, h, history_scores, settings, k)
        np.testing.assert_array_equal(got[0], expected[0], err_msg=str(settings))
        np.testing.assert_allclose(got[1], expected[1], err_msg=str(settings))


def test_history_items_outside_the_candidates_still_get_their_repeat_score() -> None:
    # the index returned only items 0 and 1; item 3 (score 0) is in the history and repeats strongly
    ids, scores = np.array([[0, 1]]), np.array([[0.9, 0.8]], dtype=np.float32)
    settings = ScoringSettings(exclude_seen=False, repeat_weight=2.0, half_life_days=None)
    got = rank_candidates(ids, scores, history([3]), np.array([[0.0]]), settings, k=3)[0]
    np.testing.assert_array_equal(got, [[3, 0, 1]])


def test_settings_serialize_and_validate() -> None:
    settings = ScoringSettings(exclude_seen=False, repeat_weight=0.3, half_life_days=30.0)
    assert ScoringSettings.from_dict(json.loads(json.dumps(settings.to_dict()))) == settings
    with pytest.raises(ValueError, match="unknown scoring settings"):
        ScoringSettings.from_dict({"exclude": True})
    with pytest.raises(ValueError, match="repeat_weight"):
        ScoringSettings(repeat_weight=-1.0)
    with pytest.raises(ValueError, match="half_life_days"):
        ScoringSettings(half_life_days=0.0)


def test_grid_drops_equivalent_settings_and_choice_prefers_the_first_best() -> None:
    grid = settings_grid(
        ScoringSettings(),
        {"exclude_seen": [True, False], "repeat_weight": [0.0, 1.0], "half_life_days": [7.0, 90.0]},
    )
    # excluded: one setting; allowed without repeat: one; allowed with repeat: one per half-life
    assert len(grid) == 4
    scores = {0: 0.1, 1: 0.3, 2: 0.3, 3: 0.2}
    best, trace = choose_settings(grid, lambda s: scores[grid.index(s)])
    assert best == grid[1] and [t["score"] for t in trace] == [0.1, 0.3, 0.3, 0.2]


def test_rows_without_known_times_count_without_decay_and_without_warnings() -> None:
    h = History(np.array([[1, 1], [2, 3]]), np.ones((2, 2), bool), times=np.full((2, 2), np.nan))
    with np.errstate(all="raise"):
        np.testing.assert_allclose(repeat_scores(h, 7.0), [[2, 2], [1, 1]])


def test_max_repeat_items_gives_the_other_slots_to_new_items() -> None:
    # history 3, 2, 1 all repeat strongly (weight 1000): uncapped they fill the top 3 slots
    scores = np.array([[0.9, 0.8, 0.7, 0.6, 0.5, 0.4]], dtype=np.float32)
    h = history([3, 2, 1], times_days=[0, 10, 20], now_days=20)
    settings = ScoringSettings(exclude_seen=False, repeat_weight=1000.0, half_life_days=10.0)
    ids = rank_dense(scores, h, settings, k=4)[0]
    np.testing.assert_array_equal(ids, [[1, 2, 3, 0]])  # newest history first (r = 1, .5, .25), then 0
    # cap 2: the two best history items (1, 2), then the best new items (0, 4); 3 is dropped
    capped = ScoringSettings(
        exclude_seen=False, repeat_weight=1000.0, half_life_days=10.0, max_repeat_items=2
    )
    np.testing.assert_array_equal(rank_dense(scores, h, capped, k=4)[0], [[1, 2, 0, 4]])
    # without a repeat score the cap still applies: model order 0, 1, 2, 3, 4, at most one history item
    plain = ScoringSettings(exclude_seen=False, max_repeat_items=1)
    np.testing.assert_array_equal(rank_dense(scores, h, plain, k=4)[0], [[0, 1, 4, 5]])
    # cap 0 = exclusion; a cap above the history width changes nothing
    zero = ScoringSettings(exclude_seen=False, repeat_weight=1000.0, max_repeat_items=0)
    np.testing.assert_array_equal(rank_dense(scores, h, zero, k=3)[0], [[0, 4, 5]])
    wide = ScoringSettings(exclude_seen=False, repeat_weight=1000.0, half_life_days=10.0, max_repeat_items=7)
    np.testing.assert_array_equal(rank_dense(scores, h, wide, k=4)[0], ids)


def test_max_repeat_items_pads_when_the_catalog_runs_out() -> None:
    # 4 items, history holds 3 of them, cap 1: one history item + the one new item, then -1
    h = history([1, 2, 3])
    capped = ScoringSettings(exclude_seen=False, repeat_weight=1.0, half_life_days=None, max_repeat_items=1)
    ids, scores = rank_dense(SCORES, h, capped, k=4)
    np.testing.assert_array_equal(ids[:, :2], [[1, 0]])
    np.testing.assert_array_equal(ids[:, 2:], [[-1, -1]])
    assert np.isneginf(scores[0, 2:]).all()


def test_max_repeat_items_validates_and_dedupes_in_the_grid() -> None:
    with pytest.raises(ValueError, match="max_repeat_items"):
        ScoringSettings(max_repeat_items=-1)
    with pytest.raises(ValueError, match="max_repeat_items"):
        ScoringSettings(max_repeat_items=2.5)  # type: ignore[arg-type]
    grid = settings_grid(
        ScoringSettings(),
        {"exclude_seen": [True, False], "repeat_weight": [0.0], "max_repeat_items": [None, 3]},
    )
    # exclusion ignores the cap; without a repeat weight the cap still changes the list
    assert [(s.exclude_seen, s.max_repeat_items) for s in grid] == [(True, None), (False, None), (False, 3)]


# -- the learned repeat score ---------------------------------------------------------------------------------


def test_repeat_features_by_hand() -> None:
    # item 3: a view 10 days before the newest event and a cart (weight 5) at it; item 2: one view at it
    h = history([3, 3, 2], [0, 10, 10], weights=[1.0, 5.0, 1.0])
    f = repeat_features(h)[0]
    assert f.shape == (3, len(REPEAT_FEATURES))
    expected_3 = [1 * 0.5 ** (10 / hl) + 5 for hl in REPEAT_HALF_LIVES] + [2, 6, 0]
    buyer = len(BUYER_ITEM_FEATURES)
    np.testing.assert_allclose(f[0, :buyer], np.log1p(expected_3), rtol=1e-6)
    np.testing.assert_array_equal(f[:, buyer:], 0)  # no catalog statistics given
    np.testing.assert_allclose(f[1], f[0])  # every position of an item carries the item's features
    np.testing.assert_allclose(f[2, :buyer], np.log1p([1, 1, 1, 1, 1, 1, 0]), rtol=1e-6)
    # the catalog's per-item features follow each position's item
    catalog = np.arange(4 * len(ITEM_FEATURES), dtype=np.float32).reshape(4, len(ITEM_FEATURES))
    with_catalog = repeat_features(h, catalog)[0]
    np.testing.assert_array_equal(with_catalog[:, buyer:], catalog[[3, 3, 2]])
    np.testing.assert_array_equal(with_catalog[:, :buyer], f[:, :buyer])
    # ages run from the newest event, not from "now": the service (no "now") and evaluate (the target's time)
    # see the same features
    later = history([3, 3, 2], [0, 10, 10], weights=[1.0, 5.0, 1.0], now_days=50)
    np.testing.assert_allclose(repeat_features(later), repeat_features(h))
    # the days since an item's last occurrence
    days = REPEAT_FEATURES.index("days_since_last")
    np.testing.assert_allclose(repeat_features(history([5, 6], [0, 4]))[0, 0, days], np.log1p(4), rtol=1e-6)


def test_item_features_by_hand() -> None:
    # item 0: 10 sales, 8 of them repeats, 2 lately; item 1: 2 sales, 0 repeats; item 2: never sold
    catalog = SimpleNamespace(
        popularity=np.array([10.0, 2.0, 0.0]),
        repeats=np.array([8.0, 0.0, 0.0]),
        recent_popularity=np.array([2.0, 0.0, 0.0]),
    )
    f = item_features(catalog)
    assert f.shape == (3, len(ITEM_FEATURES)) and f.dtype == np.float32
    np.testing.assert_allclose(f[:, 0], np.log1p([10, 2, 0]), rtol=1e-6)
    np.testing.assert_allclose(f[:, 2], np.log1p([2, 0, 0]), rtol=1e-6)
    prior, strength = 8 / 12, REPEAT_PRIOR_STRENGTH
    share = (np.array([8, 0, 0]) + strength * prior) / (np.array([10, 2, 0]) + strength)
    np.testing.assert_allclose(f[:, 1], np.log(share / (1 - share)), rtol=1e-5)
    assert f[0, 1] > f[2, 1] > f[1, 1]  # a staple, the catalog's mean (no sales), a one-off
    # a catalog without statistics (an older bundle): finite, constant columns
    empty = item_features(
        SimpleNamespace(popularity=np.zeros(3), repeats=np.zeros(3), recent_popularity=np.zeros(3))
    )
    assert np.isfinite(empty).all() and (empty == empty[0]).all()
    # hostile counts (a hand-edited catalog.parquet): finite features, bad values count as 0
    hostile = SimpleNamespace(
        popularity=np.array([np.nan, np.inf, -3.0]),
        repeats=np.array([1.0, np.nan, 5.0]),
        recent_popularity=np.array([-np.inf, 2.0, np.nan]),
    )
    assert np.isfinite(item_features(hostile)).all()


def test_learned_score_reads_the_catalog_features() -> None:
    # two history items with the same buyer history; the catalog says item 3 sells lately, item 2 does not
    scores = np.array([[0.9, 0.5, 0.3, 0.3]], dtype=np.float32)
    h = history([2, 3], [0, 0])
    coefficients = [0.0] * len(REPEAT_COEFFICIENTS)
    coefficients[REPEAT_COEFFICIENTS.index("item_log_recent_count")] = 2.0
    settings = ScoringSettings(exclude_seen=False, repeat_coefficients=coefficients)
    catalog = np.zeros((4, len(ITEM_FEATURES)), np.float32)
    catalog[3, ITEM_FEATURES.index("item_log_recent_count")] = 1.0
    ids, _ = rank_candidates(
        np.array([[0, 1]]), scores[:, :2], h, scores[:, 2:], settings, 2, catalog_features=catalog
    )
    np.testing.assert_array_equal(ids, [[3, 0]])  # 2.0 beats the best new item (1.0 after rescaling)
    ids, _ = rank_candidates(np.array([[0, 1]]), scores[:, :2], h, scores[:, 2:], settings, 2)
    np.testing.assert_array_equal(ids, [[0, 1]])  # without them: history items score 0, below new items


def recent_sales_boost(
    recent: dict[int, float], num_items: int, boost_pool: int = 50
) -> tuple[ScoringSettings, np.ndarray]:
    """Learned settings with no history term (bias -10) and new items boosted by their recent sales (weight 1),
    and a catalog whose items sell lately as ``recent`` says (row -> log recent count)."""
    coefficients = [0.0] * len(REPEAT_COEFFICIENTS)
    coefficients[REPEAT_COEFFICIENTS.index("bias")] = -10.0
    coefficients[REPEAT_COEFFICIENTS.index("new_item_log_recent_count")] = 1.0
    catalog = np.zeros((num_items, len(ITEM_FEATURES)), np.float32)
    catalog[list(recent), ITEM_FEATURES.index("item_log_recent_count")] = list(recent.values())
    settings = ScoringSettings(exclude_seen=False, repeat_coefficients=coefficients, boost_pool=boost_pool)
    return settings, catalog


def test_learned_score_boosts_new_items_by_the_catalog_features() -> None:
    # no history term at all (bias -10): the new items' order is their score plus the catalog's boost
    scores = np.array([[0.9, 0.8, 0.5, 0.0]], dtype=np.float32)
    h = history([3], [0])
    settings, catalog = recent_sales_boost({2: 0.5}, 4)  # item 2 sells lately: 0.56 + 0.5 > 1.0
    ids, _ = rank_dense(scores, h, settings, k=3)
    np.testing.assert_array_equal(ids, [[0, 1, 2]])
    ids, _ = rank_candidates(
        np.array([[0, 1, 2]]), scores[:, :3], h, scores[:, 3:], settings, 3, catalog_features=catalog
    )
    np.testing.assert_array_equal(ids, [[2, 0, 1]])


def test_new_item_boost_reorders_only_the_pools_best_new_items() -> None:
    # the service asks an index for boost_pool + L candidates, evaluate ranks densely: a boosted item outside
    # the pool's best new ones must not enter either list, or the two would differ
    scores = np.array([[0.9, 0.8, 0.7, 0.1, 0.0]], dtype=np.float32)
    h = history([4], [0])
    settings, catalog = recent_sales_boost({1: 0.5, 3: 5.0}, 5, boost_pool=2)
    lists = [
        rank_candidates(ids, scores[:, ids[0]], h, scores[:, 4:], settings, 2, catalog_features=catalog)[0]
        for ids in (np.array([[0, 1, 2]]), np.array([[0, 1, 2, 3]]))  # pool + L candidates, and more
    ]
    np.testing.assert_array_equal(lists[0], [[1, 0]])  # item 1's boost reorders the two best new items
    np.testing.assert_array_equal(lists[1], lists[0])  # item 3 (boost 5, 4th by score) stays out
    assert settings.candidates_needed(1) == 2 and settings.candidates_needed(3) == 3
    assert ScoringSettings().candidates_needed(1) == 1  # no boost: k


def test_a_shorter_list_is_a_prefix_of_a_longer_one_under_the_learned_boost() -> None:
    # the service's k=10 list must be the top 10 of evaluate's k=50 list: the pool does not depend on k, and
    # new items beyond it follow the others (item 3: boost 5, but 4th by score; the pool is the 3 best)
    scores = np.array([[0.9, 0.8, 0.7, 0.6, 0.5, 0.0]], dtype=np.float32)
    h = history([5], [0])
    settings, catalog = recent_sales_boost({2: 0.5, 3: 5.0}, 6, boost_pool=3)
    full = rank_dense(scores, h, replace(settings, exclude_seen=True), 5)[0]
    np.testing.assert_array_equal(full, [[0, 1, 2, 3, 4]])  # rank_dense has no catalog: no boost
    lists = [
        rank_candidates(
            np.array([[0, 1, 2, 3, 4]]),
            scores[:, :5],
            h,
            scores[:, 5:],
            settings,
            k,
            catalog_features=catalog,
        )[0][0].tolist()
        for k in (1, 2, 3, 4, 5)
    ]
    assert lists[-1] == [2, 0, 1, 5, 3]  # the pool (boosted 2 first), the history item (bias -10), the rest
    assert all(lists[-1][: len(short)] == short for short in lists)


def test_exclusion_keeps_the_learned_new_item_boost_and_never_returns_history_items() -> None:
    # a shop served without its buyers' own items: history item 3 is out, and the catalog's boost still
    # reorders the k best new items, the same from a dense ranking and from k + L candidates
    scores = np.array([[0.9, 0.8, 0.5, 0.95]], dtype=np.float32)
    h = history([3], [0])
    learned, catalog = recent_sales_boost({2: 0.5}, 4)
    settings = ScoringSettings(exclude_seen=True, repeat_coefficients=learned.repeat_coefficients)
    assert settings.boosted and not settings.learned
    assert settings.describe() == "exclude seen, learned new-item boost"
    ids, _ = rank_candidates(
        np.array([[3, 0, 1, 2]]),
        scores[:, [3, 0, 1, 2]],
        h,
        scores[:, 3:],
        settings,
        3,
        catalog_features=catalog,
    )
    np.testing.assert_array_equal(ids, [[2, 0, 1]])  # 0.5/0.95 + 0.5 beats 0.9/0.95; item 3 never returned
    plain, _ = rank_candidates(
        np.array([[3, 0, 1, 2]]), scores[:, [3, 0, 1, 2]], h, scores[:, 3:], ScoringSettings(), 3,
        catalog_features=catalog,
    )  # fmt: skip
    np.testing.assert_array_equal(plain, [[0, 1, 2]])
    # only the pool's best new items are reordered: with a pool of 2, item 2 (third best) is not lifted
    ids, _ = rank_candidates(
        np.array([[3, 0, 1, 2]]), scores[:, [3, 0, 1, 2]], h, scores[:, 3:], replace(settings, boost_pool=2), 3,
        catalog_features=catalog,
    )  # fmt: skip
    np.testing.assert_array_equal(ids, [[0, 1, 2]])


def test_the_grid_keeps_exclusion_settings_that_differ_in_learned_coefficients() -> None:
    learned, _ = recent_sales_boost({2: 0.5}, 4)
    grid = settings_grid(
        ScoringSettings(exclude_seen=True),
        {"repeat_coefficients": [None, learned.repeat_coefficients], "repeat_weight": [0.0, 1.0]},
    )
    assert [s.boosted for s in grid] == [False, True]


def test_repeat_features_ignore_padding_and_unknown_times() -> None:
    padded = History(np.array([[7, 3, 3]]), np.array([[False, True, True]]), times=np.full((1, 3), np.nan))
    f = repeat_features(padded, np.ones((8, len(ITEM_FEATURES)), np.float32))[0]
    np.testing.assert_array_equal(f[0], 0)  # padding: no features, not even the catalog's
    buyer = len(BUYER_ITEM_FEATURES)
    np.testing.assert_allclose(
        f[1, :buyer], np.log1p([2, 2, 2, 2, 2, 2, 0])
    )  # unknown times: no decay, age 0
    np.testing.assert_array_equal(f[1, buyer:], 1)


def test_learned_score_ranks_history_items_by_their_features_and_keeps_new_items_scores() -> None:
    # history: item 2 once, item 3 three times; the model prefers items 0 and 1 (new) and scores 2 above 3
    scores = np.array([[0.9, 0.5, 0.4, 0.3]], dtype=np.float32)
    h = history([2, 3, 3, 3], [0, 1, 2, 3])
    count_only = [0.0] * len(REPEAT_FEATURES)
    count_only[REPEAT_FEATURES.index("count")] = 5.0
    # count weighs most; score weight 1; bias -5: item 3 (count 3) gets 5 log 4 + 0.33 - 5 = 2.26 > item 0 (1.0)
    # > item 2 (5 log 2 + 0.44 - 5 = -1.1 < item 1's 0.56)
    settings = ScoringSettings(exclude_seen=False, repeat_coefficients=(*count_only, 1.0, -5.0, *NO_BOOST))
    assert settings.learned and not settings.uses_repeat
    np.testing.assert_array_equal(rank_dense(scores, h, settings, k=4)[0], [[3, 0, 1, 2]])
    # exclusion still wins, and the cap still holds
    excluded = ScoringSettings(exclude_seen=True, repeat_coefficients=settings.repeat_coefficients)
    np.testing.assert_array_equal(rank_dense(scores, h, excluded, k=2)[0], [[0, 1]])
    capped = ScoringSettings(
        exclude_seen=False, repeat_coefficients=(*count_only, 1.0, 50.0, *NO_BOOST), max_repeat_items=1
    )
    np.testing.assert_array_equal(rank_dense(scores, h, capped, k=3)[0], [[3, 0, 1]])


def test_learned_settings_validate_and_round_trip_through_json() -> None:
    values = list(range(1, len(REPEAT_COEFFICIENTS) + 1))
    good = ScoringSettings(exclude_seen=False, repeat_coefficients=values)
    assert good.repeat_coefficients == tuple(float(v) for v in values)
    assert ScoringSettings.from_dict(json.loads(json.dumps(good.to_dict()))) == good
    assert "learned" in good.describe()
    # bundles learned before the catalog's item features: those weigh 0, the rest keep their meaning
    legacy = ScoringSettings(exclude_seen=False, repeat_coefficients=[1, 2, 3, 4, 5, 6, 7, 8, 9])
    zeros = [0.0] * len(ITEM_FEATURES)
    assert legacy.repeat_coefficients == (1, 2, 3, 4, 5, 6, 7, *zeros, 8, 9, *zeros)
    assert len(BUYER_ITEM_FEATURES) == 7
    n = len(REPEAT_COEFFICIENTS)
    for bad in ([1.0] * 8, [1.0] * (n - 1) + [float("nan")], [1.0] * (n + 1), "fit", [True] * n, 3.0):
        with pytest.raises(ValueError, match="repeat_coefficients"):
            ScoringSettings(exclude_seen=False, repeat_coefficients=bad)
    # in a grid, learned settings are kept apart from the configured ones
    grid = settings_grid(ScoringSettings(exclude_seen=False), {"repeat_weight": [0.0, 1.0]})
    learned = ScoringSettings(exclude_seen=False, repeat_coefficients=good.repeat_coefficients)
    assert learned not in grid and len(settings_grid(learned, {"repeat_weight": [0.0]})) == 1


# unit item vectors: 0 and 1 orthogonal, 2 between them, 3 next to 0
VECTORS = np.array([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8], [0.995, 0.0998], [0.8, 0.6]], dtype=np.float32)


def test_history_similarity_by_hand() -> None:
    t = HISTORY_SIMILARITY_TEMPERATURE
    h = History(
        items=np.array([[0, 1], [0, 0], [0, 0]]),
        mask=np.array([[True, True], [True, True], [False, False]]),
    )
    ids = np.array([[2, 3, -1], [0, 1, 2], [2, 3, 4]])
    got = history_similarity(VECTORS, h, ids)
    soft = lambda *s: t * np.log(np.sum(np.exp(np.array(s) / t)))  # noqa: E731
    expected = [
        [soft(0.6, 0.8), soft(0.995, 0.0998), 0.0],  # a soft maximum: close to the nearest history item
        [soft(1.0, 1.0), soft(0.0, 0.0), soft(0.6, 0.6)],  # a repeated item counts once per occurrence
        [0.0, 0.0, 0.0],  # no history: nothing to add
    ]
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    assert got[0, 0] == pytest.approx(0.8, abs=0.002)


def test_history_similarity_reorders_only_the_pools_best_new_items() -> None:
    # buyer vector scores: 2 first (between the buyer's items 0 and 1), then 4, then 3 (next to item 0);
    # scores are divided by the best (0.9), then each pool item adds its soft maximum (weight 1)
    scores = np.array([[0.5, 0.5, 0.9, 0.78, 0.8]], dtype=np.float32)
    h = history([0, 1], [0, 1])
    similar = ScoringSettings(exclude_seen=True, history_similarity=1.0, boost_pool=2)
    ids = [
        rank_candidates(c, scores[:, c[0]], h, scores[:, :2], similar, 2, item_vectors=VECTORS)[0]
        for c in (np.array([[2, 4]]), np.array([[2, 4, 3]]))  # pool + L candidates, and more
    ]
    # the pool {2, 4}: 2 (1 + 0.80 = 1.80) before 4 (0.89 + 0.80 = 1.69); item 3 (0.87 + 0.995 = 1.86) would
    # beat both, but it is 3rd by score, outside the pool: the same list from 2 or 3 candidates
    np.testing.assert_array_equal(ids[0], [[2, 4]])
    np.testing.assert_array_equal(ids[1], ids[0])
    wide = replace(similar, boost_pool=3)
    top, _ = rank_candidates(
        np.array([[2, 4, 3]]), scores[:, [2, 4, 3]], h, scores[:, :2], wide, 3, item_vectors=VECTORS
    )
    np.testing.assert_array_equal(top, [[3, 2, 4]])  # a pool of 3: item 3 first
    off = replace(wide, history_similarity=0.0)
    plain, _ = rank_candidates(np.array([[2, 4, 3]]), scores[:, [2, 4, 3]], h, scores[:, :2], off, 3)
    np.testing.assert_array_equal(plain, [[2, 4, 3]])
    assert (
        similar.candidates_needed(1) == 2
        and replace(similar, history_similarity=0.0).candidates_needed(1) == 1
    )


def test_history_similarity_settings_validate_and_round_trip() -> None:
    with pytest.raises(ValueError, match="item vectors"):
        rank_candidates(
            np.array([[2]]), np.array([[0.9]]), history([0], [0]), np.array([[0.5]]),
            ScoringSettings(history_similarity=0.5), 1,
        )  # fmt: skip
    for bad in (-0.1, float("nan"), float("inf"), True, "0.5"):
        with pytest.raises(ValueError, match="history_similarity"):
            ScoringSettings(history_similarity=bad)
    settings = ScoringSettings(exclude_seen=False, repeat_weight=1.0, history_similarity=0.5)
    assert ScoringSettings.from_dict(json.loads(json.dumps(settings.to_dict()))) == settings
    old = {k: v for k, v in settings.to_dict().items() if k != "history_similarity"}  # an older manifest
    assert ScoringSettings.from_dict(old).history_similarity == 0.0
    assert "history similarity 0.5" in settings.describe()
    grid = settings_grid(ScoringSettings(), {"history_similarity": [0.0, 0.5]})
    assert [g.history_similarity for g in grid] == [0.0, 0.5]  # exclusion settings that differ in it stay
