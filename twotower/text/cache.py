"""On-disk text feature cache keyed by (encoder id, sha1(text)).

Layout: ``<directory>/<sanitized encoder id>-<id hash>/shard-<uuid>.npz``, each shard holding ``keys``
(``S20`` sha1 digests ``[m]``), ``vectors`` (float32 ``[m, dim]``) and ``encoder_id``. Shards are append-only
and immutable: a writer writes a temp file in the same directory and ``os.replace``s it to a fresh unique
name, so concurrent runs never overwrite each other and readers only ever see complete shards. The same text
encoded by two runs at once just lands in two shards; either copy serves.

The cache does no rank logic: under DDP the caller lets rank 0 fill it and the other ranks read it after
a barrier.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import uuid
import warnings
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from tqdm.auto import tqdm

if TYPE_CHECKING:  # the protocol only; keeps the cache importable without torch
    from twotower.text.encoders import TextEncoder

log = logging.getLogger(__name__)

KEY_DTYPE = np.dtype("S20")  # raw sha1 digest
SHARD_GLOB = "shard-*.npz"


@dataclass(frozen=True)
class CacheStats:
    """Counts of the last ``encode`` call. ``hits + misses == unique``."""

    requested: int = 0  # texts passed in
    unique: int = 0  # distinct texts among them
    hits: int = 0  # distinct texts found in the cache
    misses: int = 0  # distinct texts encoded (and persisted) by this call


def text_keys(texts: Sequence[str]) -> np.ndarray:
    """sha1 digests of the UTF-8 texts -> ``S20 [n]``."""
    # surrogatepass: a lone surrogate (broken upstream data) still hashes instead of crashing the run
    joined = b"".join(hashlib.sha1(t.encode("utf-8", "surrogatepass")).digest() for t in texts)
    return np.frombuffer(joined, dtype=KEY_DTYPE).copy()  # copy: writable, owns its memory


def encoder_dirname(encoder_id: str) -> str:
    """Filesystem-safe, collision-free directory name for an encoder id."""
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", encoder_id).strip("._") or "encoder"
    return f"{safe[:80]}-{hashlib.sha1(encoder_id.encode()).hexdigest()[:8]}"


class CorruptShardWarning(UserWarning):
    """A cache shard could not be read or does not match the encoder; it was skipped."""


class TextFeatureCache:
    """Persistent cache of text embeddings, safe for concurrent writers and readers.

    >>> cache = TextFeatureCache("outputs/text_cache")
    >>> feats = cache.encode(encoder, product_texts)  # float32 [n, encoder.dim]
    >>> cache.stats.misses  # 0 on the second run
    """

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory).expanduser()
        self._stats = CacheStats()

    @property
    def stats(self) -> CacheStats:
        """Hits/misses of the last :meth:`encode` call."""
        return self._stats

    def encoder_dir(self, encoder_id: str) -> Path:
        return self.directory / encoder_dirname(encoder_id)

    # ---------------------------------------------------------------- reading

    def _load_keys(self, encoder_id: str, dim: int) -> tuple[list[Path], np.ndarray, np.ndarray, np.ndarray]:
        """Keys of all readable shards -> (shard paths, keys S20 [m], shard index [m], row in shard [m])."""
        shard_dir = self.encoder_dir(encoder_id)
        paths: list[Path] = []
        keys: list[np.ndarray] = []
        for path in sorted(shard_dir.glob(SHARD_GLOB)):
            shard_keys = self._read_shard(path, encoder_id, dim, vectors=False)
            if shard_keys is not None:
                paths.append(path)
                keys.append(shard_keys)
        if not keys:
            empty = np.zeros(0, dtype=np.int64)
            return [], np.zeros(0, dtype=KEY_DTYPE), empty, empty
        sizes = np.array([len(k) for k in keys])
        shard_of = np.repeat(np.arange(len(keys)), sizes)  # [m]
        row_of = np.arange(int(sizes.sum())) - np.repeat(np.cumsum(sizes) - sizes, sizes)  # [m]
        return paths, np.concatenate(keys), shard_of, row_of

    def _read_shard(self, path: Path, encoder_id: str, dim: int, vectors: bool) -> np.ndarray | None:
        """Keys (or vectors) of one shard after validating it; None (with a warning) when it is unusable."""
        try:
            # npz members are read lazily: listing keys does not pull the vectors off disk.
            with np.load(path, allow_pickle=False) as npz:
                stored_id = str(npz["encoder_id"])
                shard_keys = npz["keys"]
                if stored_id != encoder_id:
                    raise ValueError(f"shard belongs to encoder {stored_id!r}, expected {encoder_id!r}")
                if shard_keys.dtype != KEY_DTYPE or shard_keys.ndim != 1:
                    raise ValueError(f"keys have dtype {shard_keys.dtype} and shape {shard_keys.shape}")
                if not vectors:
                    # Checking the vectors' header only (shape/dtype) keeps the key scan cheap.
                    shape, dtype = _npz_member_header(npz, "vectors")
                    if dtype != np.float32 or shape != (len(shard_keys), dim):
                        raise ValueError(
                            f"vectors are {dtype} {shape}, expected float32 ({len(shard_keys)}, {dim})"
                        )
                    return shard_keys
                vecs = npz["vectors"]
                if vecs.shape != (len(shard_keys), dim):
                    raise ValueError(f"vectors have shape {vecs.shape}, expected ({len(shard_keys)}, {dim})")
                return vecs
        except FileNotFoundError:
            return None  # removed by someone cleaning the cache between listing and reading
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as err:
            warnings.warn(
                f"Skipping unreadable text-cache shard {path} ({type(err).__name__}: {err}); its texts will be "
                f"re-encoded. Delete the file to silence this warning.",
                CorruptShardWarning,
                stacklevel=3,
            )
            return None

    # ---------------------------------------------------------------- writing

    def _write_shard(self, encoder_id: str, keys: np.ndarray, vectors: np.ndarray) -> Path:
        """Write one immutable shard atomically (temp file + fsync + os.replace to a unique name)."""
        shard_dir = self.encoder_dir(encoder_id)
        shard_dir.mkdir(parents=True, exist_ok=True)
        self._write_meta(shard_dir, encoder_id, vectors.shape[1])
        name = uuid.uuid4().hex
        tmp = shard_dir / f".tmp-{name}.npz"
        final = shard_dir / f"shard-{name}.npz"
        try:
            with open(tmp, "wb") as f:
                np.savez(f, keys=keys, vectors=vectors, encoder_id=np.array(encoder_id))
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, final)
        finally:
            tmp.unlink(missing_ok=True)
        return final

    @staticmethod
    def _write_meta(shard_dir: Path, encoder_id: str, dim: int) -> None:
        # For humans browsing the cache; the shards themselves carry the encoder id.
        meta = shard_dir / "encoder.json"
        if meta.exists():
            return
        tmp = shard_dir / f".tmp-{uuid.uuid4().hex}.json"
        tmp.write_text(json.dumps({"encoder_id": encoder_id, "dim": dim}, ensure_ascii=False))
        os.replace(tmp, meta)

    # ---------------------------------------------------------------- public

    def encode(
        self,
        encoder: TextEncoder,
        texts: Sequence[str],
        batch_size: int = 256,
        show_progress: bool = True,
        shard_size: int = 50_000,
    ) -> np.ndarray:
        """Embeddings of ``texts`` -> float32 ``[n, encoder.dim]``, encoding only texts not yet cached.

        Identical texts are encoded once. New vectors are persisted every ``shard_size`` texts, so an
        interrupted fill keeps what it finished.
        """
        texts = list(texts)
        dim = int(encoder.dim)
        bad = next((i for i, t in enumerate(texts) if not isinstance(t, str)), None)
        if bad is not None:
            raise TypeError(
                f"texts[{bad}] is {type(texts[bad]).__name__}, expected str; fill missing text with ''"
            )
        keys = text_keys(texts)  # [n]
        # uniq_keys [u], first_idx [u] (first text of each key), inverse [n] (key of each text)
        uniq_keys, first_idx, inverse = np.unique(keys, return_index=True, return_inverse=True)
        out_unique = np.empty((len(uniq_keys), dim), dtype=np.float32)  # [u, dim]

        # Hits: vectorized lookup of the wanted keys among all cached keys.
        paths, cached_keys, shard_of, row_of = self._load_keys(encoder.id, dim)
        found = np.zeros(len(uniq_keys), dtype=bool)
        if len(cached_keys):
            order = np.argsort(cached_keys, kind="stable")
            sorted_keys = cached_keys[order]
            pos = np.searchsorted(sorted_keys, uniq_keys).clip(max=len(sorted_keys) - 1)
            found = sorted_keys[pos] == uniq_keys
            src = order[pos[found]]  # index into cached_keys for each hit
            hit_rows = np.flatnonzero(found)
            for s in np.unique(shard_of[src]):
                sel = shard_of[src] == s
                vecs = self._read_shard(paths[s], encoder.id, dim, vectors=True)
                if vecs is None:  # went bad between the key scan and now: treat as misses
                    found[hit_rows[sel]] = False
                    continue
                out_unique[hit_rows[sel]] = vecs[row_of[src[sel]]]

        # Misses: encode in batches, persist in shards.
        miss_rows = np.flatnonzero(~found)
        if len(miss_rows):
            miss_texts = [texts[i] for i in first_idx[miss_rows]]
            with tqdm(
                total=len(miss_rows),
                desc=f"encode texts ({encoder.id})",
                unit="text",
                disable=not show_progress,
            ) as bar:
                for start in range(0, len(miss_rows), shard_size):
                    rows = miss_rows[start : start + shard_size]
                    chunk_texts = miss_texts[start : start + shard_size]
                    vecs = np.empty((len(rows), dim), dtype=np.float32)
                    for b in range(0, len(rows), batch_size):
                        batch = chunk_texts[b : b + batch_size]
                        vecs[b : b + len(batch)] = self._checked(encoder, batch, batch_size)
                        bar.update(len(batch))
                    self._write_shard(encoder.id, uniq_keys[rows], vecs)
                    out_unique[rows] = vecs

        self._stats = CacheStats(
            requested=len(texts),
            unique=len(uniq_keys),
            hits=int(found.sum()),
            misses=len(miss_rows),
        )
        log.debug("text cache %s: %s", encoder.id, self._stats)
        return out_unique[inverse.reshape(-1)]

    @staticmethod
    def _checked(encoder: TextEncoder, batch: list[str], batch_size: int) -> np.ndarray:
        vecs = np.asarray(encoder.encode(batch, batch_size=batch_size, show_progress=False))
        if vecs.shape != (len(batch), encoder.dim):
            raise ValueError(
                f"Text encoder {encoder.id!r} returned shape {vecs.shape} for {len(batch)} texts; "
                f"expected ({len(batch)}, {encoder.dim}) — its `dim` does not match its output."
            )
        return vecs.astype(np.float32, copy=False)


def _npz_member_header(npz: np.lib.npyio.NpzFile, name: str) -> tuple[tuple[int, ...], np.dtype]:
    """Shape and dtype of an npz member from its .npy header, without reading the array."""
    if f"{name}.npy" not in npz.zip.namelist():
        raise KeyError(f"member {name!r} missing")
    with npz.zip.open(f"{name}.npy") as f:
        major, _minor = np.lib.format.read_magic(f)
        read_header = (
            np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
        )
        shape, _fortran, dtype = read_header(f)
    return tuple(shape), np.dtype(dtype)
