"""The HTTP service: LitServe LitAPIs for /retrieve and /encode_buyer, plus /info, /metrics and /admin/reload.

Process layout (LitServe): the main process starts a multiprocessing manager (shared reload state), one
inference worker per LitAPI (spawned; each loads the bundle in `setup`, so LitServe's /health answers 503
until every worker has loaded) and `api_servers` uvicorn front ends. FastAPI validates requests against the
pydantic models in the front end, so malformed requests get a 422 there and never join a batch.

Batching: LitServe fails a whole batch when decode/predict/encode raises, so nothing here raises per request.
A request that is valid JSON but cannot be answered (an event type unknown to this bundle, nothing to encode)
travels through the batch as a `QueryError` value and is encoded as its own 4xx response; an unexpected error
in the batched model call is retried request by request, so only the request that caused it gets a 500.

Hot reload: POST /admin/reload (X-API-Key) publishes a new target generation in the shared state; each
worker's watcher thread loads the new bundle beside the old one and swaps one reference, so a batch in
flight finishes on the model it started with. The call waits for every worker; if any fails, the workers are
pointed back at the bundle they served before and the call reports the error (422).
"""

import asyncio
import logging
import os
import threading
import time
from dataclasses import dataclass, field
from multiprocessing.managers import SyncManager
from pathlib import Path
from typing import Any

import litserve as ls
import litserve.server as ls_server
import orjson
from fastapi import Depends, HTTPException, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import APIKeyHeader
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

from twotower.serving.recommender import (
    BuyerVector,
    Query,
    QueryError,
    Recommendation,
    Recommender,
    RecommenderSettings,
)
from twotower.serving.schemas import (
    EncodeBuyerRequest,
    EncodeBuyerResponse,
    ReloadRequest,
    RetrieveRequest,
    RetrieveResponse,
)

log = logging.getLogger(__name__)

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


@dataclass
class ServerSettings:
    """The `server` node of conf/serve.yaml."""

    max_batch_size: int = 16
    batch_timeout: float = 0.001
    accelerator: str = "cpu"
    workers_per_device: int = 1
    api_servers: int = 1
    api_server_worker_type: str = "process"
    timeout: float = 30.0
    max_payload_bytes: int = 65_536
    cors_origins: list[str] = field(default_factory=list)
    reload_timeout: float = 600.0
    poll_interval: float = 0.2
    log_level: str = "warning"

    def __post_init__(self) -> None:
        if self.max_batch_size < 1:
            raise ValueError(f"server.max_batch_size must be >= 1, got {self.max_batch_size}")
        if self.batch_timeout < 0:
            raise ValueError(f"server.batch_timeout must be >= 0 seconds, got {self.batch_timeout}")
        if self.max_batch_size > 1 and self.batch_timeout == 0:
            # LitServe polls the queue without blocking when batch_timeout is 0: a core spins at 100%.
            raise ValueError("server.batch_timeout must be > 0 when max_batch_size > 1 (e.g. 0.001)")
        if self.max_payload_bytes < 1024:
            raise ValueError(f"server.max_payload_bytes must be >= 1024, got {self.max_payload_bytes}")
        if self.api_server_worker_type not in ("process", "thread"):
            raise ValueError(
                f"server.api_server_worker_type must be process or thread, got {self.api_server_worker_type!r}"
            )
        self.cors_origins = list(self.cors_origins or [])


# -- shared state between front ends and workers ------------------------------------------------------------
class Coordinator:
    """Reload target and worker reports in a manager dict (picklable into spawned workers)."""

    def __init__(self, state: Any, bundle: str) -> None:
        self.state = state
        self.state["target"] = {"generation": 0, "path": bundle, "rollback": False}
        self.state["default_bundle"] = bundle

    def target(self) -> dict:
        return dict(self.state["target"])

    def report(self, key: str, record: dict) -> None:
        self.state[key] = record

    def workers(self, max_age: float) -> dict[str, dict]:
        now = time.time()
        return {
            key: record
            for key, record in self.state.items()
            if key.startswith("worker:") and now - record.get("heartbeat", 0) <= max_age
        }


class _InternalError:
    """Marks a request whose processing failed unexpectedly; encoded as a 500 without internals."""


def _error_response(status: int, detail: str) -> Response:
    return Response(orjson.dumps({"detail": detail}), status_code=status, media_type="application/json")


