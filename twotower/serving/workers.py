"""The LitAPIs behind /retrieve and /encode_buyer: what runs in the inference worker processes.

Batching: LitServe fails a whole batch when decode/predict/encode raises, so nothing here raises per request.
A request that is valid JSON but cannot be answered (an event type unknown to this bundle, nothing to encode)
travels through the batch as a `QueryError` value and is encoded as its own 4xx response; an unexpected error
in the batched model call is retried request by request, so only the request that caused it gets a 500.

Hot reload: each worker's watcher thread polls the shared target (see reload.py); a new generation is
loaded beside the old model in a loader thread (the watcher keeps heartbeating meanwhile) and swapped in by
one reference assignment, so a batch in flight finishes on the model it started with.
"""

# no `from __future__ import annotations`: LitServe reads decode_request's annotation as a class
import contextlib
import logging
import os
import threading
import time
from pathlib import Path
from queue import Empty
from typing import Any

import litserve as ls
import orjson
from fastapi import Depends, Response
from litserve.loops.base import _SENTINEL_VALUE, _StopLoopError, collate_requests
from litserve.loops.simple_loops import BatchedLoop
from litserve.utils import LitAPIStatus, LoopResponseType

from twotower.serving.auth import API_KEY_HEADER, require_client
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

log = logging.getLogger(__name__)


def error_response(status: int, detail: str) -> Response:
    return Response(orjson.dumps({"detail": detail}), status_code=status, media_type="application/json")


class _InternalError:
    """Marks a request whose processing failed unexpectedly; encoded as a 500 without internals."""


class _Prepend:
    """A queue view that yields `first` before the queue's own items (for collate_requests)."""

    def __init__(self, first: Any, queue: Any) -> None:
        self.first, self.queue = first, queue

    def get(self, block: bool = True, timeout: float | None = None) -> Any:
        if self.first is not None:
            item, self.first = self.first, None
            return item
        return self.queue.get(block=block, timeout=timeout)

    def get_nowait(self) -> Any:
        return self.get(block=False)


class IdleBlockingBatchedLoop(BatchedLoop):
    """LitServe's batched loop, except that it blocks while the queue is empty.

    LitServe's `collate_requests` asks the (manager-process) queue for an item every millisecond even when
    no request arrives, which costs an idle server a fifth of a core. This loop first waits up to 1 s for one
    request (no CPU), then lets LitServe's own `collate_requests` fill the batch within `batch_timeout`.
    """

    def get_batch_requests(self, lit_api: ls.LitAPI, request_queue: Any, transport: Any) -> tuple[list, list]:
        try:
            first = request_queue.get(timeout=1.0)
        except Empty:
            return [], []
        queue = _Prepend(first, request_queue)
        payloads, timed_out = collate_requests(self, lit_api, queue, transport)
        if queue.first is not None:
            # collate_requests skips its loop when batch_timeout has already passed on entry (a busy machine
            # can deschedule it for longer than 1 ms) and returns without taking `first`: take it here the
            # way it would, or that request would never be answered.
            if first == _SENTINEL_VALUE:
                raise _StopLoopError()
            response_queue_id, uid, timestamp, x_enc = first
            self.put_response(
                transport, response_queue_id, uid, (), LitAPIStatus.START, LoopResponseType.REGULAR
            )
            timeout = lit_api.request_timeout
            if timeout not in (-1, False, None) and time.monotonic() - timestamp > timeout:
                timed_out.append((response_queue_id, uid))
            else:
                payloads.append((response_queue_id, uid, x_enc))
        return payloads, timed_out


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
        poll_interval: float = 0.5,
    ) -> None:
        loop = IdleBlockingBatchedLoop() if max_batch_size > 1 else "auto"
        super().__init__(
            max_batch_size=max_batch_size, batch_timeout=batch_timeout, api_path=api_path, loop=loop
        )
        self.bundle_path = bundle
        self.settings = settings
        self.coordinator = coordinator
        self.poll_interval = poll_interval

    def authorize(self, x_api_key: str | None = Depends(API_KEY_HEADER)) -> None:
        """LitServe's auth hook for this route: the client key, compared in constant time."""
        require_client(x_api_key)

    # -- lifecycle (inference worker process) ---------------------------------------------------------
    def setup(self, device: str) -> None:
        target = self.coordinator.target()
        self.recommender = Recommender.from_bundle(target["path"], self.settings)
        self._generation, self._resolved = target["generation"], str(Path(target["path"]).resolve())
        self._error: str | None = None
        self._last_logged: str | None = None
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
                self._publish()  # the heartbeat: every poll, whatever happened
            except (EOFError, BrokenPipeError, ConnectionError, FileNotFoundError):
                return  # the manager is gone: the server is shutting down
            except Exception as error:  # keep watching; log a repeated failure once, not every poll
                if repr(error) != self._last_logged:
                    log.exception("reload watcher failed")
                    self._last_logged = repr(error)

    def _apply(self, target: dict) -> None:
        """Load target["path"] in a loader thread while this thread keeps heartbeating; never raises."""
        outcome: dict[str, Any] = {}

        def load() -> None:
            try:
                outcome["resolved"] = str(Path(str(target["path"])).resolve())
                if target.get("rollback") and outcome["resolved"] == self._resolved:
                    return  # this worker never left the bundle being rolled back to
                outcome["fresh"] = Recommender.from_bundle(outcome["resolved"], self.settings)
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
            log.error("reload failed; still serving %s: %s", self.recommender.version, outcome["error"])
            self._generation, self._error = target["generation"], outcome["error"]
            return
        if "fresh" in outcome:
            self.recommender = outcome["fresh"]  # one swap: batches in flight keep the one they captured
            self._resolved = outcome["resolved"]
            log.info("%s worker %d now serves %s", self.api_path, os.getpid(), self.recommender.version)
        self._generation, self._error = target["generation"], None

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
            return error_response(output.status, str(output))
        if isinstance(output, _InternalError):
            return error_response(500, "Internal server error")
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
