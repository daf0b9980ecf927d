"""The FAISS backend: ``flat``, ``ivf``, ``hnsw``, ``sq8`` and ``ivfpq`` indexes (inner product), CPU or GPU.

Every index is created with ``faiss.METRIC_INNER_PRODUCT`` set explicitly. On disk: ``index.faiss``.
Imported only when a FAISS kind is built or loaded (see ``base.backend``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import faiss
import numpy as np
import torch
from tqdm.auto import tqdm

from twotower.retrieval.index.base import VectorIndex, log_once
from twotower.retrieval.index.builder import MIN_POINTS_PER_CENTROID

if TYPE_CHECKING:
    from twotower.retrieval.index.builder import IndexBuilder

log = logging.getLogger(__name__)

FAISS_FILE = "index.faiss"
# Query batches at least this large use FAISS's BLAS (sgemm) path for flat scans; below it FAISS uses
# its per-vector SIMD path, which is faster for a handful of queries. FAISS's default is 20.
FAISS_BLAS_THRESHOLD = 8
# Searches of at most this many queries run FAISS single-threaded: one query cannot use two cores
# well, and OpenMP start-up/spin on a loaded 2-core box costs more than it saves (see experiments/RESULTS.md,
# "Vector index benchmark").
SINGLE_THREAD_MAX_QUERIES = 4
# Training on fewer vectors than this runs single-threaded (see _single_thread).
SINGLE_THREAD_MAX_TRAIN = 20_000
ADD_CHUNK = 65_536


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


class FaissIndex(VectorIndex):
    """A FAISS index of one of the FAISS kinds."""

    def __init__(self, kind: str, index: Any, info: dict[str, Any], **kwargs: Any) -> None:
        super().__init__(kind, index.d, index.ntotal, info, **kwargs)
        self.faiss_index = index

    def _search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        # FAISS's BLAS threshold is a process-wide setting: it is set here, where FAISS searches, rather
        # than at import, so that importing twotower changes nothing for other FAISS users in the process.
        # Batched flat scans then take the BLAS path (~19x faster than the default for mid-size batches).
        faiss.cvar.distance_compute_blas_threshold = FAISS_BLAS_THRESHOLD
        with _single_thread(queries.shape[0] <= SINGLE_THREAD_MAX_QUERIES):
            scores, ids = self.faiss_index.search(queries, k)
        return scores.astype(np.float32, copy=False), ids.astype(np.int64, copy=False)

    def _cpu_index(self) -> Any:
        if self.device == "cuda" and self.kind != "hnsw":
            return faiss.index_gpu_to_cpu(self.faiss_index)
        return self.faiss_index

    def _stored_vectors(self, ids: np.ndarray) -> np.ndarray | None:
        if self.kind != "flat":
            return None  # compressed or graph indexes do not keep exact vectors to reconstruct
        return self._cpu_index().reconstruct_batch(ids.astype(np.int64))

    def _save_files(self, directory: Path) -> None:
        faiss.write_index(self._cpu_index(), str(directory / FAISS_FILE))

    def memory_bytes(self) -> int:
        return int(faiss.serialize_index(self._cpu_index()).size)


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
        log_once("faiss-no-cuda", "index.device=cuda but no CUDA device is visible; FAISS index stays on CPU")
        return index, "cpu"
    get_num_gpus = getattr(faiss, "get_num_gpus", None)
    n_gpus = int(get_num_gpus()) if get_num_gpus is not None else 0
    if n_gpus == 0:
        if device == "cuda" or torch.cuda.is_available():
            log_once(
                "faiss-no-gpu",
                "FAISS has no GPU support in this install (faiss-cpu); the index stays on CPU. "
                "Install faiss-gpu, or use index=torch_exact for exact search on the GPU",
            )
        return index, "cpu"
    if kind == "hnsw":
        log_once("faiss-hnsw-gpu", "FAISS has no GPU HNSW; the hnsw index stays on CPU")
        return index, "cpu"
    try:
        if n_gpus > 1:
            gpu_index = faiss.index_cpu_to_all_gpus(index)
        else:
            gpu_index = faiss.index_cpu_to_gpu(faiss.StandardGpuResources(), 0, index)
    except Exception as e:  # FAISS raises RuntimeError for unsupported GPU configurations
        log_once(f"faiss-gpu-fail-{kind}", f"moving the {kind} index to the GPU failed ({e}); staying on CPU")
        return index, "cpu"
    log.info("%s index moved to %d GPU(s)", kind, n_gpus)
    return gpu_index, "cuda"


def build(builder: IndexBuilder, vectors: np.ndarray, info: dict[str, Any]) -> FaissIndex:
    """Train (when the kind needs it) and fill a FAISS index with normalized float32 ``vectors [N, dim]``."""
    t0 = time.perf_counter()
    kind = info["kind"]
    n, dim = vectors.shape
    index = faiss.index_factory(dim, info["factory"], faiss.METRIC_INNER_PRODUCT)
    if kind == "hnsw":
        index.hnsw.efConstruction = builder.ef_construction
    if kind == "ivfpq":
        # Polysemous codes are never used by our searches, and their training dominated build time.
        faiss.downcast_index(faiss.extract_index_ivf(index)).do_polysemous_training = False
    if not index.is_trained:
        n_train = min(n, max(builder.train_sample, MIN_POINTS_PER_CENTROID * builder.resolve_nlist(n)))
        rows = np.sort(np.random.default_rng(0).choice(n, n_train, replace=False)) if n_train < n else None
        log.info("training %s on %d of %d vectors", info["factory"], n_train, n)
        with _single_thread(n_train < SINGLE_THREAD_MAX_TRAIN):
            index.train(vectors if rows is None else vectors[rows])
    with (
        _single_thread(n < SINGLE_THREAD_MAX_TRAIN),
        tqdm(total=n, desc=f"index {kind}", unit="vec", disable=n < 4 * ADD_CHUNK) as bar,
    ):
        for start in range(0, n, ADD_CHUNK):
            index.add(vectors[start : start + ADD_CHUNK])
            bar.update(min(ADD_CHUNK, n - start))
    _apply_search_params(index, kind, info["params"])
    index, info["device"] = _maybe_to_gpu(index, kind, builder.device)
    info["build_seconds"] = round(time.perf_counter() - t0, 3)
    log.info(
        "built %s index (%s) over %d x %d in %.1fs", kind, info["factory"], n, dim, info["build_seconds"]
    )
    return FaissIndex(kind, index, info, source=vectors, recall_warn_below=builder.recall_warn_below)


def load(directory: Path, info: dict[str, Any], device: str) -> FaissIndex:
    """Load ``index.faiss`` checked against ``info`` (the parsed index.json)."""
    kind, ntotal, dim = info["kind"], int(info["ntotal"]), int(info["dim"])
    path, meta_path = directory / FAISS_FILE, directory / "index.json"
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
    _apply_search_params(index, kind, info.get("params", {}))
    index, info["device"] = _maybe_to_gpu(index, kind, device)
    return FaissIndex(kind, index, info, recall_warn_below=float(info.get("recall_warn_below", 0.95)))
