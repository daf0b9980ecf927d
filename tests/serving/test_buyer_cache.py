"""Buyer-vector cache: keys, TTL, LRU order, counters, clear, read-only vectors, thread safety."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from twotower.serving.buyer_cache import BuyerVectorCache, interactions_digest


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def key(cache: BuyerVectorCache, buyer: str = "b1", items: tuple = ("p1", "p2"), version: str = "v1"):
    return cache.key(buyer, list(items), ["view"] * len(items), None, version)


def vec(value: float) -> np.ndarray:
    return np.full(4, value, dtype=np.float32)


def test_hit_after_put_returns_the_vector() -> None:
    cache = BuyerVectorCache(max_entries=10, ttl_s=60, clock=FakeClock())
    assert cache.get(key(cache)) is None
    cache.put(key(cache), vec(1.0))
    np.testing.assert_array_equal(cache.get(key(cache)), vec(1.0))
    assert cache.stats() == {"hits": 1, "misses": 1, "evictions": 0, "expirations": 0, "clears": 0, "size": 1}


def test_changed_interactions_or_model_version_miss() -> None:
    cache = BuyerVectorCache(clock=FakeClock())
    cache.put(key(cache), vec(1.0))
    assert cache.get(key(cache, items=("p1", "p2", "p3"))) is None  # a new event
    assert cache.get(key(cache, items=("p2", "p1"))) is None  # order matters to the tower
    assert cache.get(key(cache, version="v2")) is None  # a reloaded model
    assert cache.get(key(cache, buyer="b2")) is None
    timed = cache.key("b1", ["p1", "p2"], ["view", "view"], [1.0, 2.0], "v1")
    assert cache.get(timed) is None  # timestamps decide which events survive the history cap
    assert cache.get(cache.key("b1", ["p1", "p2"], ["view", "purchase"], None, "v1")) is None
    assert cache.stats()["misses"] == 6 and cache.stats()["hits"] == 0


def test_digest_cannot_be_forged_by_separators_in_ids() -> None:
    assert interactions_digest(["a,b"], ["view"]) != interactions_digest(["a", "b"], ["view"])
    assert interactions_digest(["a"], ["view"], None) != interactions_digest(["a"], ["view"], [None])


def test_anonymous_requests_are_not_cached() -> None:
    cache = BuyerVectorCache(clock=FakeClock())
    assert cache.key(None, ["p1"], ["view"], None, "v1") is None
    cache.put(None, vec(1.0))
    assert cache.get(None) is None
    assert cache.stats() == {"hits": 0, "misses": 0, "evictions": 0, "expirations": 0, "clears": 0, "size": 0}


def test_ttl_expiry() -> None:
    clock = FakeClock()
    cache = BuyerVectorCache(ttl_s=30, clock=clock)
    cache.put(key(cache), vec(1.0))
    clock.now += 29.9
    assert cache.get(key(cache)) is not None
    clock.now += 0.1  # 30 s after the put: expired (a hit does not extend the TTL)
    assert cache.get(key(cache)) is None
    assert cache.stats()["expirations"] == 1 and len(cache) == 0


def test_no_ttl_never_expires() -> None:
    clock = FakeClock()
    cache = BuyerVectorCache(ttl_s=None, clock=clock)
    cache.put(key(cache), vec(1.0))
    clock.now += 1e9
    assert cache.get(key(cache)) is not None


def test_lru_evicts_the_least_recently_used() -> None:
    cache = BuyerVectorCache(max_entries=2, ttl_s=None, clock=FakeClock())
    a, b, c = (key(cache, buyer=name) for name in "abc")
    cache.put(a, vec(1.0))
    cache.put(b, vec(2.0))
    assert cache.get(a) is not None  # a is now the most recently used
    cache.put(c, vec(3.0))  # evicts b, not a
    assert cache.get(b) is None
    assert cache.get(a) is not None and cache.get(c) is not None
    assert cache.stats()["evictions"] == 1 and len(cache) == 2


def test_put_of_an_existing_key_refreshes_without_evicting() -> None:
    clock = FakeClock()
    cache = BuyerVectorCache(max_entries=2, ttl_s=10, clock=clock)
    cache.put(key(cache), vec(1.0))
    clock.now += 8
    cache.put(key(cache), vec(2.0))
    clock.now += 8  # 16 s after the first put, 8 after the second
    np.testing.assert_array_equal(cache.get(key(cache)), vec(2.0))
    assert cache.stats()["evictions"] == 0 and len(cache) == 1


def test_clear_drops_entries_and_keeps_counters() -> None:
    cache = BuyerVectorCache(clock=FakeClock())
    cache.put(key(cache), vec(1.0))
    cache.get(key(cache))
    cache.clear()
    assert cache.get(key(cache)) is None
    assert cache.stats() == {"hits": 1, "misses": 1, "evictions": 0, "expirations": 0, "clears": 1, "size": 0}


def test_cached_vectors_are_copies_and_read_only() -> None:
    cache = BuyerVectorCache(clock=FakeClock())
    buffer = vec(1.0)
    cache.put(key(cache), buffer)
    buffer[:] = 9.0  # the caller reuses its buffer
    hit = cache.get(key(cache))
    np.testing.assert_array_equal(hit, vec(1.0))
    with pytest.raises(ValueError, match="read-only"):
        hit[0] = 5.0


@pytest.mark.parametrize(
    ("kwargs", "message"), [({"max_entries": 0}, "max_entries"), ({"ttl_s": 0}, "ttl_s")]
)
def test_bad_limits(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        BuyerVectorCache(**kwargs)


def test_concurrent_use_keeps_the_size_bound_and_the_counts() -> None:
    cache = BuyerVectorCache(max_entries=50, ttl_s=None)
    gets_per_thread = 2000

    def work(offset: int) -> None:
        for i in range(gets_per_thread):
            k = key(cache, buyer=f"b{(i + offset) % 80}")
            if cache.get(k) is None:
                cache.put(k, vec(float(i)))
            if i % 500 == 0:
                cache.clear()  # a reload racing the workers

    threads = [threading.Thread(target=work, args=(t * 7,)) for t in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    stats = cache.stats()
    assert stats["hits"] + stats["misses"] == 4 * gets_per_thread
    assert stats["size"] <= 50
