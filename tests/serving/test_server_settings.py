"""Server settings that reach LitServe: the gzip threshold and the ZeroMQ transport (no HTTP needed)."""

from __future__ import annotations

from pathlib import Path

import pytest
from starlette.middleware.gzip import GZipMiddleware

from twotower.serving.api import build_server
from twotower.serving.settings import ServerSettings


def gzip_entries(service) -> list:
    return [
        e for e in service.lit_server.middlewares if (e[0] if isinstance(e, tuple) else e) is GZipMiddleware
    ]


@pytest.mark.parametrize(("threshold", "expected"), [(1000, [1000]), (8192, [8192]), (None, [])])
def test_gzip_threshold_reaches_litserve(tiny_bundle: Path, threshold, expected) -> None:
    service = build_server(
        tiny_bundle, ServerSettings(gzip_min_bytes=threshold, fast_queue=threshold is None)
    )
    try:
        assert [kwargs["minimum_size"] for _, kwargs in gzip_entries(service)] == expected
        assert service.lit_server.use_zmq is (threshold is None)
    finally:
        service.close()


def test_bad_gzip_threshold_is_refused() -> None:
    with pytest.raises(ValueError, match="gzip_min_bytes"):
        ServerSettings(gzip_min_bytes=-1)