class _BundleAPI(ls.LitAPI):
    """Shared worker logic: load the bundle in setup, watch for reloads, batch with per-request errors."""

    def __init__(
        self,
        bundle: str,
        settings: RecommenderSettings,
        coordinator: Coordinator,
        api_path: str,
        max_batch_size: int = 1,
        batch_timeout: float = 0.0,
        poll_interval: float = 0.2,
    ) -> None:
        super().__init__(max_batch_size=max_batch_size, batch_timeout=batch_timeout, api_path=api_path)
        self.bundle_path = bundle
        self.settings = settings
        self.coordinator = coordinator
        self.poll_interval = poll_interval

    # -- lifecycle (inference worker process) ---------------------------------------------------------
    def setup(self, device: str) -> None:
        target = self.coordinator.target()
        self.recommender = Recommender.from_bundle(target["path"], self.settings)
        self._generation, self._resolved = target["generation"], str(Path(target["path"]).resolve())
        self._error: str | None = None
        self._stats = {"requests": 0, "batches": 0, "max_batch": 0}
        self._key = f"worker:{self.api_path}:{os.getpid()}"
        self._publish()
        threading.Thread(target=self._watch, name="twotower-reload-watcher", daemon=True).start()
        log.info("%s worker %d serving %s", self.api_path, os.getpid(), self.recommender.version)

    def _publish(self) -> None:
        self.coordinator.report(
            self._key,
            {
                "api": self.api_path,
                "pid": os.getpid(),
                "generation": self._generation,
                "ok": self._error is None,
                "error": self._error,
                "version": self.recommender.version,
                "path": self._resolved,
                "info": self.recommender.info(),
                "stats": dict(self._stats),
                "heartbeat": time.time(),
            },
        )

    def _watch(self) -> None:
        while True:
            time.sleep(self.poll_interval)
            try:
                target = self.coordinator.target()
                if target["generation"] > self._generation:
                    self._apply(target)
                self._publish()
            except (EOFError, BrokenPipeError, ConnectionError):
                return  # the manager is gone: the server is shutting down
            except Exception:  # keep watching; the next poll reports again
                log.exception("reload watcher failed")

    def _apply(self, target: dict) -> None:
        path = str(target["path"])
        resolved = str(Path(path).resolve())
        if target.get("rollback") and resolved == self._resolved:
            self._generation, self._error = target["generation"], None
            return
        try:
            fresh = Recommender.from_bundle(path, self.settings)  # loaded beside the old one
        except Exception as error:  # report and keep serving the old model
            log.error("reload of %s failed; still serving %s: %s", path, self.recommender.version, error)
            self._generation, self._error = target["generation"], f"{type(error).__name__}: {error}"
            return
        self.recommender = fresh  # one reference swap: batches in flight keep the one they captured
        self._generation, self._resolved, self._error = target["generation"], resolved, None
        log.info("%s worker %d now serves %s", self.api_path, os.getpid(), fresh.version)

    # -- request path ----------------------------------------------------------------------------------
    def _to_query(self, request: Any) -> Query | QueryError | _InternalError:
        try:
            interactions = request.recent_interactions
            stamps = [i.epoch() for i in interactions]
            filters = getattr(request, "filters", None)
            return Query(
                product_ids=[i.product_id for i in interactions],
                event_types=[i.event_type for i in interactions],
                timestamps=stamps if any(s is not None for s in stamps) else None,
                k=getattr(request, "k", 1),
                exclude_seen=getattr(request, "exclude_seen", False),
                categories=filters.categories if filters else None,
                brands=filters.brands if filters else None,
            )
        except Exception:
            log.exception("could not decode a request")
            return _InternalError()

    def _run(self, recommender: Recommender, queries: list[Query]) -> list:
        raise NotImplementedError

    def predict(self, x: Any) -> Any:
        batch = x if isinstance(x, list) else [x]
        recommender = self.recommender  # captured once: a concurrent reload cannot change it mid-batch
        self._stats["requests"] += len(batch)
        self._stats["batches"] += 1
        self._stats["max_batch"] = max(self._stats["max_batch"], len(batch))
        queries = [q for q in batch if isinstance(q, Query)]
        try:
            results = self._run(recommender, queries)
        except Exception:
            log.exception(
                "batched %s failed; retrying its %d requests one by one", self.api_path, len(queries)
            )
            results = []
            for query in queries:
                try:
                    results.extend(self._run(recommender, [query]))
                except Exception:
                    log.exception("%s failed for one request", self.api_path)
                    results.append(_InternalError())
        answers = iter(results)
        merged = [next(answers) if isinstance(q, Query) else q for q in batch]
        return merged if isinstance(x, list) else merged[0]

    def _encode(self, output: Any) -> Response:
        if isinstance(output, QueryError):
            return _error_response(output.status, str(output))
        if isinstance(output, _InternalError):
            return _error_response(500, "Internal server error")
        return Response(orjson.dumps(self._payload(output)), media_type="application/json")

    def _payload(self, output: Any) -> dict:
        raise NotImplementedError


