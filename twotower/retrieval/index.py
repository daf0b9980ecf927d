"""Vector index layer: build, search, save and load inner-product indexes over L2-normalized embeddings.

Kinds (``IndexBuilder(kind=...)``, one ``conf/index/<kind>.yaml`` each):

==============  ==================================  ==========================================================
kind            FAISS factory string                use
==============  ==================================  ==========================================================
``flat``        ``Flat``                            exact; default; small catalogs, offline evaluation
``ivf``         ``IVF{nlist},Flat``                 ANN, fast single queries, exact re-scoring of probed lists
``hnsw``        ``HNSW{M},Flat``                    ANN graph, the lowest single-query latency
``sq8``         ``IVF{nlist},SQ8``                  ANN + 8-bit codes: 4x less memory than ``ivf``
``ivfpq``       ``IVF{nlist},PQ{pq_m}x{nbits}``     ANN + product quantization: ~32x less memory, lower recall
``torch_exact`` (none: a torch matrix + ``topk``)   exact; fp16 matmul on CUDA when ``device="cuda"``
==============  ==================================  ==========================================================

Every FAISS index is created with ``faiss.METRIC_INNER_PRODUCT`` set explicitly, and vectors are
re-normalized on build, so scores are cosine similarities for normalized queries. Search returns
``(scores [n, k] float32, ids [n, k] int64)`` where ids are row positions into the embeddings given to
:meth:`IndexBuilder.build`; ``k`` is clamped to ``ntotal``. An approximate index that finds fewer than
``k`` candidates pads with id ``-1`` (the FAISS convention).

On disk (:meth:`VectorIndex.save`): ``index.json`` (kind, factory string, metric, ntotal, dim, search
params, recall) plus ``index.faiss`` for FAISS kinds, or ``index.npy`` (the normalized float32 vectors)
for ``torch_exact`` -- a self-contained copy, so an index directory never depends on a sibling file.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import torch
from tqdm.auto import tqdm

log = logging.getLogger(__name__)

KINDS: tuple[str, ...] = ("flat", "ivf", "hnsw", "sq8", "ivfpq", "torch_exact")
EXACT_KINDS: frozenset[str] = frozenset({"flat", "torch_exact"})
DEVICES: tuple[str, ...] = ("cpu", "cuda", "auto")
PRECISIONS: tuple[str, ...] = ("auto", "float32", "float16", "bfloat16")
INDEX_JSON = "index.json"
FAISS_FILE = "index.faiss"
TORCH_FILE = "index.npy"
FORMAT_VERSION = 1
METRIC = "inner_product"

# Query batches at least this large use FAISS's BLAS (sgemm) path for flat scans; below it FAISS uses
# its per-vector SIMD path, which is faster for a handful of queries. FAISS's default is 20.
FAISS_BLAS_THRESHOLD = 8
# Searches of at most this many queries run FAISS single-threaded: one query cannot use two cores
# well, and OpenMP start-up/spin on a loaded 2-core box costs more than it saves (see experiments/RESULTS.md, "Vector index benchmark").
SINGLE_THREAD_MAX_QUERIES = 4
# torch_exact scores at most this many (query, item) pairs at once, bounding the [n, N] score matrix.
TORCH_SCORE_CHUNK = 1 << 25
# FAISS k-means wants at least this many training points per centroid.
MIN_POINTS_PER_CENTROID = 39
# Training on fewer vectors than this runs single-threaded (see _single_thread).
SINGLE_THREAD_MAX_TRAIN = 20_000
ADD_CHUNK = 65_536

_logged_once: set[str] = set()


def _log_once(key: str, message: str, level: int = logging.INFO) -> None:
    """Log ``message`` the first time ``key`` is seen in this process (GPU absence etc.)."""
    if key not in _logged_once:
        _logged_once.add(key)
        log.log(level, message)


@contextmanager
def _single_thread(enabled: bool) -> Iterator[None]:
    """Run FAISS single-threaded inside the block when ``enabled``.

    Small jobs (a few queries, training on a few thousand vectors) lose to OpenMP start-up and spin-waits
    on a busy 2-core box -- measured 10x slower for a 2000-vector PQ training under load. OpenMP's thread
    count is per calling thread, so this does not affect other threads.
    """
    if not enabled:
        yield
        return
    previous = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(previous)


def _normalize(embeddings: np.ndarray, what: str = "embeddings") -> np.ndarray:
    """Return a float32, C-contiguous, L2-normalized copy; zero rows stay zero (logged)."""
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


def _resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        _log_once("no-cuda", "index.device=cuda but torch.cuda.is_available() is False; using the CPU")
        return "cpu"
    return device


def _faiss_gpu_count() -> int:
    get = getattr(faiss, "get_num_gpus", None)
    return int(get()) if get is not None else 0


class VectorIndex:
    """A built (or loaded) index. Use :meth:`search`; construct through :class:`IndexBuilder` or :meth:`load`.

    Attributes:
        kind: one of :data:`KINDS`.
        dim: vector dimension.
        ntotal: number of indexed vectors (= embedding rows).
        info: JSON-serializable description (factory string, metric, params, device, recall, ...).
    """

    def __init__(
        self,
        kind: str,
        dim: int,
        ntotal: int,
        info: dict[str, Any],
        faiss_index: Any | None = None,
        matrix: torch.Tensor | None = None,
        source: np.ndarray | None = None,
        recall_warn_below: float = 0.95,
    ) -> None:
        self.kind = kind
        self.dim = int(dim)
        self.ntotal = int(ntotal)
        self.info = info
        self.recall_warn_below = float(recall_warn_below)
        self._faiss = faiss_index
        self._matrix = matrix
        # The normalized build vectors, kept (by reference) only on freshly built indexes so that
        # measure_recall() can compare against exact search; a loaded index does not have them.
        self._source = source

    def __repr__(self) -> str:
        return (
            f"VectorIndex(kind={self.kind!r}, ntotal={self.ntotal}, dim={self.dim}, device={self.device!r})"
        )

    @property
    def device(self) -> str:
        return str(self.info.get("device", "cpu"))

    # ------------------------------------------------------------------ search
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
        if self._matrix is not None:
            return self._torch_search(q, k)
        with _single_thread(q.shape[0] <= SINGLE_THREAD_MAX_QUERIES):
            scores, ids = self._faiss.search(q, k)
        return scores.astype(np.float32, copy=False), ids.astype(np.int64, copy=False)

    @torch.inference_mode()
    def _torch_search(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        matrix = self._matrix
        assert matrix is not None
        rows = max(1, TORCH_SCORE_CHUNK // self.ntotal)
        out_s, out_i = [], []
        for start in range(0, q.shape[0], rows):
            chunk = torch.from_numpy(q[start : start + rows]).to(matrix.device, matrix.dtype)
            scores = chunk @ matrix.T  # [rows, N]
            top_s, top_i = torch.topk(scores, k, dim=1)  # [rows, k], sorted descending
            out_s.append(top_s.float().cpu().numpy())
            out_i.append(top_i.cpu().numpy())
        return np.concatenate(out_s), np.concatenate(out_i).astype(np.int64, copy=False)

    def _exact_scores(self, queries: np.ndarray, ids: np.ndarray) -> np.ndarray:
        """Exact inner products of ``queries [n, d]`` with the vectors at ``ids [n, k]`` (-1 -> -inf)."""
        valid = ids >= 0
        safe = np.where(valid, ids, 0)
        if self._source is not None:
            vecs = self._source[safe.ravel()]
        elif self._matrix is not None:
            vecs = self._matrix[torch.from_numpy(safe.ravel())].float().cpu().numpy()
        elif self.kind == "flat":
            vecs = self._cpu_faiss().reconstruct_batch(safe.ravel().astype(np.int64))
        else:
            raise ValueError(f"cannot compute exact scores with a loaded {self.kind} index")
        vecs = vecs.reshape(*ids.shape, self.dim)  # [n, k, d]
        scores = np.einsum("nkd,nd->nk", vecs, queries)  # [n, k]
        return np.where(valid, scores, -np.inf)

    def measure_recall(self, queries: np.ndarray, exact: VectorIndex | None = None, k: int = 10) -> float:
        """Recall@k of this index against exact search on ``queries`` (e.g. held-out buyer vectors).

        A returned item counts as a hit when its exact score reaches the exact k-th score, so ties between
        identical vectors are not counted as misses. ``exact`` must be a ``flat`` or ``torch_exact`` index
        over the same vectors; when omitted, a freshly built index uses its own build vectors. Stores
        ``info["recall@{k}_vs_exact"]`` and logs a warning below ``recall_warn_below``.
        """
        q = self._check_queries(queries)
        if q.shape[0] == 0:
            raise ValueError("measure_recall needs at least one query vector")
        k = self._clamp_k(k)
        if exact is None:
            if self.kind in EXACT_KINDS:
                exact = self
            elif self._source is not None:
                exact = IndexBuilder("flat").build(self._source, _normalized=True)
            else:
                raise ValueError(
                    f"measure_recall on a loaded {self.kind} index needs exact=...: build one with "
                    "IndexBuilder('flat').build(embeddings) from the same embeddings"
                )
        if exact.kind not in EXACT_KINDS:
            raise ValueError(f"exact must be a 'flat' or 'torch_exact' index, got kind={exact.kind!r}")
        if (exact.ntotal, exact.dim) != (self.ntotal, self.dim):
            raise ValueError(
                f"exact index has ntotal={exact.ntotal}, dim={exact.dim} but this index has "
                f"ntotal={self.ntotal}, dim={self.dim}; build both from the same embeddings"
            )
        exact_scores, _ = exact.search(q, k)
        _, ids = self.search(q, k)
        true_scores = exact._exact_scores(q, ids)  # [n, k]
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
                _tuning_hint(self.kind),
            )
        else:
            log.info("%s index recall@%d vs exact = %.4f on %d queries", self.kind, k, recall, q.shape[0])
        return recall

    # ------------------------------------------------------------------ persistence
    def _cpu_faiss(self) -> Any:
        if self.device == "cuda" and self.kind != "hnsw":
            return faiss.index_gpu_to_cpu(self._faiss)
        return self._faiss

    def save(self, directory: str | Path) -> None:
        """Write ``index.json`` plus ``index.faiss`` (FAISS kinds) or ``index.npy`` (torch_exact)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        if self._matrix is not None:
            np.save(directory / TORCH_FILE, self._matrix.float().cpu().numpy())
        else:
            faiss.write_index(self._cpu_faiss(), str(directory / FAISS_FILE))
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
        kind, ntotal, dim = info["kind"], int(info["ntotal"]), int(info["dim"])
        if kind not in KINDS:
            raise ValueError(f"{meta_path}: unknown kind {kind!r}; valid kinds: {', '.join(KINDS)}")
        if info["metric"] != METRIC:
            raise ValueError(f"{meta_path}: metric {info['metric']!r} is not {METRIC!r}")
        info.pop("format_version", None)
        params = info.get("params", {})
        warn = float(info.get("recall_warn_below", 0.95))
        if device not in DEVICES:
            raise ValueError(f"device must be one of {DEVICES}, got {device!r}")
        if kind == "torch_exact":
            path = directory / TORCH_FILE
            if not path.is_file():
                raise FileNotFoundError(f"{path} not found (index.json says kind=torch_exact)")
            vectors = np.load(path)
            if vectors.ndim != 2 or vectors.shape != (ntotal, dim):
                raise ValueError(
                    f"{path} holds an array of shape {vectors.shape} but {meta_path} says "
                    f"ntotal={ntotal}, dim={dim}; the two files are from different builds"
                )
            matrix, info["device"], info["precision"] = _torch_matrix(
                vectors, device, params.get("precision", "auto")
            )
            return cls(kind, dim, ntotal, info, matrix=matrix, recall_warn_below=warn)
        path = directory / FAISS_FILE
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found (index.json says kind={kind})")
        index = faiss.read_index(str(path))
        problems = []
        if index.ntotal != ntotal:
            problems.append(f"ntotal {index.ntotal} != {ntotal}")
        if index.d != dim:
            problems.append(f"dim {index.d} != {dim}")
        if index.metric_type != faiss.METRIC_INNER_PRODUCT:
            problems.append(f"metric type {index.metric_type} is not inner product")
        if problems:
            raise ValueError(
                f"{path} does not match {meta_path}: {'; '.join(problems)}; the two files are from "
                "different builds -- rebuild or re-export the index"
            )
        _apply_search_params(index, kind, params)
        index, info["device"] = _maybe_to_gpu(index, kind, device)
        return cls(kind, dim, ntotal, info, faiss_index=index, recall_warn_below=warn)


