"""The index interface every backend implements: search, recall against exact search, save and load.

A backend is one module (``faiss_backend``, ``torch_backend``) with a :class:`VectorIndex` subclass and two
functions, ``build(builder, vectors, info)`` and ``load(directory, info, device)``; :func:`backend` imports
it on first use, so importing this module (or the torch backend) never imports ``faiss``.
"""

from __future__ import annotations

import importlib
import json
import logging
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import torch

from twotower.evaluation.metrics import topk_scores_chunked

log = logging.getLogger(__name__)

FAISS_KINDS: tuple[str, ...] = ("flat", "ivf", "hnsw", "sq8", "ivfpq")
KINDS: tuple[str, ...] = (*FAISS_KINDS, "torch_exact")
EXACT_KINDS: frozenset[str] = frozenset({"flat", "torch_exact"})
DEVICES: tuple[str, ...] = ("cpu", "cuda", "auto")
INDEX_JSON = "index.json"
FORMAT_VERSION = 1
METRIC = "inner_product"
# Exact scoring bounds its [queries, items] score block to this many entries.
SCORE_CHUNK = 1 << 25

_logged_once: set[str] = set()


def log_once(key: str, message: str, level: int = logging.INFO) -> None:
    """Log ``message`` the first time ``key`` is seen in this process (GPU absence etc.)."""
    if key not in _logged_once:
        _logged_once.add(key)
        log.log(level, message)


def backend(kind: str) -> ModuleType:
    """The backend module that builds and loads indexes of ``kind`` (imported on first use)."""
    name = "torch_backend" if kind == "torch_exact" else "faiss_backend"
    return importlib.import_module(f"twotower.retrieval.index.{name}")


def normalize(embeddings: np.ndarray, what: str = "embeddings") -> np.ndarray:
    """A float32, C-contiguous, L2-normalized copy of ``embeddings [n, dim]``; zero rows stay zero (logged)."""
    if not isinstance(embeddings, np.ndarray):
        raise TypeError(f"{what} must be a numpy array of shape [n, dim], got {type(embeddings).__name__}")
    if embeddings.ndim != 2 or embeddings.shape[0] == 0 or embeddings.shape[1] == 0:
        raise ValueError(f"{what} must be a non-empty 2-D array [n, dim], got shape {embeddings.shape}")
    x = np.array(embeddings, dtype=np.float32, order="C", copy=True)
    if not np.isfinite(x).all():
        bad = int((~np.isfinite(x)).any(axis=1).sum())
        raise ValueError(
            f"{what} contain NaN or inf in {bad} row(s); fix the embedding export before indexing"
        )
    norms = np.linalg.norm(x, axis=1, keepdims=True)  # [n, 1]
    zero = norms[:, 0] == 0
    if zero.any():
        log.warning("%d of %d %s rows are all-zero; they stay zero and score 0", zero.sum(), len(x), what)
        norms[zero] = 1.0
    x /= norms
    return x


