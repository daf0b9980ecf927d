"""Re-ranking stage on tiny hand-checked catalogs: caps, filters, boosts, MMR, config group, batching."""

from __future__ import annotations

import inspect
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from hydra.utils import instantiate
from omegaconf import OmegaConf

from twotower.reranking import (
    RERANKERS,
    BusinessRules,
    Chain,
    MaximalMarginalRelevance,
    Passthrough,
    RerankContext,
    build_reranker,
    rerank_batch,
)
from twotower.reranking.offline import RerankedRanker

CONF = Path(__file__).resolve().parents[2] / "conf" / "reranker"


@pytest.fixture
def context() -> RerankContext:
    # row:        0     1     2      3       4     5      6     7
    columns = {
        "brand": np.array(["Nike", "nike ", "NIKE", "Adidas", "Adidas", "Puma", "", ""], dtype=object),
        "category": np.array(["shoes", "shoes", "shirts", "shoes", "shirts", "shoes", "hats", "hats"]),
        "price": np.array([10.0, 60.0, 20.0, np.nan, 5.0, 30.0, 40.0, 0.5]),
        "in_stock": np.array([True, True, False, True, True, True, True, True]),
    }
    vectors = np.eye(8, 4, dtype=np.float32) + 0.01  # rows 0..3 point along axes; 4..7 nearly constant
    return RerankContext(columns, vectors)


