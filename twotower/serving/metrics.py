"""Prometheus metrics: per-route request counts, errors and latency (front end), worker stats (from reports).

A/B variants: the worker names the variant that answered in the X-Twotower-Variant response header; the
front end counts and times those responses again with a `variant` label (requests rejected before a
variant was chosen, e.g. 422 from validation, have no variant). Buyer-vector cache counters are summed
over the workers' latest reports.
"""

from __future__ import annotations

import os
import time
from typing import Any

from fastapi import Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

LATENCY_BUCKETS = (0.001, 0.002, 0.003, 0.004, 0.005, 0.0075, 0.01, 0.015, 0.025, 0.05, 0.1, 0.25, 1.0, 10.0)  # fmt: skip
ROUTES = ("/retrieve", "/encode_buyer", "/health", "/info", "/metrics", "/admin/reload")
REQUESTS = Counter("twotower_http_requests_total", "HTTP requests answered", ["path", "status"])
ERRORS = Counter("twotower_http_errors_total", "HTTP responses with status >= 400", ["path", "kind"])
LATENCY = Histogram(
    "twotower_http_request_duration_seconds",
    "Time from request start to response end",
    ["path"],
    buckets=LATENCY_BUCKETS,
)
VARIANT_REQUESTS = Counter(
    "twotower_variant_requests_total", "Requests answered per A/B variant", ["variant", "path", "status"]
)
VARIANT_LATENCY = Histogram(
    "twotower_variant_request_duration_seconds",
    "Time from request start to response end, per A/B variant",
    ["variant", "path"],
    buckets=LATENCY_BUCKETS,
)
_VARIANT_HEADER = b"x-twotower-variant"
MODEL_INFO = Gauge("twotower_model_info", "1 for the model version each worker serves", ["api", "version"])
VARIANT_MODEL = Gauge(
    "twotower_variant_model_info", "1 for the model version each A/B variant serves", ["variant", "version"]
)
WORKER_REQUESTS = Gauge("twotower_worker_requests", "Requests processed by inference workers", ["api"])
WORKER_BATCHES = Gauge("twotower_worker_batches", "Batches processed by inference workers", ["api"])
WORKER_MAX_BATCH = Gauge(
    "twotower_worker_max_batch_size", "Largest batch an inference worker has seen", ["api"]
)


class MetricsMiddleware:
    """Counts requests and errors and times them per route (unknown paths share one label)."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"] if scope["path"] in ROUTES else "other"
        status = 500
        variant: str | None = None
        start = time.perf_counter()

        async def send_with_status(message: dict) -> None:
            nonlocal status, variant
            if message["type"] == "http.response.start":
                status = message["status"]
                for name, value in message.get("headers", ()):
                    if name.lower() == _VARIANT_HEADER:
                        variant = value.decode("latin-1")
            await send(message)

        try:
            await self.app(scope, receive, send_with_status)
        finally:
            elapsed = time.perf_counter() - start
            LATENCY.labels(path).observe(elapsed)
            REQUESTS.labels(path, str(status)).inc()
            if variant is not None:
                VARIANT_LATENCY.labels(variant, path).observe(elapsed)
                VARIANT_REQUESTS.labels(variant, path, str(status)).inc()
            if status >= 400:
                ERRORS.labels(path, "5xx" if status >= 500 else "4xx").inc()


def metrics_response(workers: dict[str, dict]) -> Response:
    """The /metrics body: this front end's HTTP metrics plus the workers' latest reports."""
    for w in workers.values():
        MODEL_INFO.labels(w["api"], w["version"]).set(1)
        for variant, served in (w.get("variants") or {}).items():
            VARIANT_MODEL.labels(variant, served["version"]).set(1)
        WORKER_REQUESTS.labels(w["api"]).set(w["stats"]["requests"])
        WORKER_BATCHES.labels(w["api"]).set(w["stats"]["batches"])
        WORKER_MAX_BATCH.labels(w["api"]).set(w["stats"]["max_batch"])
    registry = REGISTRY
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
    reports = CollectorRegistry()
    reports.register(_CacheCollector(workers))
    return Response(generate_latest(registry) + generate_latest(reports), media_type=CONTENT_TYPE_LATEST)


class _CacheCollector:
    """Buyer-vector cache counters summed per API over the workers' latest reports (absent when off)."""

    def __init__(self, workers: dict[str, dict]) -> None:
        self.workers = workers

    def collect(self) -> Any:
        caches = [(w["api"], w["cache"]) for w in self.workers.values() if w.get("cache")]
        if not caches:
            return
        for name, help_text in (
            ("hits", "Buyer vectors served from the cache"),
            ("misses", "Cache lookups that ran the buyer tower"),
            ("evictions", "Entries dropped by the LRU size limit"),
            ("expirations", "Entries dropped by the TTL"),
        ):
            family = CounterMetricFamily(f"twotower_buyer_cache_{name}", help_text, labels=["api"])
            for api in sorted({a for a, _ in caches}):
                family.add_metric([api], sum(c[name] for a, c in caches if a == api))
            yield family
        size = GaugeMetricFamily("twotower_buyer_cache_entries", "Buyer vectors cached now", labels=["api"])
        for api in sorted({a for a, _ in caches}):
            size.add_metric([api], sum(c["size"] for a, c in caches if a == api))
        yield size
