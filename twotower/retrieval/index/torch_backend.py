"""The ``torch_exact`` backend: exact search as one matmul + top-k over a preallocated torch matrix.

Needs no FAISS (this module never imports it), so a machine without FAISS can still train and search. On
CUDA the matrix is fp16 unless told otherwise. On disk: ``index.npy``, the normalized float32 vectors -- a
self-contained copy, so an index directory never depends on a sibling file.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from twotower.retrieval.index.base import VectorIndex, exact_topk, log_once

if TYPE_CHECKING:
    from twotower.retrieval.index.builder import IndexBuilder

TORCH_FILE = "index.npy"
PRECISIONS: tuple[str, ...] = ("auto", "float32", "float16", "bfloat16")


def resolve_device(device: str) -> str:
    """``auto`` -> cuda when torch sees a GPU; ``cuda`` without one -> cpu (logged once)."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        log_once("no-cuda", "index.device=cuda but torch.cuda.is_available() is False; using the CPU")
        return "cpu"
    return device


def _matrix(vectors: np.ndarray, device: str, precision: str) -> tuple[torch.Tensor, str, str]:
    """The score matrix: float32 on CPU, fp16 on CUDA unless told otherwise; returns (matrix, device, dtype)."""
    dev = resolve_device(device)
    if precision == "auto":
        precision = "float16" if dev == "cuda" else "float32"
    matrix = torch.from_numpy(np.ascontiguousarray(vectors, dtype=np.float32))
    return matrix.to(device=dev, dtype=getattr(torch, precision)), dev, precision


class TorchIndex(VectorIndex):
    """Exact inner-product search over a torch matrix ``[ntotal, dim]``."""

    def __init__(self, matrix: torch.Tensor, info: dict[str, Any], **kwargs: Any) -> None:
        super().__init__("torch_exact", matrix.shape[1], matrix.shape[0], info, **kwargs)
        self.matrix = matrix

    def _search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        return exact_topk(self.matrix, queries, k)

    def _stored_vectors(self, ids: np.ndarray) -> np.ndarray:
        return self.matrix[torch.from_numpy(ids)].float().cpu().numpy()

    def _save_files(self, directory: Path) -> None:
        np.save(directory / TORCH_FILE, self.matrix.float().cpu().numpy())

    def memory_bytes(self) -> int:
        return self.matrix.numel() * self.matrix.element_size()


def build(builder: IndexBuilder, vectors: np.ndarray, info: dict[str, Any]) -> TorchIndex:
    """Index normalized float32 ``vectors [N, dim]``; fills ``info`` (device, precision, build time)."""
    t0 = time.perf_counter()
    matrix, info["device"], info["precision"] = _matrix(vectors, builder.device, builder.precision)
    info["build_seconds"] = round(time.perf_counter() - t0, 3)
    return TorchIndex(matrix, info, source=vectors, recall_warn_below=builder.recall_warn_below)


def load(directory: Path, info: dict[str, Any], device: str) -> TorchIndex:
    """Load ``index.npy`` checked against ``info`` (the parsed index.json)."""
    path = directory / TORCH_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found (index.json says kind=torch_exact)")
    vectors = np.load(path, allow_pickle=False)
    ntotal, dim = int(info["ntotal"]), int(info["dim"])
    if vectors.ndim != 2 or vectors.shape != (ntotal, dim):
        raise ValueError(
            f"{path} holds an array of shape {vectors.shape} but {directory / 'index.json'} says "
            f"ntotal={ntotal}, dim={dim}; the two files are from different builds"
        )
    precision = info.get("params", {}).get("precision", "auto")
    matrix, info["device"], info["precision"] = _matrix(vectors, device, precision)
    return TorchIndex(matrix, info, recall_warn_below=float(info.get("recall_warn_below", 0.95)))