def ranked(n: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """Rows 0..n-1 retrieved best first with scores 1.0, 0.9, ..."""
    return np.arange(n, dtype=np.int64), (1.0 - 0.1 * np.arange(n)).astype(np.float32)


def test_passthrough_keeps_the_first_k_and_drops_empty_slots(context: RerankContext) -> None:
    rows = np.array([3, -1, 1, 2])
    out_rows, out_scores = Passthrough().rerank(rows, np.array([0.9, -np.inf, 0.5, 0.4]), 2, context)
    assert out_rows.tolist() == [3, 1] and out_scores.tolist() == pytest.approx([0.9, 0.5])
    assert Passthrough().fetch_size(10) == 10


def test_brand_cap_matches_normalized_values_and_never_groups_empty_brands(context: RerankContext) -> None:
    rows, scores = ranked()
    out, _ = BusinessRules(max_per={"brand": 2}).rerank(rows, scores, 8, context)
    # Nike/nike/NIKE are one brand: the third (row 2) is dropped; the two empty brands are not a group
    assert out.tolist() == [0, 1, 3, 4, 5, 6, 7]


def test_brand_and_category_caps_together(context: RerankContext) -> None:
    rows, scores = ranked()
    out, _ = BusinessRules(max_per={"brand": 1, "category": 1}).rerank(rows, scores, 8, context)
    # 0 (Nike, shoes); 1 Nike full; 2 Nike full; 3 shoes full; 4 (Adidas, shirts); 5 shoes full; 6 (hats); 7 hats
    assert out.tolist() == [0, 4, 6]


def test_backfill_fills_what_the_caps_left_short_with_the_best_capped_out_items(
    context: RerankContext,
) -> None:
    rows, scores = ranked()
    rules = BusinessRules(max_per={"brand": 1, "category": 1}, backfill=True)
    out, out_scores = rules.rerank(rows, scores, 5, context)
    assert out.tolist() == [0, 4, 6, 1, 2]  # the capped list [0, 4, 6], then 1 and 2 in score order
    assert out_scores.tolist() == pytest.approx([1.0, 0.6, 0.4, 0.9, 0.8])
    out, _ = BusinessRules(max_per={"brand": 1}, backfill=True, filters={"in_stock": True}).rerank(
        rows, scores, 8, context
    )
    assert 2 not in out.tolist() and len(out) == 7  # filters stay hard: row 2 is out of stock


def test_filters_range_bool_and_not_in(context: RerankContext) -> None:
    rows, scores = ranked()
    rules = BusinessRules(
        filters={"price": {"min": 1, "max": 50}, "in_stock": True, "category": {"not_in": ["HATS"]}}
    )
    out, out_scores = rules.rerank(rows, scores, 10, context)
    # 1 too expensive, 2 out of stock, 3 price missing, 6/7 hats (7 also too cheap)
    assert out.tolist() == [0, 4, 5]
    assert out_scores.tolist() == pytest.approx([1.0, 0.6, 0.5])


def test_filter_shorthands_scalar_is_eq_and_list_is_in(context: RerankContext) -> None:
    rows, scores = ranked()
    out, _ = BusinessRules(filters={"brand": ["adidas", "puma"]}).rerank(rows, scores, 10, context)
    assert out.tolist() == [3, 4, 5]
    out, _ = BusinessRules(filters={"category": "shirts"}).rerank(rows, scores, 10, context)
    assert out.tolist() == [2, 4]
    out, _ = BusinessRules(filters={"brand": {"ne": "nike"}}).rerank(rows, scores, 10, context)
    assert out.tolist() == [3, 4, 5, 6, 7]  # a missing brand is not "nike"


def test_boosts_reorder_and_return_boosted_scores(context: RerankContext) -> None:
    rows, scores = ranked()
    rules = BusinessRules(boosts={"brand": {"Puma": 0.45}, "in_stock": {False: -1.0}})
    out, out_scores = rules.rerank(rows, scores, 4, context)
    # Puma (row 5): 0.5 + 0.45 = 0.95 -> second; row 2 (out of stock) sinks to last
    assert out.tolist() == [0, 5, 1, 3]
    assert out_scores.tolist() == pytest.approx([1.0, 0.95, 0.9, 0.7])


def test_nullable_columns_from_parquet_keep_their_type_and_missing_values_match_nothing() -> None:
    frame = pd.DataFrame(
        {
            "price": pd.array([5, None, 40, 12], dtype="Int64"),
            "in_stock": pd.array([True, True, None, False], dtype="boolean"),
            "brand": ["a", None, "b", "a"],
        }
    )
    context = RerankContext(frame)
    rows, scores = np.arange(4), np.array([1.0, 0.9, 0.8, 0.7], dtype=np.float32)
    out, _ = BusinessRules(filters={"price": {"max": 20}}).rerank(rows, scores, 4, context)
    assert out.tolist() == [0, 3]  # row 1 has no price
    out, _ = BusinessRules(filters={"in_stock": True}).rerank(rows, scores, 4, context)
    assert out.tolist() == [0, 1]
    out, _ = BusinessRules(max_per={"brand": 1}).rerank(rows, scores, 4, context)
    assert out.tolist() == [0, 1, 2]  # the missing brand is not a group


def test_unknown_column_names_it_and_lists_the_available_ones(context: RerankContext) -> None:
    rules = BusinessRules(filters={"colour": "red"})
    with pytest.raises(ValueError, match=r"'colour'.*available columns: brand, category, in_stock, price"):
        rules.prepare(context)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"filters": {"price": {"between": [1, 2]}}}, r"unknown operator 'between'; known: min, max"),
        ({"filters": {"price": {"min": "cheap"}}}, r"price.min needs a number"),
        ({"filters": {"brand": {"in": "Nike"}}}, r"brand.in needs a list"),
        ({"boosts": {"brand": 0.1}}, r"boosts.brand must map column values to amounts"),
        ({"boosts": {"brand": {"Nike": "lots"}}}, r"boosts.brand.Nike must be a number"),
        ({"max_per": {"brand": 0}}, r"max_per.brand must be an integer >= 1"),
        ({"candidates": 0}, r"candidates must be >= 1"),
    ],
)
def test_bad_options_fail_at_construction(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        BusinessRules(**kwargs)


def test_type_mismatches_fail_at_prepare(context: RerankContext) -> None:
    with pytest.raises(ValueError, match=r"brand.min needs a numeric column"):
        BusinessRules(filters={"brand": {"min": 1}}).prepare(context)
    with pytest.raises(ValueError, match=r"numeric catalog column 'price' compares it with 'cheap'"):
        BusinessRules(filters={"price": {"eq": "cheap"}}).prepare(context)


def test_mmr_with_lambda_one_keeps_the_input_order(context: RerankContext) -> None:
    rows, scores = ranked()
    out, out_scores = MaximalMarginalRelevance(relevance_weight=1.0).rerank(rows, scores, 5, context)
    assert out.tolist() == [0, 1, 2, 3, 4]
    assert out_scores.tolist() == pytest.approx(scores[:5].tolist())


def test_mmr_with_lambda_zero_picks_the_most_dissimilar() -> None:
    # Row 0 is the most relevant; 1 is a near-copy of 0, 2 is orthogonal, 3 is opposite to 0.
    vectors = np.array([[1.0, 0.0], [0.99, 0.1], [0.0, 1.0], [-1.0, 0.05]], dtype=np.float32)
    context = RerankContext({"brand": np.array(["a", "b", "c", "d"])}, vectors)
    rows = np.array([0, 1, 2, 3])
    scores = np.array([1.0, 0.9, 0.8, 0.2], dtype=np.float32)  # scaled: 1, 0.875, 0.75, 0
    out, out_scores = MaximalMarginalRelevance(relevance_weight=0.0).rerank(rows, scores, 2, context)
    assert out.tolist() == [0, 3]  # the top item, then the one least similar to it
    assert out_scores.tolist() == pytest.approx([1.0, 0.2])  # retrieval scores of the picked items
    # lambda 0.7: copy 0.6125 - 0.3 * 0.995 = 0.31, orthogonal 0.525 - 0 = 0.525, opposite 0 + 0.3 = 0.30
    out, _ = MaximalMarginalRelevance(relevance_weight=0.7).rerank(rows, scores, 2, context)
    assert out.tolist() == [0, 2]


def test_mmr_is_deterministic_and_returns_distinct_rows() -> None:
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(500, 32)).astype(np.float32)
    context = RerankContext({}, vectors)
    rows = rng.choice(500, size=100, replace=False)
    scores = np.sort(rng.random(100).astype(np.float32))[::-1]
    mmr = MaximalMarginalRelevance(candidates=100, relevance_weight=0.5)
    first = mmr.rerank(rows, scores, 10, context)
    second = mmr.rerank(rows.copy(), scores.copy(), 10, context)
    assert first[0].tolist() == second[0].tolist() and len(set(first[0].tolist())) == 10
    assert set(first[0].tolist()) <= set(rows.tolist())


