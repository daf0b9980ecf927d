"""Prometheus metrics: per-route request counts, errors and latency (front end), worker stats (from reports)."""

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
MODEL_INFO = Gauge("twotower_model_info", "1 for the model version each worker serves", ["api", "version"])
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
        start = time.perf_counter()

        async def send_with_status(message: dict) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_with_status)
        finally:
            LATENCY.labels(path).observe(time.perf_counter() - start)
            REQUESTS.labels(path, str(status)).inc()
            if status >= 400:
                ERRORS.labels(path, "5xx" if status >= 500 else "4xx").inc()


def metrics_response(workers: dict[str, dict]) -> Response:
    """The /metrics body: this front end's HTTP metrics plus the workers' latest reports."""
    for w in workers.values():
        MODEL_INFO.labels(w["api"], w["version"]).set(1)
        WORKER_REQUESTS.labels(w["api"]).set(w["stats"]["requests"])
        WORKER_BATCHES.labels(w["api"]).set(w["stats"]["batches"])
        WORKER_MAX_BATCH.labels(w["api"]).set(w["stats"]["max_batch"])
    registry = REGISTRY
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