def _tuning_hint(kind: str) -> str:
    return {
        "ivf": "index.nprobe",
        "sq8": "index.nprobe",
        "ivfpq": "index.nprobe and index.pq_m (or use sq8/hnsw)",
        "hnsw": "index.ef_search (or hnsw_m / ef_construction)",
    }.get(kind, "nothing: exact search should be 1.0 -- check the exact index")


def _apply_search_params(index: Any, kind: str, params: dict[str, Any]) -> None:
    if kind in ("ivf", "sq8", "ivfpq"):
        ivf = faiss.extract_index_ivf(index)
        ivf.nprobe = min(int(params["nprobe"]), ivf.nlist)
    elif kind == "hnsw":
        index.hnsw.efSearch = int(params["ef_search"])


def _maybe_to_gpu(index: Any, kind: str, device: str) -> tuple[Any, str]:
    """Move a FAISS index to the GPU(s) when asked and possible; otherwise log (once) why not."""
    if device == "cpu":
        return index, "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        _log_once(
            "faiss-no-cuda", "index.device=cuda but no CUDA device is visible; FAISS index stays on CPU"
        )
        return index, "cpu"
    n_gpus = _faiss_gpu_count()
    if n_gpus == 0:
        if device == "cuda" or torch.cuda.is_available():
            _log_once(
                "faiss-no-gpu",
                "FAISS has no GPU support in this install (faiss-cpu); the index stays on CPU. "
                "Install faiss-gpu, or use index=torch_exact for exact search on the GPU",
            )
        return index, "cpu"
    if kind == "hnsw":
        _log_once("faiss-hnsw-gpu", "FAISS has no GPU HNSW; the hnsw index stays on CPU")
        return index, "cpu"
    try:
        if n_gpus > 1:
            gpu_index = faiss.index_cpu_to_all_gpus(index)
        else:
            gpu_index = faiss.index_cpu_to_gpu(faiss.StandardGpuResources(), 0, index)
    except Exception as e:  # FAISS raises RuntimeError for unsupported GPU configurations
        _log_once(
            f"faiss-gpu-fail-{kind}", f"moving the {kind} index to the GPU failed ({e}); staying on CPU"
        )
        return index, "cpu"
    log.info("%s index moved to %d GPU(s)", kind, n_gpus)
    return gpu_index, "cuda"