def test_mmr_needs_item_vectors() -> None:
    with pytest.raises(ValueError, match="needs the item vectors"):
        MaximalMarginalRelevance().prepare(RerankContext({"brand": np.array(["a"])}))
    with pytest.raises(ValueError, match=r"relevance_weight \(MMR's lambda\) must be in \[0, 1\]"):
        MaximalMarginalRelevance(relevance_weight=1.5)


def test_chain_filters_then_diversifies_and_checks_every_stage_at_prepare(context: RerankContext) -> None:
    rows, scores = ranked()
    chain = Chain([BusinessRules(filters={"in_stock": True}), MaximalMarginalRelevance(relevance_weight=1.0)])
    out, _ = chain.rerank(rows, scores, 3, context)
    assert out.tolist() == [0, 1, 3]  # row 2 filtered out by the first stage, the last keeps k
    # the last stage sees only what the first left (adidas: rows 3, 4)
    chain = Chain(
        [BusinessRules(filters={"brand": "adidas"}), MaximalMarginalRelevance(relevance_weight=0.0)]
    )
    assert chain.rerank(rows, scores, 5, context)[0].tolist() == [3, 4]
    assert (
        Chain([BusinessRules(filters={"brand": "none"}), Passthrough()])
        .rerank(rows, scores, 3, context)[0]
        .tolist()
        == []
    )
    with pytest.raises(ValueError, match="'colour'"):
        Chain([MaximalMarginalRelevance(), BusinessRules(max_per={"colour": 1})]).prepare(context)
    with pytest.raises(ValueError, match="non-empty list of rerankers"):
        Chain([])


def test_rerank_batch_pads_short_lists(context: RerankContext) -> None:
    rows = np.array([[0, 1, 2, 3], [4, 5, 6, 7]])
    scores = np.array([[1.0, 0.9, 0.8, 0.7], [1.0, 0.9, 0.8, 0.7]], dtype=np.float32)
    out, out_scores = rerank_batch(BusinessRules(max_per={"brand": 1}), rows, scores, 3, context)
    assert out.tolist() == [[0, 3, -1], [4, 5, 6]]
    assert np.isneginf(out_scores[0, 2])