class RetrieveAPI(_BundleAPI):
    """POST /retrieve: top-k products for a buyer's recent interactions."""

    def __init__(
        self, bundle: str, settings: RecommenderSettings, coordinator: Coordinator, **kwargs: Any
    ) -> None:
        super().__init__(bundle, settings, coordinator, api_path="/retrieve", **kwargs)

    def decode_request(self, request: RetrieveRequest) -> Query | QueryError | _InternalError:
        return self._to_query(request)

    def _run(self, recommender: Recommender, queries: list[Query]) -> list:
        return recommender.retrieve(queries) if queries else []

    def _payload(self, output: Recommendation) -> dict:
        return {
            "items": output.items,
            "unknown_product_ids": output.unknown_product_ids,
            "fallback": output.fallback,
            "model_version": output.model_version,
        }

    def encode_response(self, output: Any) -> RetrieveResponse:
        return self._encode(output)  # a Response: FastAPI sends it as is; the annotation documents the schema


class EncodeBuyerAPI(_BundleAPI):
    """POST /encode_buyer: the buyer vector for recent interactions (for an external vector store)."""

    def __init__(
        self, bundle: str, settings: RecommenderSettings, coordinator: Coordinator, **kwargs: Any
    ) -> None:
        super().__init__(bundle, settings, coordinator, api_path="/encode_buyer", **kwargs)

    def decode_request(self, request: EncodeBuyerRequest) -> Query | QueryError | _InternalError:
        return self._to_query(request)

    def _run(self, recommender: Recommender, queries: list[Query]) -> list:
        return recommender.encode(queries) if queries else []

    def _payload(self, output: BuyerVector) -> dict:
        return {
            "embedding": output.embedding.tolist(),
            "unknown_product_ids": output.unknown_product_ids,
            "model_version": output.model_version,
        }

    def encode_response(self, output: Any) -> EncodeBuyerResponse:
        return self._encode(output)


# -- ASGI middlewares ---------------------------------------------------------------------------------------
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


