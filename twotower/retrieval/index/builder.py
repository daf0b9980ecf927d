"""IndexBuilder: one per ``conf/index/<kind>.yaml`` node; validates the settings and builds a VectorIndex.

Kinds:

==============  ==================================  ==========================================================
kind            FAISS factory string                use
==============  ==================================  ==========================================================
``auto``        ``flat`` below ``auto_threshold``   the default: exact while exact is fast, ``hnsw`` above
                products, ``hnsw`` from it on
``flat``        ``Flat``                            exact; small catalogs, offline evaluation
``ivf``         ``IVF{nlist},Flat``                 ANN, fast single queries, exact re-scoring of probed lists
``hnsw``        ``HNSW{M},Flat``                    ANN graph, the lowest single-query latency
``sq8``         ``IVF{nlist},SQ8``                  ANN + 8-bit codes: 4x less memory than ``ivf``
``ivfpq``       ``IVF{nlist},PQ{pq_m}x{nbits}``     ANN + product quantization: ~32x less memory, lower recall
``torch_exact`` (none: a torch matrix + ``topk``)   exact; fp16 matmul on CUDA when ``device="cuda"``
==============  ==================================  ==========================================================

Vectors are re-normalized on build, so scores are cosine similarities for normalized queries. Search
returns ``(scores [n, k] float32, ids [n, k] int64)`` where ids are row positions into the embeddings given
to :meth:`IndexBuilder.build`; ``k`` is clamped to ``ntotal``. An approximate index that finds fewer than
``k`` candidates pads with id ``-1`` (the FAISS convention). ``index.json`` records the kind actually built
(for ``auto``: ``flat`` or ``hnsw``, with ``chosen_by: auto`` and the threshold).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from twotower.retrieval.index.base import DEVICES, KINDS, METRIC, VectorIndex, backend, normalize

BUILD_KINDS: tuple[str, ...] = ("auto", *KINDS)
PRECISIONS: tuple[str, ...] = ("auto", "float32", "float16", "bfloat16")
# FAISS k-means wants at least this many training points per centroid.
MIN_POINTS_PER_CENTROID = 39
# index=auto: exact flat search below this many products, hnsw from it on. At 10K x 384 a flat query
# costs ~1.5 ms on 2 cores; at 100K it costs ~15 ms while hnsw stays under 1 ms (experiments/RESULTS.md).
AUTO_THRESHOLD = 10_000


class IndexBuilder:
    """Builds a :class:`VectorIndex` of one ``kind``; one per ``conf/index/<name>.yaml`` node.

    Args:
        kind: ``auto`` | ``flat`` | ``ivf`` | ``hnsw`` | ``sq8`` | ``ivfpq`` | ``torch_exact``.
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
        auto_threshold: with ``kind="auto"``, catalogs of fewer products get ``flat``, others ``hnsw``.

    Example:
        >>> index = IndexBuilder("hnsw", ef_search=64).build(embeddings)  # doctest: +SKIP
        >>> index.measure_recall(buyer_vectors)  # recall@10 against exact search  # doctest: +SKIP
        >>> index.save("bundle/")  # doctest: +SKIP
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
        auto_threshold: int = AUTO_THRESHOLD,
    ) -> None:
        if kind not in BUILD_KINDS:
            raise ValueError(f"index kind {kind!r} is not supported; valid kinds: {', '.join(BUILD_KINDS)}")
        for name, value, low in (
            ("nprobe", nprobe, 1),
            ("hnsw_m", hnsw_m, 2),
            ("ef_construction", ef_construction, 1),
            ("ef_search", ef_search, 1),
            ("pq_m", pq_m, 1),
            ("train_sample", train_sample, 1),
            ("auto_threshold", auto_threshold, 1),
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
        self.auto_threshold = auto_threshold

    def __repr__(self) -> str:
        return f"IndexBuilder(kind={self.kind!r}, device={self.device!r})"

    def resolve_kind(self, n: int) -> str:
        """The kind built for ``n`` vectors: ``kind`` itself, or for ``auto`` flat below the threshold, else hnsw."""
        if self.kind != "auto":
            return self.kind
        return "flat" if n < self.auto_threshold else "hnsw"

    def resolve_nlist(self, n: int) -> int:
        """IVF list count for ``n`` vectors: the configured value or ~4*sqrt(n), at most n // 39 (>= 1)."""
        nlist = self.nlist if self.nlist is not None else round(4 * math.sqrt(n))
        return max(1, min(nlist, n // MIN_POINTS_PER_CENTROID))

    def factory_string(self, n: int, dim: int) -> str:
        """The FAISS factory string this builder uses for ``n`` vectors of ``dim`` (``""`` for torch_exact)."""
        kind = self.resolve_kind(n)
        if kind == "flat":
            return "Flat"
        if kind == "hnsw":
            return f"HNSW{self.hnsw_m},Flat"
        if kind == "torch_exact":
            return ""
        nlist = self.resolve_nlist(n)
        if kind == "ivf":
            return f"IVF{nlist},Flat"
        if kind == "sq8":
            return f"IVF{nlist},SQ8"
        if dim % self.pq_m:
            raise ValueError(f"index.pq_m={self.pq_m} must divide the embedding dimension {dim}")
        # 8-bit codebooks need 256 * 39 training points; tiny catalogs get smaller codebooks.
        nbits = int(min(8, max(1, math.floor(math.log2(max(2, n // MIN_POINTS_PER_CENTROID))))))
        return f"IVF{nlist},PQ{self.pq_m}x{nbits}"

    def params(self, n: int) -> dict[str, Any]:
        """Search/build parameters recorded in ``index.json``."""
        kind = self.resolve_kind(n)
        if kind in ("ivf", "sq8", "ivfpq"):
            p: dict[str, Any] = {
                "nlist": self.resolve_nlist(n),
                "nprobe": min(self.nprobe, self.resolve_nlist(n)),
            }
            if kind == "ivfpq":
                p["pq_m"] = self.pq_m
            return p
        if kind == "hnsw":
            return {
                "hnsw_m": self.hnsw_m,
                "ef_construction": self.ef_construction,
                "ef_search": self.ef_search,
            }
        if kind == "torch_exact":
            return {"precision": self.precision}
        return {}

    def build(self, embeddings: np.ndarray) -> VectorIndex:
        """Re-normalize ``embeddings [N, dim]`` and index them; ids are row positions."""
        x = normalize(embeddings)
        n, dim = x.shape
        kind = self.resolve_kind(n)
        info: dict[str, Any] = {
            "kind": kind,
            "factory": self.factory_string(n, dim),
            "metric": METRIC,
            "ntotal": n,
            "dim": dim,
            "params": self.params(n),
            "recall_warn_below": self.recall_warn_below,
        }
        if self.kind == "auto":
            info["chosen_by"] = "auto"
            info["auto_threshold"] = self.auto_threshold
        return backend(kind).build(self, x, info)