def test_context_checks_lengths_and_aligns_a_feed_by_product_id() -> None:
    with pytest.raises(ValueError, match="must all have N rows"):
        RerankContext({"brand": np.array(["a", "b"])}, np.zeros((3, 2), np.float32))

    class FakeCatalog:  # the two Catalog methods from_catalog uses
        def __len__(self) -> int:
            return 3

        def to_frame(self) -> pd.DataFrame:
            return pd.DataFrame(
                {"product_id": ["p0", "p1", "p2"], "brand": ["a", "b", "c"], "aliases": [[]] * 3}
            )

        def resolve(self, ids: list) -> np.ndarray:
            return np.array([{"p0": 0, "p1": 1, "p2": 2}.get(i, -1) for i in ids])

    feed = pd.DataFrame({"product_id": ["p2", "p0", "zz"], "price": [5.0, 7.0, 1.0]})
    context = RerankContext.from_catalog(FakeCatalog(), None, extra=feed)
    assert sorted(context.columns) == ["brand", "price", "product_id"]
    np.testing.assert_array_equal(context.columns["price"], [7.0, np.nan, 5.0])
    out, _ = BusinessRules(filters={"price": {"max": 6}}).rerank(np.arange(3), np.ones(3), 3, context)
    assert out.tolist() == [2]  # p1 has no price: it fails the range filter


def test_each_config_node_instantiates_and_its_keys_are_the_constructor_arguments(
    context: RerankContext,
) -> None:
    names = sorted(path.stem for path in CONF.glob("*.yaml"))
    assert names == ["business_rules", "chain", "mmr", "none"] and set(names) <= set(RERANKERS)
    for name in names:
        raw = yaml.safe_load((CONF / f"{name}.yaml").read_text())
        reranker = instantiate(OmegaConf.create(raw))
        assert isinstance(reranker, RERANKERS[name])
        parameters = set(inspect.signature(RERANKERS[name].__init__).parameters) - {"self"}
        assert set(raw) - {"_target_"} == parameters
        reranker.prepare(context)
        out, _ = reranker.rerank(*ranked(), 3, context)
        assert len(out) == 3
    assert build_reranker("mmr", relevance_weight=0.2).relevance_weight == 0.2
    with pytest.raises(
        ValueError, match="unknown reranker 'nope'; registered: business_rules, chain, mmr, none"
    ):
        build_reranker("nope")


class _FakeModel:
    """Ranks by inner product with a fixed buyer vector per query, like ModelRanker."""

    name = "model"

    def __init__(self, vectors: np.ndarray) -> None:
        self.vectors = vectors
        self.fitted = False

    def fit(self, interactions: object = None) -> _FakeModel:
        self.fitted = True
        return self

    def buyer_vectors(self, batch: dict) -> np.ndarray:
        return batch["buyers"]

    def recommend(self, batch: dict, k: int) -> np.ndarray:
        return np.argsort(-(batch["buyers"] @ self.vectors.T), axis=1, kind="stable")[:, :k]


def test_reranked_recommender_scores_candidates_like_retrieval_and_applies_the_stage() -> None:
    vectors = np.array([[1.0, 0.0], [0.9, 0.1], [0.8, 0.0], [0.0, 1.0]], dtype=np.float32)
    context = RerankContext({"brand": np.array(["a", "a", "b", "c"], dtype=object)}, vectors)
    batch = {"buyers": np.array([[1.0, 0.0], [0.0, 1.0]], dtype=np.float32)}
    model = _FakeModel(vectors)
    reranked = RerankedRanker(model, BusinessRules(candidates=4, max_per={"brand": 1}), context)
    assert reranked.fit().method.fitted and reranked.name == "model+business_rules"
    rows = model.recommend(batch, 4)
    np.testing.assert_allclose(reranked.candidate_scores(batch, rows)[0], [1.0, 0.9, 0.8, 0.0])
    # query 0 ranks 0, 1, 2, 3: brand a once -> 0, 2, 3; query 1 ranks 3, 1, 0, 2 -> 3, 1, 2
    assert reranked.recommend(batch, 3).tolist() == [[0, 2, 3], [3, 1, 2]]


def test_reranked_recommender_uses_rank_scores_for_methods_without_buyer_vectors() -> None:
    class Popular:
        def fit(self, interactions: object = None) -> Popular:
            return self

        def recommend(self, batch: dict, k: int) -> np.ndarray:
            return np.tile(np.arange(k), (2, 1))

    context = RerankContext({"brand": np.array(["a", "a", "b", "c"], dtype=object)})
    reranked = RerankedRanker(Popular(), BusinessRules(candidates=4, max_per={"brand": 1}), context)
    rows = np.array([[0, 1, -1]])
    assert reranked.candidate_scores({}, rows).tolist() == [[1.0, pytest.approx(2 / 3), -np.inf]]
    assert reranked.recommend({}, 2).tolist() == [[0, 2], [0, 2]]
