"""The LitAPIs behind /retrieve and /encode_buyer: what runs in the inference worker processes.

Batching: LitServe fails a whole batch when decode/predict/encode raises, so nothing here raises per request.
A request that is valid JSON but cannot be answered (an event type unknown to this bundle, nothing to encode)
travels through the batch as a `QueryError` value and is encoded as its own 4xx response; an unexpected error
in the batched model call is retried request by request, so only the request that caused it gets a 500.

Hot reload: each worker's watcher thread polls the shared target (see reload.py); a new generation is
loaded beside the old model in a loader thread (the watcher keeps heartbeating meanwhile) and swapped in by
one reference assignment, so a batch in flight finishes on the model it started with.

A/B variants: each worker holds one Recommender per variant (`recommenders`, swapped whole); a request is
routed by `VariantsConfig.assign` (buyer hash, or the request's `variant`), a batch is split per variant,
and every response names its variant (body and X-Twotower-Variant header, which /metrics labels by).
A reload names one variant; the others keep their recommenders.

Over 300 lines on purpose: setup, the reload watcher, routing and encoding all read and swap the same
per-worker state (recommenders, resolved paths, generation, cache); the batching loop lives in batching.py.

(Over ~300 lines: the two LitAPIs share one base class with the batching, variant routing and reload
watching every worker runs; the subclasses are a few lines each.)
"""

# no `from __future__ import annotations`: LitServe reads decode_request's annotation as a class
import contextlib
import logging
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import litserve as ls
import orjson
from fastapi import Depends, Response

from twotower.reranking import Reranker
from twotower.serving.auth import API_KEY_HEADER, require_client
from twotower.serving.batching import IdleBlockingBatchedLoop
from twotower.serving.buyer_cache import BuyerVectorCache
from twotower.serving.recommender import (
    BuyerVector,
    Query,
    QueryError,
    Recommendation,
    Recommender,
    RecommenderSettings,
)
from twotower.serving.reload import Coordinator, redact
from twotower.serving.schemas import (
    EncodeBuyerRequest,
    EncodeBuyerResponse,
    RetrieveRequest,
    RetrieveResponse,
)
from twotower.serving.stages import attach
from twotower.serving.variants import VariantError, VariantsConfig

log = logging.getLogger(__name__)
VARIANT_HEADER = "X-Twotower-Variant"


def error_response(status: int, detail: str, headers: dict[str, str] | None = None) -> Response:
    body = orjson.dumps({"detail": detail})
    return Response(body, status_code=status, media_type="application/json", headers=headers)


class _InternalError:
    """Marks a request whose processing failed unexpectedly; encoded as a 500 without internals."""


@dataclass
class _Routed:
    """A decoded request and the variant that answers it."""

    query: Query
    variant: str
    buyer_id: str | None


@dataclass
class _Answer:
    variant: str
    result: Any


