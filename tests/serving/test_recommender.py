"""The pure serving core: resolution, fallback, filters, exclusion, batching, per-request errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from twotower.model.buyer_tower import load_buyer_tower
from twotower.retrieval.bundle import load_bundle
from twotower.scoring import REPEAT_COEFFICIENTS, ScoringSettings
from twotower.serving.recommender import Query, QueryError, Recommendation, Recommender


@pytest.fixture(scope="module")
def rec(tiny_bundle: Path) -> Recommender:
    return Recommender.from_bundle(tiny_bundle)


def one(rec: Recommender, query: Query) -> Recommendation:
    (result,) = rec.retrieve([query])
    assert isinstance(result, Recommendation), result
    return result


def test_happy_path_returns_k_enriched_items(rec: Recommender) -> None:
    result = one(rec, Query(["p1", "p2"], ["view", "purchase"], k=5))
    assert len(result.items) == 5 and result.fallback is None and result.unknown_product_ids == []
    item = result.items[0]
    assert set(item) == {"product_id", "score", "title", "description", "brand", "category", "photo_url"}
    row = rec.catalog.product_ids.index(item["product_id"])
    assert item["title"] == rec.catalog.titles[row] and item["title"].startswith("منتج")
    scores = [i["score"] for i in result.items]
    assert scores == sorted(scores, reverse=True)
    assert result.model_version == rec.version


def test_scores_match_the_exact_weighted_average(rec: Recommender) -> None:
    result = one(rec, Query(["p1", "p2"], ["view", "Purchase"], k=3, exclude_seen=False))
    vector = rec.embeddings[1] * 1.0 + rec.embeddings[2] * 10.0
    vector /= np.linalg.norm(vector)
    expected = np.argsort(-(rec.embeddings @ vector))[:3]
    assert [i["product_id"] for i in result.items] == [f"p{r}" for r in expected]
    assert result.items[0]["score"] == pytest.approx(float(rec.embeddings[expected[0]] @ vector), abs=1e-5)


def test_alias_and_unknown_ids(rec: Recommender) -> None:
    via_alias = one(
        rec, Query(["dup-p0", "missing-1", "missing-1"], ["view", "view", "view"], k=4, exclude_seen=True)
    )
    direct = one(rec, Query(["p0"], ["view"], k=4))
    assert via_alias.unknown_product_ids == ["missing-1"]  # reported once, not fatal
    assert [i["product_id"] for i in via_alias.items] == [i["product_id"] for i in direct.items]
    assert "p0" not in [
        i["product_id"] for i in via_alias.items
    ]  # the duplicate counts as its canonical item


def test_cold_buyer_gets_flagged_popular_fallback(rec: Recommender) -> None:
    result = one(rec, Query(["nobody-knows"], ["view"], k=3))
    assert result.fallback == "popular" and result.unknown_product_ids == ["nobody-knows"]
    assert [i["product_id"] for i in result.items] == ["p0", "p1", "p2"]  # popularity = 1000 / (i + 1)
    empty = one(rec, Query([], [], k=2))
    assert empty.fallback == "popular" and len(empty.items) == 2


def test_exclude_seen(rec: Recommender) -> None:
    base = one(rec, Query(["p5"], ["view"], k=10, exclude_seen=False))
    top = base.items[0]["product_id"]
    history = ["p5", top]
    kept = one(rec, Query(history, ["view", "view"], k=10, exclude_seen=False))
    dropped = one(rec, Query(history, ["view", "view"], k=10, exclude_seen=True))
    assert top in [i["product_id"] for i in kept.items]
    assert not set(history) & {i["product_id"] for i in dropped.items} and len(dropped.items) == 10


def test_filters_still_return_k(rec: Recommender) -> None:
    result = one(rec, Query(["p1"], ["view"], k=8, categories=["Perfume"], brands=["samsung", "لازوردي"]))
    assert len(result.items) == 8
    assert all(i["category"] == "perfume" and i["brand"] in ("Samsung", "لازوردي") for i in result.items)
    cold = one(rec, Query([], [], k=3, categories=["electronics"]))
    assert cold.fallback == "popular" and all(i["category"] == "electronics" for i in cold.items)
    assert one(rec, Query(["p1"], ["view"], k=5, categories=["no-such-category"])).items == []


def test_filters_over_fetch_from_the_index(tiny_bundle: Path) -> None:
    from twotower.serving.recommender import RecommenderSettings

    rec = Recommender.from_bundle(
        tiny_bundle, RecommenderSettings(exact_filter_max=0)
    )  # force the index path
    result = one(rec, Query(["p1"], ["view"], k=15, categories=["jewellery"]))
    assert len(result.items) == 15 and all(i["category"] == "jewellery" for i in result.items)


def test_bad_request_does_not_fail_its_batch(rec: Recommender) -> None:
    results = rec.retrieve(
        [Query(["p1"], ["view"], k=3), Query(["p1"], ["teleported"], k=3), Query(["zzz"], ["view"], k=3)]
    )
    assert isinstance(results[0], Recommendation) and isinstance(results[2], Recommendation)
    assert isinstance(results[1], QueryError) and "teleported" in str(results[1]) and results[1].status == 422


def test_batched_equals_one_by_one(rec: Recommender) -> None:
    queries = [Query([f"p{i}", f"p{i + 7}"], ["view", "add_to_cart"], k=6) for i in range(10)]
    batched = rec.retrieve(queries)
    for query, result in zip(queries, batched, strict=True):
        single = one(rec, query)
        assert [i["product_id"] for i in result.items] == [i["product_id"] for i in single.items]


def test_batched_histories_of_different_lengths_equal_one_by_one(make_bundle) -> None:
    # the transformer reads its newest position: a batch must right-align shorter histories (left-aligned,
    # a short history's "newest" position was padding and its vector came out wrong)
    rec = Recommender.from_bundle(make_bundle("transformer", aggregation="transformer"))
    queries = [
        Query(
            [f"p{i + j}" for j in range(1 + i % 4)],
            ["view", "purchase", "view", "add_to_cart"][: 1 + i % 4],
            k=6,
        )
        for i in range(8)
    ]
    vectors = rec.encode(queries)
    for query, batched in zip(queries, vectors, strict=True):
        (single,) = rec.encode([query])
        np.testing.assert_allclose(batched.embedding, single.embedding, atol=1e-5)
    for query, result in zip(queries, rec.retrieve(queries), strict=True):
        assert [i["product_id"] for i in result.items] == [i["product_id"] for i in one(rec, query).items]


def test_training_event_aliases_are_used(rec: Recommender) -> None:
    # the bundle's config adds "checkout_success" as a purchase spelling
    a = one(rec, Query(["p1", "p2"], ["view", "checkout_success"], k=5))
    b = one(rec, Query(["p1", "p2"], ["view", "purchase"], k=5))
    assert [i["product_id"] for i in a.items] == [i["product_id"] for i in b.items]


def test_history_truncated_to_most_recent_by_timestamp(tiny_bundle: Path) -> None:
    rec = Recommender.from_bundle(tiny_bundle)
    rec.max_history = 1
    newest_first = Query(["p3", "p4"], ["view", "view"], timestamps=[200.0, 100.0], k=3, exclude_seen=False)
    only_p3 = Query(["p3"], ["view"], k=3, exclude_seen=False)
    assert [i["product_id"] for i in one(rec, newest_first).items] == [
        i["product_id"] for i in one(rec, only_p3).items
    ]


def test_encode(rec: Recommender) -> None:
    good, empty = rec.encode([Query(["p1", "ghost"], ["view", "view"]), Query(["ghost"], ["view"])])
    assert good.embedding.shape == (rec.dim,) and good.unknown_product_ids == ["ghost"]
    assert np.linalg.norm(good.embedding) == pytest.approx(1.0, abs=1e-5)
    assert isinstance(empty, QueryError) and "nothing to encode" in str(empty)


def test_attention_checkpoint_and_hnsw_index(make_bundle) -> None:
    rec = Recommender.from_bundle(make_bundle("attention", aggregation="attention", index_kind="hnsw"))
    assert rec.info()["aggregation"] == "attention" and rec.info()["index"]["kind"] == "hnsw"
    assert len(one(rec, Query(["p1", "p9"], ["view", "purchase"], k=10)).items) == 10


@pytest.mark.parametrize("spelling", ["\u200bp7", "p7\u200f", "\u202bp7\u202c", "\ufeffp7", "ｐ７", " p7 "])
def test_ids_with_invisible_characters_or_full_width_forms_match(rec: Recommender, spelling: str) -> None:
    plain = one(rec, Query(["p7"], ["view"], k=5))
    messy = one(rec, Query([spelling], ["view"], k=5))
    assert messy.unknown_product_ids == [] and messy.items == plain.items


def test_catalog_ids_are_matched_in_normalized_form(tiny_bundle: Path) -> None:
    from twotower.model.buyer_tower import load_buyer_tower
    from twotower.retrieval.bundle import load_bundle

    bundle = load_bundle(tiny_bundle)
    bundle.catalog.aliases = {**bundle.catalog.aliases, "\u200fsku-\uff19": 9}  # RLM + full-width 9
    rec = Recommender(bundle, load_buyer_tower(bundle.checkpoint_path))
    assert one(rec, Query(["sku-9"], ["view"], k=3)).unknown_product_ids == []


@pytest.mark.parametrize("brand", ["\u200fلازوردي", "لازوردي\u200b", "\u202aلازوردي\u202c"])
def test_brand_filter_ignores_format_characters(rec: Recommender, brand: str) -> None:
    plain = one(rec, Query(["p1"], ["view"], k=5, brands=["لازوردي"]))
    messy = one(rec, Query(["p1"], ["view"], k=5, brands=[brand]))
    assert plain.items and messy.items == plain.items


def test_max_interactions_defaults_to_the_request_schemas_limit_and_cannot_exceed_it():
    from twotower.serving.recommender import RecommenderSettings
    from twotower.serving.schemas import MAX_INTERACTIONS

    assert RecommenderSettings().max_interactions == MAX_INTERACTIONS
    with pytest.raises(ValueError, match="max_interactions"):
        RecommenderSettings(max_interactions=MAX_INTERACTIONS + 1)


def test_a_request_that_switches_exclusion_gets_the_bundles_settings_for_it(tiny_bundle: Path) -> None:
    # each exclusion setting has its own settings chosen on val at export; the served ones answer requests
    # that set none or agree
    learned = ScoringSettings(
        exclude_seen=False, repeat_coefficients=(0.1,) * len(REPEAT_COEFFICIENTS), boost_pool=7
    )
    excluded = ScoringSettings(
        exclude_seen=True, repeat_coefficients=(0.2,) * len(REPEAT_COEFFICIENTS), history_similarity=0.5
    )
    bundle = load_bundle(tiny_bundle)  # the session's bundle: its files stay as they are
    bundle.manifest.update(scoring=learned.to_dict(), scoring_other_exclusion=excluded.to_dict())
    rec = Recommender(bundle, load_buyer_tower(bundle.checkpoint_path))
    assert rec.settings_for(Query(["p1"], ["view"], k=3)) == learned
    assert rec.settings_for(Query(["p1"], ["view"], k=3, exclude_seen=False)) == learned
    assert rec.settings_for(Query(["p1"], ["view"], k=3, exclude_seen=True)) == excluded
    assert rec.info()["scoring_other_exclusion"] == excluded.to_dict()

    # and the lists follow them: the excluded request never returns the history item
    def items(exclude_seen: bool | None) -> list[str]:
        return [
            i["product_id"]
            for i in one(rec, Query(["p1"], ["purchase"], k=5, exclude_seen=exclude_seen)).items
        ]

    assert "p1" not in items(True) and "p1" in items(False) and items(None) == items(False)
