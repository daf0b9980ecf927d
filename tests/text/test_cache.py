"""TextFeatureCache: hits/misses, dedupe, isolation between encoders, concurrency, corrupt shards."""

from __future__ import annotations

import hashlib
import multiprocessing as mp
import threading
import warnings
from pathlib import Path

import numpy as np
import pytest

from twotower.text.cache import CorruptShardWarning, TextFeatureCache, encoder_dirname
from twotower.text.encoders import TextEncoder


class CountingEncoder:
    """Deterministic fake encoder: a text's vector is derived from its hash (and the encoder id)."""

    trainable = False

    def __init__(self, id: str = "fake-v1", dim: int = 8) -> None:
        self.id = id
        self.dim = dim
        self.calls = 0
        self.encoded: list[str] = []

    def vector(self, text: str) -> np.ndarray:
        seed = int.from_bytes(hashlib.sha1(f"{self.id}|{text}".encode()).digest()[:8], "little")
        return np.random.default_rng(seed).standard_normal(self.dim).astype(np.float32)

    def encode(self, texts: list[str], batch_size: int = 256, show_progress: bool = False) -> np.ndarray:
        self.calls += 1
        self.encoded.extend(texts)
        return np.stack([self.vector(t) for t in texts]) if texts else np.zeros((0, self.dim), np.float32)

    def expected(self, texts: list[str]) -> np.ndarray:
        return np.stack([self.vector(t) for t in texts])


TEXTS = ["خاتم ذهب", "سلسال ذهب", "هاتف ذكي", "Samsung Galaxy", "", "حقيبة يد جلد"]


def shards(cache: TextFeatureCache, encoder_id: str) -> list[Path]:
    return sorted(cache.encoder_dir(encoder_id).glob("shard-*.npz"))


def test_fake_encoder_satisfies_protocol() -> None:
    assert isinstance(CountingEncoder(), TextEncoder)


def test_second_call_does_no_encoding(tmp_path: Path) -> None:
    enc = CountingEncoder()
    cache = TextFeatureCache(tmp_path)
    first = cache.encode(enc, TEXTS, show_progress=False)
    assert first.shape == (len(TEXTS), enc.dim) and first.dtype == np.float32
    np.testing.assert_array_equal(first, enc.expected(TEXTS))
    assert (cache.stats.hits, cache.stats.misses) == (0, len(TEXTS))

    enc.encoded.clear()
    # A new cache object on the same directory = a new run.
    second = TextFeatureCache(tmp_path).encode(enc, TEXTS, show_progress=False)
    assert enc.encoded == []
    np.testing.assert_array_equal(second, first)


def test_partial_overlap_encodes_only_new_texts(tmp_path: Path) -> None:
    enc = CountingEncoder()
    cache = TextFeatureCache(tmp_path)
    cache.encode(enc, TEXTS[:3], show_progress=False)
    enc.encoded.clear()

    texts = TEXTS[1:]  # two cached, three new
    out = cache.encode(enc, texts, show_progress=False)
    assert sorted(enc.encoded) == sorted(TEXTS[3:])
    assert cache.stats.hits == 2 and cache.stats.misses == 3
    np.testing.assert_array_equal(out, enc.expected(texts))


def test_duplicates_within_a_call_are_encoded_once(tmp_path: Path) -> None:
    enc = CountingEncoder()
    cache = TextFeatureCache(tmp_path)
    texts = ["a", "b", "a", "a", "c", "b"]
    out = cache.encode(enc, texts, show_progress=False)
    assert sorted(enc.encoded) == ["a", "b", "c"]
    assert cache.stats.requested == 6 and cache.stats.unique == 3
    np.testing.assert_array_equal(out, enc.expected(texts))


def test_two_encoders_do_not_collide(tmp_path: Path) -> None:
    a, b = CountingEncoder("st:model-a"), CountingEncoder("st:model/a")  # same sanitized name
    assert encoder_dirname(a.id) != encoder_dirname(b.id)
    cache = TextFeatureCache(tmp_path)
    out_a = cache.encode(a, TEXTS, show_progress=False)
    out_b = cache.encode(b, TEXTS, show_progress=False)
    assert cache.stats.misses == len(TEXTS)  # b found nothing of a's
    np.testing.assert_array_equal(out_a, a.expected(TEXTS))
    np.testing.assert_array_equal(out_b, b.expected(TEXTS))
    assert not np.allclose(out_a, out_b)


def test_batches_and_shards(tmp_path: Path) -> None:
    enc = CountingEncoder()
    cache = TextFeatureCache(tmp_path)
    texts = [f"product {i}" for i in range(25)]
    out = cache.encode(enc, texts, batch_size=4, show_progress=False, shard_size=10)
    assert enc.calls == 8  # shards of 10, 10, 5 texts, each in batches of <=4: 3 + 3 + 2
    assert len(shards(cache, enc.id)) == 3
    np.testing.assert_array_equal(out, enc.expected(texts))
    enc.encoded.clear()
    np.testing.assert_array_equal(cache.encode(enc, texts[::-1], show_progress=False), out[::-1])
    assert enc.encoded == []