class _BundleAPI(ls.LitAPI):
    """Shared worker logic: load the bundles in setup, watch for reloads, batch with per-request errors."""

    route: str = ""  # the endpoint a subclass serves (api_path when none is given)

    def __init__(
        self,
        bundle: str | VariantsConfig,
        settings: RecommenderSettings,
        coordinator: Coordinator,
        api_path: str | None = None,
        max_batch_size: int = 1,
        batch_timeout: float = 0.0,
        poll_interval: float = 0.5,
        reranker: Reranker | None = None,
        buyer_cache: dict | None = None,
    ) -> None:
        loop = IdleBlockingBatchedLoop() if max_batch_size > 1 else "auto"
        super().__init__(
            max_batch_size=max_batch_size,
            batch_timeout=batch_timeout,
            api_path=api_path or self.route,
            loop=loop,
        )
        self.variants = bundle if isinstance(bundle, VariantsConfig) else VariantsConfig.parse(bundle=bundle)
        self.settings = settings
        self.coordinator = coordinator
        self.poll_interval = poll_interval
        self.reranker = reranker
        self.buyer_cache_options = dict(buyer_cache) if buyer_cache else None

    def authorize(self, x_api_key: str | None = Depends(API_KEY_HEADER)) -> None:
        """LitServe's auth hook for this route: the client key, compared in constant time."""
        require_client(x_api_key)

    # -- lifecycle (inference worker process) ---------------------------------------------------------
    def setup(self, device: str) -> None:
        # One cache per worker, shared by the variants (the model version is in the key).
        options = self.buyer_cache_options
        self.cache = BuyerVectorCache(**options) if options else None
        target = self.coordinator.target()
        paths = {v.name: target["paths"].get(v.name, v.bundle) for v in self.variants}
        self.recommenders = {name: self._load(path) for name, path in paths.items()}
        self._resolved = {name: str(Path(path).resolve()) for name, path in paths.items()}
        self._generation = target["generation"]
        self._error: str | None = None
        self._last_logged: str | None = None
        self._stats = {"requests": 0, "batches": 0, "max_batch": 0}
        self._key = f"worker:{self.api_path}:{os.getpid()}"
        self._publish()
        threading.Thread(target=self._watch, name="twotower-reload-watcher", daemon=True).start()
        log.info("%s worker %d serving %s", self.api_path, os.getpid(), self._versions())

    @property
    def recommender(self) -> Recommender:
        """The control variant's recommender (what /info describes)."""
        return self.recommenders[self.variants.control]

    def _load(self, path: str) -> Recommender:
        return attach(Recommender.from_bundle(path, self.settings), self.reranker, self.cache)

    def _versions(self) -> dict[str, str]:
        return {name: r.version for name, r in self.recommenders.items()}

    def _publish(self) -> None:
        control = self.variants.control
        self.coordinator.report(
            self._key,
            {
                "api": self.api_path,
                "pid": os.getpid(),
                "generation": self._generation,
                "ok": self._error is None,
                "error": self._error,
                "version": self.recommender.version,
                "path": self._resolved[control],
                "variants": {
                    name: {"version": r.version, "path": self._resolved[name]}
                    for name, r in self.recommenders.items()
                },
                "info": self.recommender.info(),
                "stats": dict(self._stats),
                "cache": self.cache.stats() if self.cache is not None else None,
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
                self._publish()  # the heartbeat: every poll, whatever happened
            except (EOFError, BrokenPipeError, ConnectionError, FileNotFoundError):
                return  # the manager is gone: the server is shutting down
            except Exception as error:  # keep watching; log a repeated failure once, not every poll
                if repr(error) != self._last_logged:
                    log.exception("reload watcher failed")
                    self._last_logged = repr(error)

    def _apply(self, target: dict) -> None:
        """Load what `target` changes in a loader thread while this thread keeps heartbeating; never raises.

        The named variant is (re)loaded, unless this is a rollback to what it already serves; any other
        variant whose path differs from the target's (a worker that missed a generation) is loaded too."""
        outcome: dict[str, Any] = {"fresh": {}, "resolved": {}}

        def load() -> None:
            try:
                for name in self.recommenders:
                    path = target.get("paths", {}).get(name, self._resolved[name])
                    if name == target.get("variant", self.variants.control):
                        path = target["path"]
                    resolved = str(Path(str(path)).resolve())
                    named = name == target.get("variant", self.variants.control)
                    if resolved == self._resolved[name] and (target.get("rollback") or not named):
                        continue  # already served: rolling back to it, or another variant's reload
                    outcome["fresh"][name] = self._load(resolved)
                    outcome["resolved"][name] = resolved
            except Exception as error:  # noqa: BLE001 - reported to the reload caller, old model kept
                outcome["error"] = redact(f"{type(error).__name__}: {error}")

        loader = threading.Thread(target=load, name="twotower-bundle-loader", daemon=True)
        loader.start()
        while loader.is_alive():
            loader.join(self.poll_interval)
            if loader.is_alive():
                with contextlib.suppress(Exception):  # a heartbeat is best effort
                    self._publish()
        if "error" in outcome:
            log.error("reload failed; still serving %s: %s", self._versions(), outcome["error"])
            self._generation, self._error = target["generation"], outcome["error"]
            return
        if outcome["fresh"]:
            # one swap: batches in flight keep the dict they captured
            self.recommenders = {**self.recommenders, **outcome["fresh"]}
            self._resolved = {**self._resolved, **outcome["resolved"]}
            if self.cache is not None:
                self.cache.clear()  # the version is in the key; clearing frees the old model's entries now
            log.info("%s worker %d now serves %s", self.api_path, os.getpid(), self._versions())
        self._generation, self._error = target["generation"], None

    # -- request path ----------------------------------------------------------------------------------
    def _to_query(self, request: Any) -> _Routed | QueryError | _InternalError:
        try:
            buyer_id = getattr(request, "buyer_id", None)
            try:
                variant = self.variants.assign(buyer_id, override=getattr(request, "variant", None))
            except VariantError as error:
                return QueryError(str(error), error.status)
            interactions = request.recent_interactions
            stamps = [i.epoch() for i in interactions]
            filters = getattr(request, "filters", None)
            query = Query(
                product_ids=[i.product_id for i in interactions],
                event_types=[i.event_type for i in interactions],
                timestamps=stamps if any(s is not None for s in stamps) else None,
                k=getattr(request, "k", 1),
                exclude_seen=getattr(request, "exclude_seen", False),
                categories=filters.categories if filters else None,
                brands=filters.brands if filters else None,
            )
            return _Routed(query, variant, buyer_id)
        except Exception:
            log.exception("could not decode a request")
            return _InternalError()

    def _run(self, recommender: Recommender, queries: list[Query]) -> list:
        raise NotImplementedError

    def _run_safely(self, recommender: Recommender, queries: list[Query]) -> list:
        try:
            return self._run(recommender, queries)
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
            return results

    def predict(self, x: Any) -> Any:
        batch = x if isinstance(x, list) else [x]
        recommenders = self.recommenders  # captured once: a concurrent reload cannot change it mid-batch
        self._stats["requests"] += len(batch)
        self._stats["batches"] += 1
        self._stats["max_batch"] = max(self._stats["max_batch"], len(batch))
        groups: dict[str, list[int]] = {}
        for i, item in enumerate(batch):
            if isinstance(item, _Routed):
                groups.setdefault(item.variant, []).append(i)
        merged = list(batch)
        for variant, slots in groups.items():
            recommender = recommenders[variant]
            queries = [batch[i].query for i in slots]
            if self.cache is not None:
                for i, query in zip(slots, queries, strict=True):
                    query.cache_key = self.cache.key(
                        batch[i].buyer_id, query.product_ids, query.event_types, query.timestamps,
                        recommender.version,
                    )  # fmt: skip
            for i, result in zip(slots, self._run_safely(recommender, queries), strict=True):
                merged[i] = _Answer(variant, result)
        return merged if isinstance(x, list) else merged[0]

    def _encode(self, output: Any) -> Response:
        variant = None
        if isinstance(output, _Answer):
            variant, output = output.variant, output.result
        headers = {VARIANT_HEADER: variant} if variant else None
        if isinstance(output, QueryError):
            return error_response(output.status, str(output), headers)
        if isinstance(output, _InternalError):
            return error_response(500, "Internal server error", headers)
        payload = {**self._payload(output), "variant": variant}
        return Response(orjson.dumps(payload), media_type="application/json", headers=headers)

    def _payload(self, output: Any) -> dict:
        raise NotImplementedError


class RetrieveAPI(_BundleAPI):
    """POST /retrieve: top-k products for a buyer's recent interactions."""

    route = "/retrieve"

    def decode_request(self, request: RetrieveRequest) -> _Routed | QueryError | _InternalError:
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

    route = "/encode_buyer"

    def decode_request(self, request: EncodeBuyerRequest) -> _Routed | QueryError | _InternalError:
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
