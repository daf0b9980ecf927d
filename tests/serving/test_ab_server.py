"""A/B variants, re-ranking and the buyer cache over HTTP: a real `python -m twotower.serve` with two variants."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.serving.live import LiveServer
from twotower.serving.variants import VariantsConfig

pytestmark = pytest.mark.slow
KEY = "test-key-123"
ADMIN = "admin-key-456"
HEADERS = {"X-API-Key": KEY}
SALT = "spring"


def body(buyer: str | None = None, **extra: object) -> dict:
    payload = {"recent_interactions": [{"product_id": "p3", "event_type": "view"}], "k": 5, **extra}
    return payload if buyer is None else {**payload, "buyer_id": buyer}


def encodable(buyer: str, **extra: object) -> dict:
    """A body both /retrieve and /encode_buyer accept (no k)."""
    return {k: v for k, v in body(buyer, **extra).items() if k != "k"}


@pytest.fixture(scope="module")
def bundles(make_bundle) -> dict[str, Path]:
    return {"control": make_bundle("tiny"), "treatment": make_bundle("second", seed=1)}


@pytest.fixture(scope="module")
def ab_server(bundles: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    variants = ", ".join(f"{name}: {{bundle: '{path}', share: 0.5}}" for name, path in bundles.items())
    server = LiveServer(
        bundles["control"],
        tmp_path_factory.mktemp("ab"),
        {"LIT_SERVER_API_KEY": KEY, "TWOTOWER_ADMIN_API_KEY": ADMIN},
        f"variants={{{variants}}}",
        f"variants_salt={SALT}",
        "reranker=business_rules",
        "reranker.max_per={brand: 1}",
        "buyer_cache={max_entries: 100, ttl_s: 300}",
        "server.poll_interval=0.05",
        f"server.bundle_root={bundles['control'].parent}",
    )
    try:
        server.wait_ready(headers=HEADERS)
        yield server
    finally:
        server.stop()


def test_assignment_overrides_reranking_cache_and_metrics(ab_server: LiveServer, bundles: dict) -> None:
    url = f"{ab_server.url}/retrieve"
    expected = VariantsConfig.parse(
        {name: {"bundle": str(path), "share": 0.5} for name, path in bundles.items()}, salt=SALT
    )
    seen: dict[str, str] = {}
    with requests.Session() as session:
        for _ in range(2):  # the second round hits the buyer cache
            for i in range(12):
                response = session.post(url, json=body(f"buyer-{i}"), headers=HEADERS, timeout=10)
                answer = response.json()
                assert response.status_code == 200 and answer["variant"] == expected.assign(f"buyer-{i}")
                assert response.headers["X-Twotower-Variant"] == answer["variant"]
                assert seen.setdefault(answer["variant"], answer["model_version"]) == answer["model_version"]
                brands = [item["brand"] for item in answer["items"]]
                assert len(brands) == len(set(brands)) == 3  # business rules: at most 1 per brand
        assert seen.keys() == {"control", "treatment"} and seen["control"] != seen["treatment"]
        assert session.post(url, json=body(), headers=HEADERS, timeout=10).json()["variant"] == "control"
        forced = session.post(url, json=body("buyer-1", variant="treatment"), headers=HEADERS, timeout=10)
        assert forced.json()["variant"] == "treatment"
        unknown = session.post(url, json=body("buyer-1", variant="nope"), headers=HEADERS, timeout=10)
        assert unknown.status_code == 422 and "this service serves: control, treatment" in unknown.text
        counts = {v: sum(expected.assign(f"buyer-{i}") == v for i in range(12)) * 2 for v in seen}
        counts["control"] += 1
        counts["treatment"] += 1
        metrics = session.get(f"{ab_server.url}/metrics", headers=HEADERS, timeout=10).text
        for variant, count in counts.items():
            line = f'twotower_variant_requests_total{{path="/retrieve",status="200",variant="{variant}"}} {count}.0'
            assert line in metrics, metrics
        assert 'twotower_buyer_cache_hits_total{api="/retrieve"}' in metrics
        info = session.get(f"{ab_server.url}/info", headers=HEADERS, timeout=10).json()
        assert {n: v["model_version"] for n, v in info["variants"].items()} == seen


def test_reload_of_one_variant_leaves_the_other_untouched(ab_server: LiveServer, make_bundle) -> None:
    url, admin = f"{ab_server.url}/retrieve", {"X-API-Key": ADMIN}

    def version(variant: str) -> str:
        return requests.post(url, json=body("x", variant=variant), headers=HEADERS, timeout=10).json()[
            "model_version"
        ]

    control, treatment = version("control"), version("treatment")
    third = make_bundle("third", seed=2)
    reload = requests.post(
        f"{ab_server.url}/admin/reload",
        json={"variant": "treatment", "bundle": str(third)},
        headers=admin,
        timeout=300,
    )
    assert reload.status_code == 200 and reload.json()["variant"] == "treatment", reload.text
    assert version("treatment") == reload.json()["model_version"] != treatment
    assert version("control") == control
    bad = requests.post(
        f"{ab_server.url}/admin/reload",
        json={"variant": "treatment", "bundle": "nope"},
        headers=admin,
        timeout=300,
    )
    assert bad.status_code == 422 and version("control") == control
    unknown = requests.post(f"{ab_server.url}/admin/reload", json={"variant": "x"}, headers=admin, timeout=30)
    assert unknown.status_code == 422
    back = requests.post(
        f"{ab_server.url}/admin/reload", json={"variant": "treatment"}, headers=admin, timeout=300
    )
    assert back.status_code == 200 and version("treatment") == treatment and version("control") == control
    assert requests.post(
        f"{ab_server.url}/admin/reload", json={"variant": "treatment"}, timeout=30
    ).status_code in (401, 403)


def test_odd_variant_values_are_4xx_never_5xx(ab_server: LiveServer) -> None:
    admin = {"X-API-Key": ADMIN}
    odd: list[object] = ["", "x" * 65, "كنترول", "control\x00", 1, 1.5, True, [], {}, ["control"]]
    with requests.Session() as session:
        for value in odd:
            for path, headers in (
                ("/retrieve", HEADERS),
                ("/encode_buyer", HEADERS),
                ("/admin/reload", admin),
            ):
                payload = {"variant": value} if path == "/admin/reload" else encodable("b", variant=value)
                response = session.post(f"{ab_server.url}{path}", json=payload, headers=headers, timeout=30)
                assert response.status_code == 422, (path, value, response.status_code, response.text)
        for path in ("/retrieve", "/encode_buyer"):  # null = not given
            assert session.post(
                f"{ab_server.url}{path}", json=encodable("b", variant=None), headers=HEADERS
            ).ok