def test_empty_input_and_bad_types(tmp_path: Path) -> None:
    enc = CountingEncoder()
    cache = TextFeatureCache(tmp_path)
    assert cache.encode(enc, [], show_progress=False).shape == (0, enc.dim)
    with pytest.raises(TypeError, match=r"texts\[1\] is float"):
        cache.encode(enc, ["ok", float("nan")], show_progress=False)


def test_encoder_output_not_matching_dim_is_a_clear_error(tmp_path: Path) -> None:
    class LyingEncoder(CountingEncoder):
        def encode(self, texts: list[str], batch_size: int = 256, show_progress: bool = False) -> np.ndarray:
            return super().encode(texts)[:, :8]  # claims dim 16, returns 8

    enc = LyingEncoder(dim=16)
    with pytest.raises(ValueError, match="expected \\(2, 16\\)"):
        TextFeatureCache(tmp_path).encode(enc, ["a", "b"], show_progress=False)


def test_corrupt_shard_is_skipped_with_warning(tmp_path: Path) -> None:
    enc = CountingEncoder()
    cache = TextFeatureCache(tmp_path)
    cache.encode(enc, TEXTS[:3], show_progress=False)
    cache.encode(enc, TEXTS[3:], show_progress=False)
    first, second = shards(cache, enc.id)
    good = np.load(first)["keys"]  # the texts of the shard we keep intact
    second.write_bytes(second.read_bytes()[:50])  # truncated, e.g. a disk-full copy
    enc.encoded.clear()

    with pytest.warns(CorruptShardWarning, match="Skipping unreadable text-cache shard"):
        out = cache.encode(enc, TEXTS, show_progress=False)
    np.testing.assert_array_equal(out, enc.expected(TEXTS))
    assert cache.stats.hits == len(good) and cache.stats.misses == len(TEXTS) - len(good)


def test_shard_with_wrong_dim_is_skipped_with_warning(tmp_path: Path) -> None:
    cache = TextFeatureCache(tmp_path)
    cache.encode(CountingEncoder("same-id", dim=4), TEXTS, show_progress=False)
    enc = CountingEncoder("same-id", dim=8)  # e.g. a changed model published under the same id
    with pytest.warns(CorruptShardWarning, match=r"expected float32 \(6, 8\)"):
        out = cache.encode(enc, TEXTS, show_progress=False)
    assert out.shape == (len(TEXTS), 8)
    np.testing.assert_array_equal(out, enc.expected(TEXTS))


def test_many_shards_load_correctly(tmp_path: Path) -> None:
    enc = CountingEncoder(dim=4)
    cache = TextFeatureCache(tmp_path)
    texts = [f"t{i}" for i in range(2_000)]
    cache.encode(enc, texts, show_progress=False, shard_size=40)  # 50 shards
    assert len(shards(cache, enc.id)) == 50
    enc.encoded.clear()
    order = np.random.default_rng(0).permutation(len(texts))
    query = [texts[i] for i in order]
    np.testing.assert_array_equal(cache.encode(enc, query, show_progress=False), enc.expected(query))
    assert enc.encoded == []


def _writer_process(directory: str, start: int, out_queue: mp.Queue) -> None:
    enc = CountingEncoder()
    texts = [f"item {i}" for i in range(start, start + 300)]
    out = TextFeatureCache(directory).encode(enc, texts, show_progress=False, shard_size=7)
    out_queue.put(bool(np.array_equal(out, enc.expected(texts))))


def test_concurrent_writer_processes_leave_a_readable_cache(tmp_path: Path) -> None:
    ctx = mp.get_context("fork")  # fork: the children reuse the imported modules (spawn re-imports torch)
    queue = ctx.Queue()
    procs = [ctx.Process(target=_writer_process, args=(str(tmp_path), s, queue)) for s in (0, 150)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0, 0]
    assert [queue.get(timeout=5), queue.get(timeout=5)] == [True, True]

    enc = CountingEncoder()
    texts = [f"item {i}" for i in range(450)]
    cache = TextFeatureCache(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("error", CorruptShardWarning)
        out = cache.encode(enc, texts, show_progress=False)
    assert enc.encoded == [] and cache.stats.hits == 450
    np.testing.assert_array_equal(out, enc.expected(texts))
    leftovers = [p.name for p in cache.encoder_dir(enc.id).iterdir() if not p.name.startswith("shard-")]
    assert leftovers == ["encoder.json"]  # no temp files left behind


def test_concurrent_writer_and_reader_threads(tmp_path: Path) -> None:
    errors: list[BaseException] = []
    all_texts = [f"text {i}" for i in range(400)]

    def worker(seed: int) -> None:
        try:
            rng = np.random.default_rng(seed)
            enc = CountingEncoder()
            cache = TextFeatureCache(tmp_path)
            for _ in range(5):  # overlapping random subsets: each call both reads and writes shards
                texts = [all_texts[i] for i in rng.choice(len(all_texts), 60, replace=False)]
                out = cache.encode(enc, texts, batch_size=16, show_progress=False, shard_size=20)
                np.testing.assert_array_equal(out, enc.expected(texts))
        except BaseException as err:  # surfaced in the main thread below
            errors.append(err)

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        threads = [threading.Thread(target=worker, args=(s,)) for s in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
    assert errors == []
    assert not [w for w in caught if issubclass(w.category, CorruptShardWarning)]