def _torch_matrix(vectors: np.ndarray, device: str, precision: str) -> tuple[torch.Tensor, str, str]:
    """The preallocated score matrix for torch_exact: float32 on CPU, fp16 on CUDA unless told otherwise."""
    dev = _resolve_device(device)
    if precision == "auto":
        precision = "float16" if dev == "cuda" else "float32"
    matrix = torch.from_numpy(np.ascontiguousarray(vectors, dtype=np.float32))
    matrix = matrix.to(device=dev, dtype=getattr(torch, precision))
    return matrix, dev, precision


class IndexBuilder:
    """Builds a :class:`VectorIndex` of one ``kind``; one per ``conf/index/<name>.yaml`` node.

    Args:
        kind: ``flat`` | ``ivf`` | ``hnsw`` | ``sq8`` | ``ivfpq`` | ``torch_exact``.
        nlist: IVF lists (ivf, sq8, ivfpq); ``None`` -> ``round(4 * sqrt(N))``, capped at ``N // 39`` so
            k-means has enough points per centroid.
        nprobe: IVF lists scanned per query.
        hnsw_m: HNSW graph degree ``M``.
        ef_construction: HNSW build-time beam width. 40 (FAISS's default) reached recall@10 >= 0.99 on
            clustered data at 100K, while 100 tripled the build time (experiments/RESULTS.md).
        ef_search: HNSW query-time beam width (raised to ``k`` by FAISS when smaller).
        pq_m: product-quantizer sub-vectors for ``ivfpq`` (must divide the dimension; bytes per vector).
        device: ``cpu`` | ``cuda`` | ``auto``; ``cuda`` moves FAISS indexes to the GPU(s) when GPU FAISS is
            installed, and puts ``torch_exact`` on the GPU; otherwise logs why not and uses the CPU.
        recall_warn_below: :meth:`VectorIndex.measure_recall` warns below this recall@10.
        train_sample: vectors used to train IVF/quantizers (raised to ``39 * nlist`` when needed).
        precision: ``torch_exact`` matrix dtype; ``auto`` = float32 on CPU, float16 on CUDA.
    """

    def __init__(
        self,
        kind: str = "flat",
        nlist: int | None = None,
        nprobe: int = 16,
        hnsw_m: int = 32,
        ef_construction: int = 40,
        ef_search: int = 128,
        pq_m: int = 48,
        device: str = "cpu",
        recall_warn_below: float = 0.95,
        train_sample: int = 100_000,
        precision: str = "auto",
    ) -> None:
        if kind not in KINDS:
            raise ValueError(f"index kind {kind!r} is not supported; valid kinds: {', '.join(KINDS)}")
        for name, value, low in (
            ("nprobe", nprobe, 1),
            ("hnsw_m", hnsw_m, 2),
            ("ef_construction", ef_construction, 1),
            ("ef_search", ef_search, 1),
            ("pq_m", pq_m, 1),
            ("train_sample", train_sample, 1),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"index.{name} must be an integer >= {low}, got {value!r}")
        if nlist is not None and (isinstance(nlist, bool) or not isinstance(nlist, int) or nlist < 1):
            raise ValueError(f"index.nlist must be null (auto: ~4*sqrt(N)) or an integer >= 1, got {nlist!r}")
        if device not in DEVICES:
            raise ValueError(f"index.device must be one of {', '.join(DEVICES)}, got {device!r}")
        if not 0.0 <= float(recall_warn_below) <= 1.0:
            raise ValueError(f"index.recall_warn_below must be in [0, 1], got {recall_warn_below!r}")
        if precision not in PRECISIONS:
            raise ValueError(f"index.precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
        self.kind = kind
        self.nlist = nlist
        self.nprobe = nprobe
        self.hnsw_m = hnsw_m
        self.ef_construction = ef_construction
        self.ef_search = ef_search
        self.pq_m = pq_m
        self.device = device
        self.recall_warn_below = float(recall_warn_below)
        self.train_sample = train_sample
        self.precision = precision

    def __repr__(self) -> str:
        return f"IndexBuilder(kind={self.kind!r}, device={self.device!r})"

    def resolve_nlist(self, n: int) -> int:
        """IVF list count for ``n`` vectors: the configured value or ~4*sqrt(n), at most n // 39 (>= 1)."""
        nlist = self.nlist if self.nlist is not None else round(4 * math.sqrt(n))
        return max(1, min(nlist, n // MIN_POINTS_PER_CENTROID))

    def factory_string(self, n: int, dim: int) -> str:
        """The FAISS factory string this builder uses for ``n`` vectors of ``dim`` (``""`` for torch_exact)."""
        if self.kind == "flat":
            return "Flat"
        if self.kind == "hnsw":
            return f"HNSW{self.hnsw_m},Flat"
        if self.kind == "torch_exact":
            return ""
        nlist = self.resolve_nlist(n)
        if self.kind == "ivf":
            return f"IVF{nlist},Flat"
        if self.kind == "sq8":
            return f"IVF{nlist},SQ8"
        if dim % self.pq_m:
            raise ValueError(f"index.pq_m={self.pq_m} must divide the embedding dimension {dim}")
        # 8-bit codebooks need 256 * 39 training points; tiny catalogs get smaller codebooks.
        nbits = int(min(8, max(1, math.floor(math.log2(max(2, n // MIN_POINTS_PER_CENTROID))))))
        return f"IVF{nlist},PQ{self.pq_m}x{nbits}"

    def params(self, n: int) -> dict[str, Any]:
        """Search/build parameters recorded in ``index.json``."""
        if self.kind in ("ivf", "sq8", "ivfpq"):
            p: dict[str, Any] = {
                "nlist": self.resolve_nlist(n),
                "nprobe": min(self.nprobe, self.resolve_nlist(n)),
            }
            if self.kind == "ivfpq":
                p["pq_m"] = self.pq_m
            return p
        if self.kind == "hnsw":
            return {
                "hnsw_m": self.hnsw_m,
                "ef_construction": self.ef_construction,
                "ef_search": self.ef_search,
            }
        if self.kind == "torch_exact":
            return {"precision": self.precision}
        return {}

    def build(self, embeddings: np.ndarray, _normalized: bool = False) -> VectorIndex:
        """Re-normalize ``embeddings [N, dim]`` and index them; ids are row positions."""
        t0 = time.perf_counter()
        x = embeddings if _normalized else _normalize(embeddings)
        n, dim = x.shape
        info: dict[str, Any] = {
            "kind": self.kind,
            "factory": self.factory_string(n, dim),
            "metric": METRIC,
            "ntotal": n,
            "dim": dim,
            "params": self.params(n),
            "recall_warn_below": self.recall_warn_below,
        }
        if self.kind == "torch_exact":
            matrix, info["device"], info["precision"] = _torch_matrix(x, self.device, self.precision)
            info["params"]["precision"] = self.precision
            info["build_seconds"] = round(time.perf_counter() - t0, 3)
            return VectorIndex(
                self.kind, dim, n, info, matrix=matrix, source=x, recall_warn_below=self.recall_warn_below
            )
        index = faiss.index_factory(dim, info["factory"], faiss.METRIC_INNER_PRODUCT)
        if self.kind == "hnsw":
            index.hnsw.efConstruction = self.ef_construction
        if self.kind == "ivfpq":
            # Polysemous codes are never used by our searches, and their training dominated build time.
            faiss.downcast_index(faiss.extract_index_ivf(index)).do_polysemous_training = False
        if not index.is_trained:
            n_train = min(n, max(self.train_sample, MIN_POINTS_PER_CENTROID * self.resolve_nlist(n)))
            rows = (
                np.sort(np.random.default_rng(0).choice(n, n_train, replace=False)) if n_train < n else None
            )
            log.info("training %s on %d of %d vectors", info["factory"], n_train, n)
            with _single_thread(n_train < SINGLE_THREAD_MAX_TRAIN):
                index.train(x if rows is None else x[rows])
        with (
            _single_thread(n < SINGLE_THREAD_MAX_TRAIN),
            tqdm(total=n, desc=f"index {self.kind}", unit="vec", disable=n < 4 * ADD_CHUNK) as bar,
        ):
            for start in range(0, n, ADD_CHUNK):
                index.add(x[start : start + ADD_CHUNK])
                bar.update(min(ADD_CHUNK, n - start))
        _apply_search_params(index, self.kind, info["params"])
        index, info["device"] = _maybe_to_gpu(index, self.kind, self.device)
        info["build_seconds"] = round(time.perf_counter() - t0, 3)
        log.info(
            "built %s index (%s) over %d x %d in %.1fs",
            self.kind,
            info["factory"],
            n,
            dim,
            info["build_seconds"],
        )
        return VectorIndex(
            self.kind, dim, n, info, faiss_index=index, source=x, recall_warn_below=self.recall_warn_below
        )


# Batched flat search: keep FAISS on its BLAS path for batches (measured ~19x faster than the
# default non-BLAS path for mid-size batches on this project's CPUs).
faiss.cvar.distance_compute_blas_threshold = FAISS_BLAS_THRESHOLD
