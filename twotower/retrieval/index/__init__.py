"""Vector index layer: build, search, save and load inner-product indexes over L2-normalized embeddings.

- ``builder.py``: :class:`IndexBuilder`, the kinds and their settings (one ``conf/index/<kind>.yaml`` each).
- ``base.py``: :class:`VectorIndex`, the interface every backend implements (search, recall, save, load).
- ``faiss_backend.py``: the FAISS kinds (flat, ivf, hnsw, sq8, ivfpq); imported only when one is used.
- ``torch_backend.py``: ``torch_exact``; needs no FAISS, so a machine without it can train and search.

On disk (:meth:`VectorIndex.save`): ``index.json`` (kind, factory string, metric, ntotal, dim, search
params, recall) plus ``index.faiss`` (FAISS kinds) or ``index.npy`` (torch_exact). The import path
``twotower.retrieval.index.IndexBuilder`` is recorded in configs and manifests: keep it.
"""

from twotower.retrieval.index.base import EXACT_KINDS, INDEX_JSON, KINDS, METRIC, VectorIndex, normalize
from twotower.retrieval.index.builder import AUTO_THRESHOLD, BUILD_KINDS, IndexBuilder

__all__ = [
    "AUTO_THRESHOLD",
    "BUILD_KINDS",
    "EXACT_KINDS",
    "INDEX_JSON",
    "KINDS",
    "METRIC",
    "IndexBuilder",
    "VectorIndex",
    "normalize",
]
