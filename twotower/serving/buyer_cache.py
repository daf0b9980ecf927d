"""An in-process LRU cache of buyer vectors with size and TTL limits, for repeated-buyer traffic.

Keyed by (buyer_id, a digest of the interactions sent, model version): a buyer who sends a new event,
or a reloaded model, misses instead of getting a stale vector. Requests without a buyer id are not
cached (`key` returns None), so anonymous traffic cannot evict known buyers. The vector depends only on
the interactions (product ids, event types and timestamps: timestamps decide which events survive the
history cap), not on k or filters, so those are not in the key.

Thread-safe (one lock; every operation is O(1)): inference workers read and fill it from their batch
thread while /admin/reload calls `clear()` from another. Counters are monotonic (Prometheus counters);
`clear()` empties the entries but keeps the counts. Memory: about max_entries * D * 4 bytes (10K buyers
x 384 dims = 15 MB). The clock is injectable so tests need no sleeps.

Example (the intended call site in the worker, once wired):
    >>> cache = BuyerVectorCache(max_entries=10_000, ttl_s=300.0)          # per worker, if enabled
    >>> key = cache.key(request.buyer_id, query.product_ids, query.event_types, query.timestamps,
    ...                 recommender.version)
    >>> vector = cache.get(key)                                            # None on a miss (or key None)
    >>> if vector is None: vector = ...buyer tower...; cache.put(key, vector)
    >>> cache.clear()                                                      # on reload
    >>> cache.stats()  # {"hits": ..., "misses": ..., "evictions": ..., "expirations": ..., "size": ...}
"""

from __future__ import annotations

import hashlib
import json
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import NamedTuple

import numpy as np

__all__ = ["BuyerVectorCache", "CacheKey", "interactions_digest"]


class CacheKey(NamedTuple):
    buyer_id: str
    interactions: bytes  # interactions_digest(...)
    model_version: str


def interactions_digest(
    product_ids: Sequence[str],
    event_types: Sequence[str],
    timestamps: Sequence[float | None] | None = None,
) -> bytes:
    """16-byte blake2b of the interactions exactly as sent (JSON, so no separator can be forged by an id).

    Raw spellings are hashed: two spellings of one product miss each other (a wasted computation, never a
    wrong vector)."""
    payload = json.dumps(
        [list(product_ids), list(event_types), None if timestamps is None else list(timestamps)],
        ensure_ascii=False,
        separators=(",", ":"),
    )
    return hashlib.blake2b(payload.encode(), digest_size=16).digest()


class _Entry(NamedTuple):
    vector: np.ndarray
    expires_at: float


class BuyerVectorCache:
    """LRU of read-only float32 vectors; `ttl_s=None` means entries never expire (only LRU eviction)."""

    def __init__(
        self,
        max_entries: int = 10_000,
        ttl_s: float | None = 300.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if isinstance(max_entries, bool) or not isinstance(max_entries, int) or max_entries < 1:
            raise ValueError(f"buyer cache max_entries must be an integer >= 1; got {max_entries!r}")
        if ttl_s is not None and not (ttl_s > 0 and math.isfinite(ttl_s)):
            raise ValueError(f"buyer cache ttl_s must be a number of seconds > 0 or null; got {ttl_s!r}")
        self.max_entries = max_entries
        self.ttl_s = ttl_s
        self._clock = clock
        self._entries: OrderedDict[CacheKey, _Entry] = OrderedDict()  # oldest use first
        self._lock = threading.Lock()
        self.hits = self.misses = self.evictions = self.expirations = self.clears = 0

    @staticmethod
    def key(
        buyer_id: str | None,
        product_ids: Sequence[str],
        event_types: Sequence[str],
        timestamps: Sequence[float | None] | None,
        model_version: str,
    ) -> CacheKey | None:
        """The cache key of a request, or None for an anonymous one (not cached)."""
        if buyer_id is None or buyer_id == "":
            return None
        return CacheKey(buyer_id, interactions_digest(product_ids, event_types, timestamps), model_version)

    def get(self, key: CacheKey | None) -> np.ndarray | None:
        """The cached vector (read-only) and a hit, or None and a miss (None keys are neither)."""
        if key is None:
            return None
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None and entry.expires_at <= self._clock():
                del self._entries[key]
                self.expirations += 1
                entry = None
            if entry is None:
                self.misses += 1
                return None
            self._entries.move_to_end(key)
            self.hits += 1
            return entry.vector

    def put(self, key: CacheKey | None, vector: np.ndarray) -> None:
        """Store a copy of `vector` (callers may reuse their buffers); evicts the least recently used."""
        if key is None:
            return
        stored = np.array(vector, dtype=np.float32, copy=True)
        stored.setflags(write=False)  # a hit hands out the cached array itself: nobody may change it
        with self._lock:
            expires_at = math.inf if self.ttl_s is None else self._clock() + self.ttl_s
            self._entries[key] = _Entry(stored, expires_at)
            self._entries.move_to_end(key)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)
                self.evictions += 1

    def clear(self) -> None:
        """Drop every entry (on reload); the counters keep counting."""
        with self._lock:
            self._entries.clear()
            self.clears += 1

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def stats(self) -> dict[str, int]:
        """Counters for /metrics (hits, misses, evictions, expirations, clears) and the current size."""
        with self._lock:
            return {
                "hits": self.hits,
                "misses": self.misses,
                "evictions": self.evictions,
                "expirations": self.expirations,
                "clears": self.clears,
                "size": len(self._entries),
            }
