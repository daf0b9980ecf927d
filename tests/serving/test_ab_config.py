"""Start-up checks of variants / buyer cache / reranker config, variant validation, per-variant metrics."""

from __future__ import annotations

import asyncio

import pytest
from omegaconf import OmegaConf
from prometheus_client import REGISTRY

from twotower.config import ConfigError
from twotower.serve import buyer_cache_options, parse_variants
from twotower.serving import schemas
from twotower.serving.metrics import MetricsMiddleware, metrics_response


def test_plain_bundle_is_a_single_control_and_variants_win() -> None:
    single = parse_variants(OmegaConf.create({"bundle": "/b", "variants": None}))
    assert single.names == ["control"] and single["control"].bundle == "/b"
    cfg = OmegaConf.create(
        {
            "bundle": "/b",
            "variants_salt": "s1",
            "variants": {
                "control": {"bundle": "/c", "share": 0.9},
                "treatment": {"bundle": "/t", "share": 0.1},
            },
        }
    )
    two = parse_variants(cfg)
    assert two.names == ["control", "treatment"] and two.salt == "s1" and two["control"].bundle == "/c"


@pytest.mark.parametrize(
    ("variants", "fragment"),
    [
        (
            {"control": {"bundle": "/c", "share": 0.9}, "treatment": {"bundle": "/t", "share": 0.2}},
            "sum to 1",
        ),
        ({"a": {"bundle": "/c", "share": 0.5}, "b": {"bundle": "/t", "share": 0.5}}, "named 'control'"),
        ({"control": {"bundle": "/c", "share": 0.5}, "treatment": {"share": 0.5}}, "treatment.bundle"),
        ({"control": {"bundle": "/c", "shares": 1}}, "unknown keys"),
    ],
)
def test_bad_variants_fail_at_start_up_with_the_reason(variants: dict, fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment):
        parse_variants(OmegaConf.create({"bundle": "/b", "variants": variants}))


def test_buyer_cache_options_are_checked() -> None:
    assert buyer_cache_options(OmegaConf.create({"buyer_cache": None})) is None
    on = OmegaConf.create({"buyer_cache": {"max_entries": 10, "ttl_s": None}})
    assert buyer_cache_options(on) == {"max_entries": 10, "ttl_s": None}
    with pytest.raises(ConfigError, match="max_entries"):
        buyer_cache_options(OmegaConf.create({"buyer_cache": {"max_entries": 0, "ttl_s": 1}}))
    with pytest.raises(ConfigError, match="buyer_cache must be"):
        buyer_cache_options(OmegaConf.create({"buyer_cache": {"size": 10}}))


def test_request_and_reload_variants_are_validated_when_configured() -> None:
    schemas.configure_variants(["control", "treatment"])
    try:
        payload = {"recent_interactions": [], "variant": "treatment"}
        assert schemas.RetrieveRequest.model_validate(payload).variant == "treatment"
        with pytest.raises(ValueError, match="unknown variant 'x'; this service serves: control, treatment"):
            schemas.RetrieveRequest.model_validate({**payload, "variant": "x"})
        with pytest.raises(ValueError, match="unknown variant"):
            schemas.ReloadRequest.model_validate({"variant": "x"})
    finally:
        schemas.configure_variants(None)


def _sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_metrics_are_labelled_by_the_answering_variant() -> None:
    async def app(scope: dict, receive: object, send: object) -> None:
        headers = [(b"x-twotower-variant", scope["variant"].encode())] if scope["variant"] else []
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b"{}"})

    async def send(message: dict) -> None:
        pass

    middleware = MetricsMiddleware(app)
    before = {v: _sample("twotower_variant_requests_total", variant=v, path="/retrieve", status="200") for v in ("ab_c", "ab_t")}  # fmt: skip
    for variant in ("ab_c", "ab_c", "ab_t", None):
        scope = {"type": "http", "path": "/retrieve", "variant": variant}
        asyncio.run(middleware(scope, None, send))
    after = {v: _sample("twotower_variant_requests_total", variant=v, path="/retrieve", status="200") for v in ("ab_c", "ab_t")}  # fmt: skip
    assert (after["ab_c"] - before["ab_c"], after["ab_t"] - before["ab_t"]) == (2, 1)
    assert _sample("twotower_variant_request_duration_seconds_count", variant="ab_t", path="/retrieve") >= 1


def test_cache_counters_are_summed_over_worker_reports() -> None:
    stats = {"hits": 3, "misses": 2, "evictions": 0, "expirations": 1, "clears": 0, "size": 2}
    record = {"api": "/retrieve", "version": "v1", "stats": {"requests": 1, "batches": 1, "max_batch": 1}}
    workers = {
        "w1": {**record, "cache": stats, "variants": {"control": {"version": "v1", "path": "/c"}}},
        "w2": {**record, "cache": stats},
    }
    text = metrics_response(workers).body.decode()
    assert 'twotower_buyer_cache_hits_total{api="/retrieve"} 6.0' in text
    assert 'twotower_buyer_cache_entries{api="/retrieve"} 4.0' in text
    assert 'twotower_variant_model_info{variant="control",version="v1"} 1.0' in text
    off = metrics_response({"w": {**record, "cache": None}}).body.decode()
    assert "twotower_buyer_cache" not in off
