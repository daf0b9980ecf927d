"""LitServe's batched loop, made to block while idle (used by the inference workers, workers.py)."""

# no `from __future__ import annotations`: kept like workers.py (LitServe inspects annotations there)
import time
from queue import Empty
from typing import Any

import litserve as ls
from litserve.loops.base import _SENTINEL_VALUE, _StopLoopError, collate_requests
from litserve.loops.simple_loops import BatchedLoop
from litserve.utils import LitAPIStatus, LoopResponseType

__all__ = ["IdleBlockingBatchedLoop"]


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
