"""A/B variants, the re-ranking stage and the buyer-vector cache wired into the workers (in-process, no HTTP)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from twotower.reranking import BusinessRules, MaximalMarginalRelevance
from twotower.serving.buyer_cache import BuyerVectorCache
from twotower.serving.recommender import Query, Recommendation, Recommender, RecommenderSettings
from twotower.serving.reload import Coordinator
from twotower.serving.schemas import EncodeBuyerRequest, RetrieveRequest
from twotower.serving.stages import attach
from twotower.serving.variants import VariantsConfig
from twotower.serving.workers import VARIANT_HEADER, EncodeBuyerAPI, RetrieveAPI


def request(buyer: str | None = None, pid: str = "p3", k: int = 3, **extra: object) -> RetrieveRequest:
    payload = {"recent_interactions": [{"product_id": pid, "event_type": "view"}], "k": k, **extra}
    if buyer is not None:
        payload["buyer_id"] = buyer
    return RetrieveRequest.model_validate(payload)


def run(api: RetrieveAPI | EncodeBuyerAPI, requests: list) -> list:
    outputs = api.unbatch(api.predict(api.batch([api.decode_request(r) for r in requests])))
    return [api.encode_response(o) for o in outputs]


def make_api(variants: VariantsConfig, cls: type = RetrieveAPI, **options: object) -> RetrieveAPI:
    coordinator = Coordinator({}, {v.name: v.bundle for v in variants})
    api = cls(variants, RecommenderSettings(), coordinator, max_batch_size=8, batch_timeout=0.01,
              poll_interval=3600, **options)  # fmt: skip
    api.pre_setup()
    api.setup("cpu")
    return api


@pytest.fixture(scope="module")
def two(make_bundle: Callable[..., Path]) -> VariantsConfig:
    return VariantsConfig.parse(
        {
            "control": {"bundle": str(make_bundle("tiny")), "share": 0.5},
            "treatment": {"bundle": str(make_bundle("second", seed=1)), "share": 0.5},
        },
        salt="test",
    )


def test_assignment_is_deterministic_and_every_answer_names_its_variant(two: VariantsConfig) -> None:
    api = make_api(two)
    versions = {name: r.version for name, r in api.recommenders.items()}
    assert versions["control"] != versions["treatment"]
    buyers = [f"b{i}" for i in range(40)]
    # One batch mixing variants, twice: each buyer gets its hash's variant, the same both times.
    for _ in range(2):
        responses = run(api, [request(b) for b in buyers])
        for buyer, response in zip(buyers, responses, strict=True):
            body = json.loads(response.body)
            assert body["variant"] == two.assign(buyer) == response.headers[VARIANT_HEADER]
            assert body["model_version"] == versions[body["variant"]]
    assert {json.loads(r.body)["variant"] for r in responses} == {"control", "treatment"}
    anonymous, forced, unknown = run(
        api, [request(), request("b1", variant="treatment"), request("b1", variant="nope")]
    )
    assert json.loads(anonymous.body)["variant"] == "control"
    assert json.loads(forced.body)["variant"] == "treatment"
    assert unknown.status_code == 422 and "nope" in json.loads(unknown.body)["detail"]


def test_encode_buyer_is_routed_too(two: VariantsConfig) -> None:
    api = make_api(two, EncodeBuyerAPI)
    payload = {"recent_interactions": [{"product_id": "p3", "event_type": "view"}], "variant": "treatment"}
    (response,) = run(api, [EncodeBuyerRequest.model_validate(payload)])
    body = json.loads(response.body)
    assert body["variant"] == "treatment" and body["model_version"] == api.recommenders["treatment"].version


def test_reloading_one_variant_leaves_the_other_untouched(
    two: VariantsConfig, make_bundle, tmp_path: Path
) -> None:
    api = make_api(two, buyer_cache={"max_entries": 100, "ttl_s": None})
    control = api.recommenders["control"]
    third = make_bundle("third", seed=2)
    # a rollback to what every variant serves: nothing reloads
    api._apply(api.coordinator.target() | {"generation": 1, "rollback": True})
    assert api.recommenders["control"] is control
    run(api, [request("b1"), request("b1")])
    assert api.cache.stats()["size"] == 1
    api.coordinator.publish(str(third), False, "treatment")
    api._apply(api.coordinator.target())
    assert api.recommenders["control"] is control  # the same object: not even reloaded
    assert api.recommenders["treatment"].version == Recommender.from_bundle(third).version
    assert api._error is None and api.cache.stats()["size"] == 0  # cleared on reload
    api._publish()
    record = api.coordinator.state[api._key]
    assert record["variants"]["control"]["version"] == control.version
    assert record["variants"]["treatment"]["path"] == str(third.resolve())
    # A broken treatment bundle: the error is reported, both variants keep what they served.
    broken = tmp_path / "broken"
    broken.mkdir()
    treatment = api.recommenders["treatment"]
    api.coordinator.publish(str(broken), False, "treatment")
    api._apply(api.coordinator.target())
    assert api._error and api.recommenders == {"control": control, "treatment": treatment}


def test_buyer_cache_hits_repeat_buyers_only(two: VariantsConfig, monkeypatch: pytest.MonkeyPatch) -> None:
    api = make_api(two, buyer_cache={"max_entries": 100, "ttl_s": 300})
    calls: list[int] = []
    for recommender in api.recommenders.values():
        original = recommender._tower_vectors
        monkeypatch.setattr(recommender, "_tower_vectors", lambda p, f=original: calls.append(len(p)) or f(p))
    first = run(api, [request("b1"), request("b2"), request()])
    again = run(api, [request("b1"), request("b2"), request()])  # anonymous: never cached
    assert [json.loads(a.body)["items"] for a in again] == [json.loads(f.body)["items"] for f in first]
    stats = api.cache.stats()
    assert (stats["hits"], stats["misses"], stats["size"]) == (2, 2, 2)
    assert sum(calls) == 3 + 1  # second round: only the anonymous request ran the tower
    run(api, [request("b1", pid="p4")])  # new interactions: a miss
    assert api.cache.stats()["misses"] == 3


def test_cached_vectors_equal_computed_ones(tiny_bundle: Path) -> None:
    plain = Recommender.from_bundle(tiny_bundle)
    cached = attach(Recommender.from_bundle(tiny_bundle), cache=BuyerVectorCache(10, None))
    queries = [Query(["p1", "p2"], ["view", "purchase"], cache_key=("b", i % 2)) for i in range(4)]
    expected = [v.embedding for v in plain.encode(queries)]
    for _ in range(2):
        got = [v.embedding for v in cached.encode(queries)]
        np.testing.assert_allclose(np.stack(got), np.stack(expected), rtol=1e-6)


# -- re-ranking through the Recommender ----------------------------------------------------------------
def test_business_rules_hold_for_warm_and_cold_buyers(tiny_bundle: Path) -> None:
    recommender = attach(
        Recommender.from_bundle(tiny_bundle), BusinessRules(candidates=30, max_per={"brand": 1})
    )
    warm, cold = recommender.retrieve(
        [Query(["p1", "p2"], ["view", "view"], k=5), Query(["zzz"], ["view"], k=5)]
    )
    for result in (warm, cold):
        assert isinstance(result, Recommendation)
        brands = [item["brand"] for item in result.items]
        assert len(brands) == 3 and len(set(brands)) == 3  # 3 brands in the catalog: at most 1 each
    assert cold.fallback == "popular"
    seen = {"p1", "p2"}
    assert not seen & {item["product_id"] for item in warm.items}  # exclude_seen still applies

    perfume = attach(
        Recommender.from_bundle(tiny_bundle),
        BusinessRules(candidates=60, max_per={}, filters={"category": "perfume"}),
    )
    (cold,) = perfume.retrieve([Query([], [], k=4)])
    assert cold.fallback == "popular" and [i["category"] for i in cold.items] == ["perfume"] * 4


def test_mmr_at_lambda_one_is_retrieval_order_and_lower_lambda_reorders(tiny_bundle: Path) -> None:
    plain = Recommender.from_bundle(tiny_bundle)
    query = [Query(["p1", "p5"], ["view", "purchase"], k=8)]
    (expected,) = plain.retrieve(query)
    same = attach(
        Recommender.from_bundle(tiny_bundle), MaximalMarginalRelevance(candidates=40, relevance_weight=1.0)
    )
    (got,) = same.retrieve(query)
    assert [i["product_id"] for i in got.items] == [i["product_id"] for i in expected.items]
    diverse = attach(
        Recommender.from_bundle(tiny_bundle), MaximalMarginalRelevance(candidates=40, relevance_weight=0.0)
    )
    (other,) = diverse.retrieve(query)
    assert len(other.items) == 8 and other.items[0] == expected.items[0]
    assert [i["product_id"] for i in other.items] != [i["product_id"] for i in expected.items]


def test_a_rule_on_a_missing_column_fails_the_load(tiny_bundle: Path) -> None:
    with pytest.raises(ValueError, match="in_stock.*available columns"):
        attach(Recommender.from_bundle(tiny_bundle), BusinessRules(filters={"in_stock": True}))


def test_exact_search_over_the_auto_threshold_warns_once(
    tiny_bundle: Path, make_bundle, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from twotower.retrieval.index import builder
    from twotower.serving import stages

    monkeypatch.setattr(stages, "_warned", set())
    assert stages.warn_exact_search(Recommender.from_bundle(tiny_bundle)) is None  # 60 < 10_000
    monkeypatch.setattr(builder, "AUTO_THRESHOLD", 50)
    with caplog.at_level("WARNING", logger="twotower.serving.stages"):
        attach(Recommender.from_bundle(tiny_bundle))
        attach(Recommender.from_bundle(tiny_bundle))  # the same model again: no second warning
    warnings = [
        r.getMessage() for r in caplog.records if "exact flat search over 60 products" in r.getMessage()
    ]
    assert len(warnings) == 1 and "index=hnsw" in warnings[0]
    hnsw = Recommender.from_bundle(make_bundle("tiny-hnsw", index_kind="hnsw"))
    assert stages.warn_exact_search(hnsw) is None
