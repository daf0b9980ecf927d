"""The HTTP service assembled: LitServe server + our routes (/info, /metrics, /admin/reload) + middlewares.

Process layout (LitServe): the main process starts a multiprocessing manager (shared reload state, see
reload.py), one inference worker per LitAPI (workers.py; spawned, each loads the bundle in `setup`, so
/health answers 503 until every worker has loaded) and `api_servers` uvicorn front ends. FastAPI validates
requests against the pydantic models (schemas.py) in the front end, so malformed requests get a 422 there
and never join a batch. Auth is in auth.py, metrics in metrics.py, body limits in middleware.py.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from multiprocessing.managers import SyncManager
from pathlib import Path
from typing import Any

import litserve as ls
from fastapi import Depends, HTTPException
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.middleware.gzip import GZipMiddleware

from twotower.reranking import Reranker
from twotower.serving.auth import (
    API_KEY_HEADER,
    DocsAuthMiddleware,
    client_key,
    is_admin,
    require_admin,
    require_client,
)
from twotower.serving.metrics import MetricsMiddleware, metrics_response
from twotower.serving.middleware import BodyGuardMiddleware, document_validation_errors, validation_error
from twotower.serving.recommender import RecommenderSettings
from twotower.serving.reload import Coordinator, ReloadError, reload, resolve_bundle
from twotower.serving.schemas import ReloadRequest
from twotower.serving.settings import ServerSettings
from twotower.serving.variants import VariantsConfig
from twotower.serving.workers import EncodeBuyerAPI, RetrieveAPI

__all__ = ["Service", "ServerSettings", "build_server"]


@dataclass
class Service:
    """A built (not started) server: `run` blocks until shutdown, `close` stops the shared-state manager."""

    lit_server: ls.LitServer
    manager: SyncManager
    coordinator: Coordinator
    settings: ServerSettings

    def run(self, host: str = "127.0.0.1", port: int = 8000) -> None:
        s = self.settings
        self.lit_server.run(
            host=host,
            port=port,
            num_api_servers=s.api_servers,
            generate_client_file=False,
            log_level=s.log_level,
            api_server_worker_type=s.api_server_worker_type,
            # uvicorn options (LitServe passes them through): idle keep-alive connections close after this
            timeout_keep_alive=s.timeout_keep_alive,
        )

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.manager.shutdown()


def _is_gzip(entry: Any) -> bool:
    """Whether a LitServe middleware entry (a class, or a (class, kwargs) pair) is starlette's gzip."""
    return (entry[0] if isinstance(entry, tuple) else entry) is GZipMiddleware


def build_server(
    bundle: str | Path | VariantsConfig,
    server: ServerSettings | None = None,
    recommender: RecommenderSettings | None = None,
    model_metadata: dict | None = None,
    reranker: Reranker | None = None,
    buyer_cache: dict | None = None,
) -> Service:
    """Assemble the service over `bundle` (one path, or A/B variants; not started: call `.run()`, then
    `.close()`). `reranker`: the second stage (None = retrieval order); `buyer_cache`: BuyerVectorCache
    options per worker (None = off)."""
    server = server or ServerSettings()
    recommender = recommender or RecommenderSettings()
    variants = bundle if isinstance(bundle, VariantsConfig) else VariantsConfig.parse(bundle=str(bundle))
    manager = SyncManager()
    manager.start()
    bundles = {v.name: v.bundle for v in variants}
    coordinator = Coordinator(manager.dict(), bundles, manager.Lock())
    options = {
        "max_batch_size": server.max_batch_size,
        "batch_timeout": server.batch_timeout,
        "poll_interval": server.poll_interval,
        "reranker": reranker,
        "buyer_cache": buyer_cache,
    }
    apis = [
        RetrieveAPI(variants, recommender, coordinator, **options),
        EncodeBuyerAPI(variants, recommender, coordinator, **{**options, "reranker": None}),  # vectors only
    ]
    middlewares: list = []
    if server.cors_origins:
        from starlette.middleware.cors import CORSMiddleware

        cors = {"allow_origins": server.cors_origins, "allow_methods": ["GET", "POST"]}
        middlewares.append((CORSMiddleware, {**cors, "allow_headers": ["Content-Type", "X-API-Key"]}))
    lit_server = ls.LitServer(
        apis,
        accelerator=server.accelerator,
        workers_per_device=server.workers_per_device,
        timeout=server.timeout,
        # LitServe's info page shows static settings only; our /info reports the live workers (versions, errors)
        info_path="/litserve/info",
        model_metadata=model_metadata,
        middlewares=middlewares,
        max_payload_size=server.max_payload_bytes,  # LitServe counts the streamed bytes (413 beyond)
        fast_queue=server.fast_queue,
    )
    # LitServe always gzips answers of >= 1000 bytes (when the client accepts gzip); the threshold is a setting
    lit_server.middlewares = [
        (GZipMiddleware, {"minimum_size": server.gzip_min_bytes}) if _is_gzip(entry) else entry
        for entry in lit_server.middlewares
        if not (_is_gzip(entry) and server.gzip_min_bytes is None)
    ]
    # LitServe waits this long for each front end to finish open requests on shutdown (its default, 30 s,
    # would break the 10 s shutdown bound); there is no constructor argument for it.
    lit_server.uvicorn_graceful_timeout = server.graceful_timeout
    app = lit_server.app
    app.add_middleware(BodyGuardMiddleware, max_bytes=server.max_payload_bytes, timeout=server.body_timeout)
    if server.protect_docs:
        app.add_middleware(DocsAuthMiddleware)
    app.add_middleware(MetricsMiddleware)  # outermost: times and counts every answer, 413s and 401s included
    app.add_exception_handler(RequestValidationError, validation_error)
    document_validation_errors(app)
    _add_routes(app, coordinator, server, variants)
    return Service(lit_server, manager, coordinator, server)


