"""What the service plugs into a loaded Recommender: the re-ranking stage and the buyer-vector cache.

Both are attached right after a bundle is loaded (`attach`), before the recommender serves anything, so
the recommender stays immutable while it serves. The re-ranking context (catalog columns, item vectors,
the reranker's precomputed masks) is built once per bundle load; a bad column fails the load with the
column named.

Re-ranking: the stage asks retrieval for `reranker.fetch_size(k)` items (so `exclude_seen`, request filters
and the popularity fallback all apply to the candidates first), re-ranks them and keeps k. The popularity
fallback goes through it too, so filters such as `in_stock` hold for cold buyers.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from twotower.reranking import Passthrough, RerankContext, Reranker
from twotower.retrieval.index import builder as index_builder
from twotower.serving.buyer_cache import BuyerVectorCache
from twotower.serving.recommender import Query, QueryError, Recommendation, Recommender

__all__ = ["CachedVectors", "RerankStage", "attach", "warn_exact_search"]

log = logging.getLogger(__name__)
EXACT_KINDS = ("flat", "torch_exact")
_warned: set[str] = set()  # model versions already warned about in this process


class RerankStage:
    """`reranker` over one loaded bundle (its context is built here, once)."""

    def __init__(self, reranker: Reranker, recommender: Recommender) -> None:
        self.reranker = reranker
        self.context = RerankContext.from_catalog(recommender.catalog, recommender.embeddings)
        reranker.prepare(self.context)  # validates the columns the options name: a bad one fails the load

    def retrieve(
        self, recommender: Recommender, queries: Sequence[Query]
    ) -> list[Recommendation | QueryError]:
        """Retrieve `fetch_size(k)` candidates per query; `_result` hands them to `finish` before enrichment."""
        limit = recommender.num_items
        fetch = self.reranker.fetch_size
        wide = [dataclasses.replace(q, k=min(fetch(q.k), limit), keep=q.k) for q in queries]
        return recommender.retrieve(wide, rerank=False)

    def finish(self, rows: list[int], scores: list[float], k: int) -> tuple[list[int], list[float]]:
        """Re-rank retrieved candidates (best first) and keep at most k. `score` becomes the boosted score
        (rules) or stays the retrieval score in the new order (mmr)."""
        if not rows:
            return rows, scores
        kept, kept_scores = self.reranker.rerank(np.asarray(rows), np.asarray(scores), k, self.context)
        return kept.tolist(), kept_scores.tolist()


class CachedVectors:
    """The recommender's hook into a BuyerVectorCache: hits skip the tower, misses run in one batch."""

    def __init__(self, cache: BuyerVectorCache) -> None:
        self.cache = cache

    def vectors(self, prepared: Sequence[Any], compute: Callable[[Sequence[Any]], np.ndarray]) -> np.ndarray:
        found = [self.cache.get(p.cache_key) for p in prepared]
        missing = [i for i, v in enumerate(found) if v is None]
        if not missing:
            return np.stack(found)
        computed = compute([prepared[i] for i in missing])
        if len(missing) == len(prepared):
            out = computed
        else:
            out = np.empty((len(prepared), computed.shape[1]), dtype=np.float32)
            out[missing] = computed
            for i, vector in enumerate(found):
                if vector is not None:
                    out[i] = vector
        for i, vector in zip(missing, computed, strict=True):
            self.cache.put(prepared[i].cache_key, vector)
        return out


def warn_exact_search(recommender: Recommender) -> str | None:
    """Warn (once per model version and process) when exact search is served over at least the index auto
    threshold (`index=auto` would have built hnsw there); returns the message, or None when all is well."""
    index = recommender.index
    threshold = int(index.info.get("auto_threshold") or index_builder.AUTO_THRESHOLD)
    if index.kind not in EXACT_KINDS or recommender.num_items < threshold:
        return None
    message = (
        f"serving exact {index.kind} search over {recommender.num_items} products (model "
        f"{recommender.version}), at or above the index auto threshold of {threshold}: each query scores "
        "every product (~15 ms at 100K x 384 on 2 cores). Export with index=auto or index=hnsw, or serve "
        "with recommender.index=hnsw to rebuild the index at load."
    )
    if recommender.version not in _warned:
        _warned.add(recommender.version)
        log.warning(message)
    return message


def attach(
    recommender: Recommender, reranker: Reranker | None = None, cache: BuyerVectorCache | None = None
) -> Recommender:
    """Plug the re-ranking stage (None or `none` = retrieval order) and the cache into a fresh recommender
    (and warn if it serves exact search over a large catalog)."""
    warn_exact_search(recommender)
    if reranker is not None and not isinstance(reranker, Passthrough):
        recommender.stage = RerankStage(reranker, recommender)
        recommender.warm_up()  # the first request must not pay for the stage's lazy parts
    if cache is not None:
        recommender.vector_cache = CachedVectors(cache)
    return recommender
