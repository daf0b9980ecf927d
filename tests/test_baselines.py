"""Baseline rankers on a hand-made dataset whose right answers can be worked out by hand."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from twotower.data.batches import HistoryBatch
from twotower.evaluation.knn import ItemKNNRanker
from twotower.evaluation.rankers import (
    Interactions,
    PopularityRanker,
    RecentPopularityRanker,
    TextOnlyRanker,
    weighted_history_matrix,
)
from twotower.scoring import History, ScoringSettings, rank_dense

# Training sequences per buyer (time order). Counts: item 0 x4, 1 x3, 2 x2, 4 x2, 5 x2, 3 x1.
SEQUENCES = {0: [0, 1, 0, 1, 2], 1: [0, 1, 3], 2: [4, 5, 4, 5], 3: [0, 2]}
NUM_ITEMS = 6
DAY = 86_400.0


def interactions(weights: dict[int, float] | None = None) -> Interactions:
    buyer = np.concatenate([[b] * len(items) for b, items in SEQUENCES.items()])
    item = np.concatenate(list(SEQUENCES.values()))
    weight = np.array([(weights or {}).get(int(i), 1.0) for i in item], dtype=np.float32)
    time = np.arange(len(item), dtype=np.float64) * DAY  # one event a day, buyer after buyer
    return Interactions(buyer=buyer, item=item, weight=weight, num_items=NUM_ITEMS, time=time)


def batch(histories: list[list[int]], weights: list[list[float]] | None = None) -> HistoryBatch:
    """Right-aligned padded histories, padding = item 0 with mask False (as HistoryDataset pads); no target."""
    length = max(len(h) for h in histories)
    items = np.zeros((len(histories), length), dtype=np.int64)
    w = np.zeros((len(histories), length), dtype=np.float32)
    mask = np.zeros((len(histories), length), dtype=bool)
    for row, history in enumerate(histories):
        items[row, length - len(history) :] = history
        w[row, length - len(history) :] = weights[row] if weights else 1.0
        mask[row, length - len(history) :] = True
    return HistoryBatch.from_arrays(items, w, mask)


def test_interactions_validate_their_input() -> None:
    with pytest.raises(ValueError, match="same length"):
        Interactions(buyer=np.array([0, 0]), item=np.array([1]), weight=np.array([1.0]), num_items=3)
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        Interactions(buyer=np.array([0]), item=np.array([3]), weight=np.array([1.0]), num_items=3)
    with pytest.raises(ValueError, match="sorted by buyer"):
        Interactions(buyer=np.array([1, 0]), item=np.array([0, 1]), weight=np.array([1.0, 1.0]), num_items=3)


def test_weighted_history_matrix_sums_repeats_and_ignores_padding() -> None:
    b = batch([[2, 2, 1], [3]], [[1.0, 5.0, 10.0], [1.0]])
    matrix = weighted_history_matrix(b, NUM_ITEMS).toarray()
    assert matrix.shape == (2, NUM_ITEMS)
    np.testing.assert_allclose(matrix[0], [0, 10, 6, 0, 0, 0])
    np.testing.assert_allclose(matrix[1], [0, 0, 0, 1, 0, 0])  # the padded item 0 is not counted


def test_popularity_orders_by_training_count_with_stable_ties() -> None:
    model = PopularityRanker().fit(interactions())
    top = model.recommend(batch([[5], [3, 4]]), k=4)
    assert top.shape == (2, 4)
    np.testing.assert_array_equal(top, [[0, 1, 2, 4], [0, 1, 2, 4]])  # 2, 4, 5 tie at 2: lower index first


def test_popularity_can_count_event_weights() -> None:
    model = PopularityRanker(weighted=True).fit(interactions({3: 100.0}))
    assert model.recommend(batch([[1]]), k=1)[0, 0] == 3  # one purchase-weighted event beats four views


def test_recommend_before_fit_is_a_clear_error() -> None:
    with pytest.raises(RuntimeError, match="fit"):
        PopularityRanker().recommend(batch([[1]]), 2)
    with pytest.raises(RuntimeError, match="fit"):
        ItemKNNRanker().recommend(batch([[1]]), 2)


def test_item_knn_recommends_co_occurring_items() -> None:
    model = ItemKNNRanker(window=1, self_similarity=0.0).fit(interactions())
    top = model.recommend(batch([[4], [3]]), k=2)
    assert top[0, 0] == 5  # 4 and 5 alternate in buyer 2's sequence
    assert top[1, 0] == 1  # 3 follows 1 in buyer 1's sequence
    # co-occurrence is symmetric and cosine-normalized: C[4,5] = 3 / sqrt(2 * 2)
    assert model.similarity[4, 5] == pytest.approx(1.5)
    assert model.similarity[5, 4] == pytest.approx(1.5)
    assert model.similarity[4, 4] == 0.0


def test_item_knn_window_limits_co_occurrence() -> None:
    narrow = ItemKNNRanker(window=1, self_similarity=0.0).fit(interactions())
    wide = ItemKNNRanker(window=2, self_similarity=0.0).fit(interactions())
    assert narrow.similarity[0, 3] == 0.0  # 0 and 3 are two apart in buyer 1's sequence
    assert wide.similarity[0, 3] > 0.0


def test_item_knn_weights_history_by_event() -> None:
    model = ItemKNNRanker(window=1, self_similarity=0.0).fit(interactions())
    # item 0 viewed (1), item 4 purchased (10): 4's neighbour 5 outranks 0's neighbour 1, and vice versa
    assert model.recommend(batch([[0, 4]], [[1.0, 10.0]]), k=1)[0, 0] == 5
    assert model.recommend(batch([[0, 4]], [[10.0, 1.0]]), k=1)[0, 0] == 1


def test_item_knn_self_similarity_keeps_history_items_and_fills_lists() -> None:
    model = ItemKNNRanker(window=1, self_similarity=1.0).fit(interactions())
    top = model.recommend(batch([[4]]), k=NUM_ITEMS)
    assert set(top[0, :2]) == {4, 5}  # the history item itself and its co-occurring neighbour
    # the rest has no co-occurrence with 4: ordered by popularity (0, 1, then 2 before 3)
    np.testing.assert_array_equal(top[0, 2:], [0, 1, 2, 3])


def test_item_knn_keeps_only_the_strongest_neighbours() -> None:
    model = ItemKNNRanker(window=5, neighbors=1, self_similarity=0.0).fit(interactions())
    assert (np.diff(model.similarity.indptr) <= 1).all()


TEXT = np.array([[1.0, 0.0], [0.0, 1.0], [0.7, 0.7], [-1.0, 0.0]], dtype=np.float32)


def test_text_only_ranks_by_the_weighted_average_vector() -> None:
    model = TextOnlyRanker(TEXT).fit()
    # padding (item 0, mask False) must not pull towards item 0
    b = batch([[0, 1], [0, 1]], [[1.0, 3.0], [3.0, 1.0]])
    b = HistoryBatch.from_arrays(
        np.pad(b.history_items.numpy(), ((0, 0), (1, 0))),
        np.pad(b.history_weights.numpy(), ((0, 0), (1, 0)), constant_values=100.0),
        np.pad(b.history_mask.numpy(), ((0, 0), (1, 0))),
    )
    top = model.recommend(b, k=4)
    np.testing.assert_array_equal(top[0], [1, 2, 0, 3])  # mean (0.25, 0.75): closest to item 1
    np.testing.assert_array_equal(top[1], [0, 2, 1, 3])
    vectors = model.buyer_vectors(b)
    torch.testing.assert_close(vectors.norm(dim=1), torch.ones(2))


def test_text_only_checks_its_vectors() -> None:
    with pytest.raises(ValueError, match=r"\[N, d\]"):
        TextOnlyRanker(np.zeros(3, dtype=np.float32))
    with pytest.raises(ValueError, match="same catalog"):
        TextOnlyRanker(TEXT).fit(interactions())


def test_whole_history_item_knn_counts_buyers_who_have_both_items() -> None:
    model = ItemKNNRanker(window=None).fit(interactions())
    # buyers of 0: {0, 1, 3}; of 1: {0, 1}; of 2: {0, 3}; of 3: {1}. Both 0 and 1: buyers 0, 1.
    assert model.similarity[0, 1] == pytest.approx(2 / np.sqrt(3 * 2))
    assert model.similarity[0, 2] == pytest.approx(2 / np.sqrt(3 * 2))
    assert model.similarity[2, 3] == 0.0  # no buyer has both
    assert model.similarity[0, 0] == 0.0  # no self-similarity by default
    # (0, 3) are two apart in buyer 1's sequence: whole history counts them, a window of 1 does not
    assert model.similarity[0, 3] == pytest.approx(1 / np.sqrt(3 * 1))
    assert ItemKNNRanker(window=1).fit(interactions()).similarity[0, 3] == 0.0


def test_idf_weighting_discounts_buyers_of_many_items() -> None:
    plain = ItemKNNRanker(window=None).fit(interactions())
    idf = ItemKNNRanker(window=None, weighting="idf").fit(interactions())
    # (0, 2) co-occur through buyer 0 (3 distinct items) and buyer 3 (2 items); (0, 1) through buyers 0 and 1
    # (3 items each): buyer 3's focused co-occurrence counts more under idf, so (0, 2) overtakes (0, 1)
    assert plain.similarity[0, 1] == pytest.approx(plain.similarity[0, 2])
    assert idf.similarity[0, 2] > idf.similarity[0, 1]


def test_bm25_weighting_scores_co_occurrence_and_rejects_windows() -> None:
    model = ItemKNNRanker(window=None, weighting="bm25").fit(interactions())
    assert model.similarity[4, 5] > 0 and model.similarity[2, 3] == 0.0
    assert model.recommend(batch([[4]]), k=1)[0, 0] == 5
    with pytest.raises(ValueError, match="window=null"):
        ItemKNNRanker(window=5, weighting="bm25")
    with pytest.raises(ValueError, match="weighting"):
        ItemKNNRanker(weighting="tfidf")


def test_recent_popularity_counts_only_the_last_days() -> None:
    # events are one a day, in buyer order: the last 4 days (inclusive) hold buyer 2's last events and buyer 3
    # ([4, 5, 4, 5] occupy days 8..11, [0, 2] days 12..13): last 2 days -> items 0 and 2 once each
    model = RecentPopularityRanker(days=1).fit(interactions())
    top = model.recommend(batch([[1]]), k=3)[0]
    np.testing.assert_array_equal(top, [0, 2, 1])  # 0 and 2 recent (0 more popular overall), then 1 (x3)
    wide = RecentPopularityRanker(days=100).fit(interactions())
    np.testing.assert_array_equal(wide.recommend(batch([[1]]), k=2)[0], [0, 1])  # all time: 0 x4, 1 x3
    with pytest.raises(ValueError, match="times"):
        RecentPopularityRanker().fit(Interactions(np.array([0]), np.array([1]), np.array([1.0]), 3))


def test_repeat_baseline_is_popularity_under_a_repeat_score() -> None:
    """The ``repeat`` baseline: the buyer's own items by decayed frequency first, popular items after."""
    popularity = PopularityRanker().fit(interactions())
    b = batch([[3, 5, 3]])
    history = History(
        b.history_items.numpy(),
        b.history_mask.numpy(),
        b.history_weights.numpy(),
        np.array([[0.0, 9.0, 1.0]]) * DAY,
    )
    history.now = np.array([10.0 * DAY])
    settings = ScoringSettings(exclude_seen=False, repeat_weight=1000.0, half_life_days=1.0)
    top = rank_dense(popularity.scores(b), history, settings, k=4)[0][0]
    # 5: 2^-1 = 0.5; 3: 2^-10 + 2^-9 ~ 0.003 -> 5, 3, then the most popular others 0, 1
    np.testing.assert_array_equal(top, [5, 3, 0, 1])
    excluded = rank_dense(popularity.scores(b), history, ScoringSettings(exclude_seen=True), k=3)[0][0]
    np.testing.assert_array_equal(excluded, [0, 1, 2])  # with exclusion: popularity without 3 and 5


def test_repeat_knn_blends_the_repeat_score_into_item_knn() -> None:
    """``repeat_knn``: item-kNN scores plus the repeat score; the weight decides between neighbour and repeat."""
    knn = ItemKNNRanker(window=None).fit(interactions())
    b = batch([[4]])
    history = History(b.history_items.numpy(), b.history_mask.numpy(), b.history_weights.numpy())
    plain = rank_dense(knn.scores(b), history, ScoringSettings(exclude_seen=False), k=2)[0][0]
    assert plain[0] == 5  # 4's only neighbour; 4 itself has no self-similarity
    blended = ScoringSettings(exclude_seen=False, repeat_weight=2.0, half_life_days=None)
    np.testing.assert_array_equal(rank_dense(knn.scores(b), history, blended, k=2)[0][0], [4, 5])
