"""Baselines on a hand-made dataset whose right answers can be worked out by hand."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from twotower.baselines import (
    Interactions,
    ItemKNNRecommender,
    PopularityRecommender,
    TextOnlyRecommender,
    weighted_history_matrix,
)

# Training sequences per buyer (time order). Counts: item 0 x4, 1 x3, 2 x2, 4 x2, 5 x2, 3 x1.
SEQUENCES = {0: [0, 1, 0, 1, 2], 1: [0, 1, 3], 2: [4, 5, 4, 5], 3: [0, 2]}
NUM_ITEMS = 6


def interactions(weights: dict[int, float] | None = None) -> Interactions:
    buyer = np.concatenate([[b] * len(items) for b, items in SEQUENCES.items()])
    item = np.concatenate(list(SEQUENCES.values()))
    weight = np.array([(weights or {}).get(int(i), 1.0) for i in item], dtype=np.float32)
    return Interactions(buyer=buyer, item=item, weight=weight, num_items=NUM_ITEMS)


def batch(histories: list[list[int]], weights: list[list[float]] | None = None) -> dict[str, np.ndarray]:
    """Right-aligned padded histories, padding = item 0 with mask False (as HistoryDataset pads)."""
    length = max(len(h) for h in histories)
    items = np.zeros((len(histories), length), dtype=np.int64)
    w = np.zeros((len(histories), length), dtype=np.float32)
    mask = np.zeros((len(histories), length), dtype=bool)
    for row, history in enumerate(histories):
        items[row, length - len(history) :] = history
        w[row, length - len(history) :] = weights[row] if weights else 1.0
        mask[row, length - len(history) :] = True
    return {"history_items": items, "history_weights": w, "history_mask": mask}


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
    model = PopularityRecommender().fit(interactions())
    top = model.recommend(batch([[5], [3, 4]]), k=4)
    assert top.shape == (2, 4)
    np.testing.assert_array_equal(top, [[0, 1, 2, 4], [0, 1, 2, 4]])  # 2, 4, 5 tie at 2: lower index first


def test_popularity_can_count_event_weights() -> None:
    model = PopularityRecommender(weighted=True).fit(interactions({3: 100.0}))
    assert model.recommend(batch([[1]]), k=1)[0, 0] == 3  # one purchase-weighted event beats four views


def test_recommend_before_fit_is_a_clear_error() -> None:
    with pytest.raises(RuntimeError, match="fit"):
        PopularityRecommender().recommend(batch([[1]]), 2)
    with pytest.raises(RuntimeError, match="fit"):
        ItemKNNRecommender().recommend(batch([[1]]), 2)


def test_item_knn_recommends_co_occurring_items() -> None:
    model = ItemKNNRecommender(window=1, self_similarity=0.0).fit(interactions())
    top = model.recommend(batch([[4], [3]]), k=2)
    assert top[0, 0] == 5  # 4 and 5 alternate in buyer 2's sequence
    assert top[1, 0] == 1  # 3 follows 1 in buyer 1's sequence
    # co-occurrence is symmetric and cosine-normalized: C[4,5] = 3 / sqrt(2 * 2)
    assert model.similarity[4, 5] == pytest.approx(1.5)
    assert model.similarity[5, 4] == pytest.approx(1.5)
    assert model.similarity[4, 4] == 0.0


def test_item_knn_window_limits_co_occurrence() -> None:
    narrow = ItemKNNRecommender(window=1, self_similarity=0.0).fit(interactions())
    wide = ItemKNNRecommender(window=2, self_similarity=0.0).fit(interactions())
    assert narrow.similarity[0, 3] == 0.0  # 0 and 3 are two apart in buyer 1's sequence
    assert wide.similarity[0, 3] > 0.0


def test_item_knn_weights_history_by_event() -> None:
    model = ItemKNNRecommender(window=1, self_similarity=0.0).fit(interactions())
    # item 0 viewed (1), item 4 purchased (10): 4's neighbour 5 outranks 0's neighbour 1, and vice versa
    assert model.recommend(batch([[0, 4]], [[1.0, 10.0]]), k=1)[0, 0] == 5
    assert model.recommend(batch([[0, 4]], [[10.0, 1.0]]), k=1)[0, 0] == 1


def test_item_knn_self_similarity_keeps_history_items_and_fills_lists() -> None:
    model = ItemKNNRecommender(window=1, self_similarity=1.0).fit(interactions())
    top = model.recommend(batch([[4]]), k=NUM_ITEMS)
    assert set(top[0, :2]) == {4, 5}  # the history item itself and its co-occurring neighbour
    # the rest has no co-occurrence with 4: ordered by popularity (0, 1, then 2 before 3)
    np.testing.assert_array_equal(top[0, 2:], [0, 1, 2, 3])


def test_item_knn_keeps_only_the_strongest_neighbours() -> None:
    model = ItemKNNRecommender(window=5, neighbors=1, self_similarity=0.0).fit(interactions())
    assert (np.diff(model.similarity.indptr) <= 1).all()


TEXT = np.array([[1.0, 0.0], [0.0, 1.0], [0.7, 0.7], [-1.0, 0.0]], dtype=np.float32)


def test_text_only_ranks_by_the_weighted_average_vector() -> None:
    model = TextOnlyRecommender(TEXT).fit()
    # padding (item 0, mask False) must not pull towards item 0
    b = batch([[0, 1], [0, 1]], [[1.0, 3.0], [3.0, 1.0]])
    b["history_items"] = np.pad(b["history_items"], ((0, 0), (1, 0)))
    b["history_weights"] = np.pad(b["history_weights"], ((0, 0), (1, 0)), constant_values=100.0)
    b["history_mask"] = np.pad(b["history_mask"], ((0, 0), (1, 0)))
    top = model.recommend(b, k=4)
    np.testing.assert_array_equal(top[0], [1, 2, 0, 3])  # mean (0.25, 0.75): closest to item 1
    np.testing.assert_array_equal(top[1], [0, 2, 1, 3])
    vectors = model.buyer_vectors(b)
    torch.testing.assert_close(vectors.norm(dim=1), torch.ones(2))


def test_text_only_checks_its_vectors() -> None:
    with pytest.raises(ValueError, match=r"\[N, d\]"):
        TextOnlyRecommender(np.zeros(3, dtype=np.float32))
    with pytest.raises(ValueError, match="same catalog"):
        TextOnlyRecommender(TEXT).fit(interactions())
