"""Moved to :mod:`twotower.evaluation.metrics`; this alias keeps ``from twotower.metrics import ...`` working
until the importers (model/module.py, retrieval/index.py) switch. Delete it then."""

from twotower.evaluation.metrics import RetrievalMetrics, topk_scores_chunked

__all__ = ["RetrievalMetrics", "topk_scores_chunked"]
