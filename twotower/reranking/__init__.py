"""Second stage after retrieval: reorder the top `reranker.candidates` retrieved items and keep k.

Pluggable like the buyer-tower aggregations: `@register_reranker("name")` + one yaml under conf/reranker/
(none, business_rules, mmr, chain). See `twotower.reranking.base` for the interface and the intended call sites.
"""

from twotower.reranking.base import (
    RERANKERS,
    Passthrough,
    RerankContext,
    Reranker,
    build_reranker,
    register_reranker,
    rerank_batch,
)
from twotower.reranking.chain import Chain
from twotower.reranking.mmr import MaximalMarginalRelevance
from twotower.reranking.rules import BusinessRules

__all__ = [
    "RERANKERS",
    "BusinessRules",
    "Chain",
    "MaximalMarginalRelevance",
    "Passthrough",
    "RerankContext",
    "Reranker",
    "build_reranker",
    "register_reranker",
    "rerank_batch",
]