def _add_routes(app: Any, coordinator: Coordinator, server: ServerSettings, variants: VariantsConfig) -> None:
    guard = [Depends(require_client)] if server.protect_docs else []
    stale_after = max(5.0, 10 * server.poll_interval)

    @app.get("/info", dependencies=guard, tags=["service"])
    async def info(x_api_key: str | None = Depends(API_KEY_HEADER)) -> JSONResponse:
        workers = coordinator.workers(stale_after)
        if not workers:
            raise HTTPException(503, "no live inference worker: the server is starting or unhealthy")
        admin = is_admin(x_api_key)
        primary = next((w for w in workers.values() if w["api"] == "/retrieve"), None)
        model = dict(primary["info"]) if primary else {}
        served = (primary or {}).get("variants") or {}
        model["variants"] = {
            v.name: {
                "share": v.share,
                "model_version": served.get(v.name, {}).get("version"),
                "bundle": str(served.get(v.name, {}).get("path", v.bundle)),
            }
            for v in variants
        }
        if not admin:  # absolute paths and PIDs are for the operator only
            model["bundle"] = Path(str(model.get("bundle", ""))).name
            for shown in model["variants"].values():
                shown["bundle"] = Path(shown["bundle"]).name
        fields = (
            ("api", "pid", "version", "ok", "error", "stats") if admin else ("api", "version", "ok", "stats")
        )
        return JSONResponse(
            {
                **model,
                "server": {
                    "max_batch_size": server.max_batch_size,
                    "batch_timeout": server.batch_timeout,
                    "max_payload_bytes": server.max_payload_bytes,
                    "auth": bool(client_key()),
                },
                "workers": [{k: w.get(k) for k in fields} for w in workers.values()],
            }
        )

    @app.get("/metrics", dependencies=guard, tags=["service"])
    async def metrics() -> Any:
        return metrics_response(coordinator.workers(stale_after))

    @app.post("/admin/reload", dependencies=[Depends(require_admin)], tags=["admin"])
    async def reload_bundle(body: ReloadRequest | None = None) -> JSONResponse:
        try:
            variant = (body.variant if body else None) or variants.control
            if variant not in variants.names:  # schemas checks too, when serve.py configured it
                raise ReloadError(
                    422, f"unknown variant {variant!r}; this service serves: {', '.join(variants.names)}"
                )
            default = coordinator.state["default_bundles"][variant]
            path, shown = resolve_bundle(body.bundle if body else None, server.bundle_root, default)
            answer = await reload(coordinator, path, shown, stale_after, server.reload_timeout, variant)
        except ReloadError as error:
            return JSONResponse({"detail": error.detail}, status_code=error.status)
        return JSONResponse(answer)