def exact_topk(matrix: torch.Tensor, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact inner-product top-``k`` of ``queries [n, d]`` over ``matrix [N, d]`` (any device and dtype).

    The one exact top-k routine of the project (:func:`twotower.evaluation.metrics.topk_scores_chunked`), run in blocks
    of queries so that a block's score matrix stays under :data:`SCORE_CHUNK` entries.
    """
    n_items = matrix.shape[0]
    rows = max(1, min(len(queries), 4096))
    chunk = max(1, SCORE_CHUNK // rows)
    out_s, out_i = [], []
    with torch.inference_mode():
        for start in range(0, len(queries), rows):
            block = torch.from_numpy(queries[start : start + rows]).to(matrix.device, matrix.dtype)
            scores, ids = topk_scores_chunked(block, matrix, min(k, n_items), chunk_size=chunk)
            out_s.append(scores.float().cpu().numpy())
            out_i.append(ids.cpu().numpy())
    return np.concatenate(out_s), np.concatenate(out_i).astype(np.int64, copy=False)


def tuning_hint(kind: str) -> str:
    return {
        "ivf": "index.nprobe",
        "sq8": "index.nprobe",
        "ivfpq": "index.nprobe and index.pq_m (or use sq8/hnsw)",
        "hnsw": "index.ef_search (or hnsw_m / ef_construction)",
    }.get(kind, "nothing: exact search should be 1.0 -- check the exact index")


class VectorIndex:
    """A built (or loaded) index. Use :meth:`search`; construct through ``IndexBuilder`` or :meth:`load`.

    Attributes:
        kind: one of :data:`KINDS`.
        dim: vector dimension.
        ntotal: number of indexed vectors (= embedding rows).
        info: JSON-serializable description (factory string, metric, params, device, recall, ...).

    Example:
        >>> index = IndexBuilder("flat").build(embeddings)  # doctest: +SKIP
        >>> scores, ids = index.search(buyer_vectors, k=10)  # doctest: +SKIP
    """

    def __init__(
        self,
        kind: str,
        dim: int,
        ntotal: int,
        info: dict[str, Any],
        source: np.ndarray | None = None,
        recall_warn_below: float = 0.95,
    ) -> None:
        self.kind = kind
        self.dim = int(dim)
        self.ntotal = int(ntotal)
        self.info = info
        self.recall_warn_below = float(recall_warn_below)
        # The normalized build vectors, kept (by reference) only on freshly built indexes so that
        # measure_recall() can compare against exact search; a loaded index does not have them.
        self._source = source

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(kind={self.kind!r}, ntotal={self.ntotal}, dim={self.dim}, "
            f"device={self.device!r})"
        )

    @property
    def device(self) -> str:
        return str(self.info.get("device", "cpu"))

    # -- what a backend provides ----------------------------------------------------------------------
    def _search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-k of checked float32 ``queries [n, dim]`` (n >= 1, 1 <= k <= ntotal)."""
        raise NotImplementedError

    def _stored_vectors(self, ids: np.ndarray) -> np.ndarray | None:
        """The stored vectors at row ``ids [m]`` as float32 ``[m, dim]``, or None when the index cannot."""
        return None

    def _save_files(self, directory: Path) -> None:
        """Write the backend's own file(s) beside index.json."""
        raise NotImplementedError

    def memory_bytes(self) -> int:
        """The bytes the index holds (its vectors, codes and graph)."""
        raise NotImplementedError

    # -- search ----------------------------------------------------------------------------------------
    def _check_queries(self, queries: np.ndarray) -> np.ndarray:
        q = np.asarray(queries)
        if q.ndim == 1:
            q = q[None, :]
        if q.ndim != 2 or q.shape[1] != self.dim:
            raise ValueError(
                f"queries must have shape [n, {self.dim}] (or [{self.dim}] for one query) to match the "
                f"{self.kind} index, got shape {np.shape(queries)}"
            )
        return np.ascontiguousarray(q, dtype=np.float32)

    def _clamp_k(self, k: int) -> int:
        if int(k) < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        return min(int(k), self.ntotal)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` by inner product. Returns ``(scores [n, k] float32, ids [n, k] int64)``.

        ``queries`` is ``[n, dim]`` (or one ``[dim]`` vector); ``k`` is clamped to ``ntotal``. Ids are row
        positions into the built embeddings; ``-1`` pads rows where an ANN index found fewer than k.
        """
        q = self._check_queries(queries)
        k = self._clamp_k(k)
        if q.shape[0] == 0:
            return np.empty((0, k), np.float32), np.empty((0, k), np.int64)
        return self._search(q, k)

    # -- recall ----------------------------------------------------------------------------------------
    def _exact_scores(self, queries: np.ndarray, ids: np.ndarray) -> np.ndarray:
        """Exact inner products of ``queries [n, d]`` with the vectors at ``ids [n, k]`` (-1 -> -inf)."""
        valid = ids >= 0
        safe = np.where(valid, ids, 0).ravel()
        vecs = self._source[safe] if self._source is not None else self._stored_vectors(safe)
        if vecs is None:
            raise ValueError(f"cannot compute exact scores with a loaded {self.kind} index")
        vecs = vecs.reshape(*ids.shape, self.dim)  # [n, k, d]
        scores = np.einsum("nkd,nd->nk", vecs, queries)  # [n, k]
        return np.where(valid, scores, -np.inf)

    def measure_recall(self, queries: np.ndarray, exact: VectorIndex | None = None, k: int = 10) -> float:
        """Recall@k of this index against exact search on ``queries`` (e.g. held-out buyer vectors).

        A returned item counts as a hit when its exact score reaches the exact k-th score, so ties between
        identical vectors are not counted as misses. ``exact`` must be a ``flat`` or ``torch_exact`` index
        over the same vectors; when omitted, an exact index uses itself and a freshly built one its own
        build vectors. Stores ``info["recall@{k}_vs_exact"]`` and logs a warning below ``recall_warn_below``.
        """
        q = self._check_queries(queries)
        if q.shape[0] == 0:
            raise ValueError("measure_recall needs at least one query vector")
        k = self._clamp_k(k)
        if exact is None and self.kind not in EXACT_KINDS:
            if self._source is None:
                raise ValueError(
                    f"measure_recall on a loaded {self.kind} index needs exact=...: build one with "
                    "IndexBuilder('flat').build(embeddings) from the same embeddings"
                )
            exact_scores, _ = exact_topk(torch.from_numpy(self._source), q, k)
            reference: VectorIndex = self
        else:
            reference = self if exact is None else exact
            if reference.kind not in EXACT_KINDS:
                raise ValueError(
                    f"exact must be a 'flat' or 'torch_exact' index, got kind={reference.kind!r}"
                )
            if (reference.ntotal, reference.dim) != (self.ntotal, self.dim):
                raise ValueError(
                    f"exact index has ntotal={reference.ntotal}, dim={reference.dim} but this index has "
                    f"ntotal={self.ntotal}, dim={self.dim}; build both from the same embeddings"
                )
            exact_scores, _ = reference.search(q, k)
        _, ids = self.search(q, k)
        true_scores = reference._exact_scores(q, ids)  # [n, k]
        kth = exact_scores[:, -1:]  # [n, 1] exact k-th best score
        hits = np.minimum((true_scores >= kth - 1e-5).sum(axis=1), k)  # [n]
        recall = float(hits.mean() / k)
        self.info[f"recall@{k}_vs_exact"] = round(recall, 6)
        self.info["recall_queries"] = int(q.shape[0])
        if recall < self.recall_warn_below:
            log.warning(
                "%s index recall@%d vs exact = %.3f on %d queries, below %.2f; raise %s",
                self.kind,
                k,
                recall,
                q.shape[0],
                self.recall_warn_below,
                tuning_hint(self.kind),
            )
        else:
            log.info("%s index recall@%d vs exact = %.4f on %d queries", self.kind, k, recall, q.shape[0])
        return recall

    # -- persistence -----------------------------------------------------------------------------------
    def save(self, directory: str | Path) -> None:
        """Write ``index.json`` plus the backend's file (``index.faiss`` or ``index.npy``)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self._save_files(directory)
        meta = {"format_version": FORMAT_VERSION, **self.info}
        (directory / INDEX_JSON).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")

    @classmethod
    def load(cls, directory: str | Path, device: str = "cpu") -> VectorIndex:
        """Load a saved index, checking ``index.json`` against the index file (kind, ntotal, dim, metric)."""
        directory = Path(directory)
        meta_path = directory / INDEX_JSON
        if not meta_path.is_file():
            raise FileNotFoundError(f"{meta_path} not found; save the index with VectorIndex.save() first")
        try:
            info = json.loads(meta_path.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"{meta_path} is not valid JSON: {e}") from e
        missing = [key for key in ("kind", "ntotal", "dim", "metric") if key not in info]
        if missing:
            raise ValueError(f"{meta_path} lacks required key(s) {missing}")
        if info["kind"] not in KINDS:
            raise ValueError(f"{meta_path}: unknown kind {info['kind']!r}; valid kinds: {', '.join(KINDS)}")
        if info["metric"] != METRIC:
            raise ValueError(f"{meta_path}: metric {info['metric']!r} is not {METRIC!r}")
        if device not in DEVICES:
            raise ValueError(f"device must be one of {DEVICES}, got {device!r}")
        info.pop("format_version", None)
        return backend(info["kind"]).load(directory, info, device)