class BodyLimitMiddleware:
    """413 for bodies over `max_bytes`: by Content-Length up front, else while the body streams in."""

    def __init__(self, app: Any, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        too_large = f"request body is over the {self.max_bytes}-byte limit (server.max_payload_bytes)"
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await _error_response(413, too_large)(scope, receive, send)
            return
        received = 0

        async def limited_receive() -> dict:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.max_bytes:
                raise HTTPException(413, too_large)
            return message

        await self.app(scope, limited_receive, send)


async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    """422 naming each wrong field (without echoing the input back)."""
    errors = []
    for error in exc.errors():
        loc = [str(p) for p in error.get("loc", ()) if p != "body"]
        errors.append({"loc": loc, "msg": error.get("msg", ""), "type": error.get("type", "")})
    detail = "; ".join(f"{'.'.join(e['loc']) or 'body'}: {e['msg']}" for e in errors) or "invalid request"
    return JSONResponse({"detail": detail, "errors": errors}, status_code=422)


def _document_validation_errors(app: Any) -> None:
    """Make /openapi.json describe the 422 body `_validation_error` sends (FastAPI documents its own)."""
    build = app.openapi

    def openapi() -> dict:
        if app.openapi_schema is None:
            schema = build()
            schema.setdefault("components", {}).setdefault("schemas", {})["HTTPValidationError"] = {
                "title": "HTTPValidationError",
                "type": "object",
                "required": ["detail"],
                "properties": {
                    "detail": {"type": "string", "description": "every wrong field with what is wrong"},
                    "errors": {"type": "array", "items": {"type": "object"}},
                },
            }
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi


# -- server assembly ----------------------------------------------------------------------------------------
def _admin_key() -> str | None:
    return os.environ.get("TWOTOWER_ADMIN_API_KEY") or ls_server.LIT_SERVER_API_KEY


def _require_admin(x_api_key: str | None = Depends(APIKeyHeader(name="X-API-Key", auto_error=False))) -> None:
    key = _admin_key()
    if not key:
        raise HTTPException(
            403, "admin endpoints are disabled: set LIT_SERVER_API_KEY (or TWOTOWER_ADMIN_API_KEY)"
        )
    if x_api_key != key:
        raise HTTPException(401, "invalid or missing X-API-Key header")


def build_server(
    bundle: str | Path,
    server: ServerSettings | None = None,
    recommender: RecommenderSettings | None = None,
    model_metadata: dict | None = None,
) -> ls.LitServer:
    """Assemble the LitServer (not started). `server.run(...)` starts it; `server.twotower_manager` is the
    shared-state manager to shut down afterwards."""
    server = server or ServerSettings()
    recommender = recommender or RecommenderSettings(max_interactions=100)
    manager = SyncManager()
    manager.start()
    coordinator = Coordinator(manager.dict(), str(bundle))
    batching = {
        "max_batch_size": server.max_batch_size,
        "batch_timeout": server.batch_timeout,
        "poll_interval": server.poll_interval,
    }
    apis = [
        RetrieveAPI(str(bundle), recommender, coordinator, **batching),
        EncodeBuyerAPI(str(bundle), recommender, coordinator, **batching),
    ]
    middlewares: list = []
    if server.cors_origins:
        from starlette.middleware.cors import CORSMiddleware

        middlewares.append(
            (
                CORSMiddleware,
                {
                    "allow_origins": server.cors_origins,
                    "allow_methods": ["GET", "POST"],
                    "allow_headers": ["Content-Type", "X-API-Key"],
                },
            )
        )
    lit_server = ls.LitServer(
        apis,
        accelerator=server.accelerator,
        workers_per_device=server.workers_per_device,
        timeout=server.timeout,
        info_path="/litserve/info",
        model_metadata=model_metadata,
        middlewares=middlewares,
    )
    lit_server.twotower_manager = manager
    lit_server.twotower_coordinator = coordinator
    app = lit_server.app
    app.add_middleware(BodyLimitMiddleware, max_bytes=server.max_payload_bytes)
    app.add_middleware(MetricsMiddleware)  # outermost: times and counts every answer, 413s included
    app.add_exception_handler(RequestValidationError, _validation_error)
    _document_validation_errors(app)
    auth = [Depends(lit_server.setup_auth())]
    stale_after = max(5.0, 10 * server.poll_interval)
    reload_lock = asyncio.Lock()

    @app.get("/info", dependencies=auth, tags=["service"])
    async def info() -> JSONResponse:
        workers = coordinator.workers(stale_after)
        primary = next((w for w in workers.values() if w["api"] == "/retrieve"), None)
        model = dict(primary["info"]) if primary else {}
        return JSONResponse(
            {
                **model,
                "server": {
                    "max_batch_size": server.max_batch_size,
                    "batch_timeout": server.batch_timeout,
                    "max_payload_bytes": server.max_payload_bytes,
                    "auth": bool(ls_server.LIT_SERVER_API_KEY),
                },
                "workers": [
                    {k: w[k] for k in ("api", "pid", "version", "ok", "error", "stats")}
                    for w in workers.values()
                ],
            }
        )

    @app.get("/metrics", dependencies=auth, tags=["service"])
    async def metrics() -> Response:
        for w in coordinator.workers(stale_after).values():
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

    @app.post("/admin/reload", dependencies=[Depends(_require_admin)], tags=["admin"])
    async def reload(body: ReloadRequest | None = None) -> JSONResponse:
        if reload_lock.locked():
            raise HTTPException(409, "a reload is already running")
        async with reload_lock:
            path = body.bundle if body and body.bundle else coordinator.state["default_bundle"]
            before = coordinator.workers(stale_after)
            previous = next(iter(before.values()))["path"] if before else None
            results = await _publish_and_wait(coordinator, path, False, before, server.reload_timeout)
            failed = {k: r for k, r in results.items() if not r.get("ok")}
            if not failed:
                versions = sorted({r["version"] for r in results.values()})
                return JSONResponse(
                    {
                        "status": "reloaded",
                        "bundle": path,
                        "model_version": versions[0],
                        "workers": len(results),
                    }
                )
            if previous is not None:  # put workers that did switch back on the bundle the others still serve
                await _publish_and_wait(coordinator, previous, True, before, server.reload_timeout)
            error = next(iter(failed.values()))["error"]
            serving = sorted({w["version"] for w in coordinator.workers(stale_after).values()})
            return JSONResponse(
                {"detail": f"could not load bundle {path}: {error}; still serving {', '.join(serving)}"},
                status_code=422,
            )

    return lit_server


async def _publish_and_wait(
    coordinator: Coordinator, path: str, rollback: bool, workers: dict, timeout: float
) -> dict:
    generation = coordinator.target()["generation"] + 1
    coordinator.state["target"] = {"generation": generation, "path": str(path), "rollback": rollback}
    deadline = time.monotonic() + timeout
    while True:
        current = {k: dict(coordinator.state.get(k) or {}) for k in workers}
        if all(r.get("generation", -1) >= generation for r in current.values()):
            return current
        if time.monotonic() > deadline:
            raise HTTPException(504, f"workers did not finish loading {path} within {timeout:.0f} s")
        await asyncio.sleep(0.05)
