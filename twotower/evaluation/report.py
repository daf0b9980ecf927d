"""Scores of ranked lists (accuracy, coverage, diversity, novelty) overall and per slice, and the text tables.
Plain numpy/PyTorch: the Hydra entry point is ``twotower.evaluate``.

Definitions (single-target next-item evaluation; every method ranks the same full candidate catalog):

- ``recall@K`` = ``hit_rate@K``: fraction of queries whose target is in the top K; ``precision@K`` = recall@K / K
  (one relevant item per query); ``ndcg@K`` and ``mrr`` as in :class:`twotower.evaluation.metrics.RetrievalMetrics`
  (``mrr`` counts ranks within the top max(K) only).
- ``coverage@K``: fraction of the catalog that appears in at least one top-K list.
- ``diversity@L``: intra-list diversity, the mean over lists of the mean pairwise ``1 - cosine`` among the top L
  (L = 10, or max(K) if smaller), measured with the *text encoder's* product vectors for every method: a
  content space no ranking method was trained in (text_only ranks in it, so its lists look least diverse
  there by construction).
- ``popularity_percentile@L``: mean training-popularity percentile (0 = least, 1 = most interacted-with; ties
  share their average rank) of the recommended items; ``novelty@L`` = 1 - that (higher = less popular items).
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from twotower.evaluation.metrics import RetrievalMetrics

__all__ = [
    "HISTORY_BUCKETS",
    "history_length_slices",
    "intra_list_diversity",
    "popularity_percentile",
    "ranking_metrics",
    "evaluate_rankings",
    "format_table",
    "report_text",
]

# Buyer history-length buckets (events before the target): lower bounds; the last is open-ended.
HISTORY_BUCKETS: tuple[int, ...] = (1, 2, 5, 10, 20, 50)


def popularity_percentile(counts: np.ndarray) -> np.ndarray:
    """float64 [N] in (0, 1]: each item's popularity percentile (average rank for ties, as pandas ranks)."""
    return pd.Series(np.asarray(counts, dtype=np.float64)).rank(method="average", pct=True).to_numpy()


def intra_list_diversity(topk: np.ndarray, vectors: np.ndarray | torch.Tensor, chunk: int = 2048) -> float:
    """Mean over lists of the mean pairwise ``1 - cosine`` among each list's items (``topk`` int [Q, L])."""
    topk = np.asarray(topk)
    if topk.ndim != 2 or topk.shape[1] < 2 or not len(topk):
        return 0.0
    unit = F.normalize(torch.as_tensor(np.asarray(vectors, dtype=np.float32)), dim=1)
    width = topk.shape[1]
    off_diagonal = ~torch.eye(width, dtype=torch.bool)
    total = 0.0
    for start in range(0, len(topk), chunk):
        rows = unit[torch.from_numpy(topk[start : start + chunk])]  # [q, L, d]
        cosine = rows @ rows.transpose(1, 2)  # [q, L, L]
        total += float((1.0 - cosine)[:, off_diagonal].mean(dim=1).sum())  # sum over lists of per-list means
    return total / len(topk)


def ranking_metrics(
    topk: np.ndarray,
    targets: np.ndarray,
    k_values: Sequence[int],
    num_items: int,
    popularity_pct: np.ndarray | None = None,
    diversity_vectors: np.ndarray | None = None,
    list_k: int = 10,
    coverage: bool = True,
) -> dict[str, float]:
    """All metrics of one method's rankings ``topk`` int [Q, max(K)] against ``targets`` int [Q]."""
    k_values = sorted({int(k) for k in k_values})
    metric = RetrievalMetrics(k_values, num_items if coverage else None)
    if len(targets):
        metric.update(
            torch.from_numpy(np.asarray(topk, dtype=np.int64)),
            torch.from_numpy(np.asarray(targets, dtype=np.int64)),
        )
    with warnings.catch_warnings():
        # an empty slice (e.g. no cold targets) computes zeros; torchmetrics warns about compute before update
        warnings.filterwarnings("ignore", message=".*before the ``update``.*")
        out = {name: float(value) for name, value in metric.compute().items()}
    for k in k_values:
        out[f"precision@{k}"] = out[f"recall@{k}"] / k
    list_k = min(list_k, k_values[-1], topk.shape[1])
    head = np.asarray(topk)[:, :list_k]
    if popularity_pct is not None:
        pct = float(popularity_pct[head].mean()) if head.size else 0.0
        out[f"popularity_percentile@{list_k}"] = pct
        out[f"novelty@{list_k}"] = 1.0 - pct if head.size else 0.0
    if diversity_vectors is not None:
        out[f"diversity@{list_k}"] = intra_list_diversity(head, diversity_vectors)
    return dict(sorted(out.items(), key=lambda item: _metric_order(item[0])))


def _metric_order(name: str) -> tuple[int, int, str]:
    base, _, k = name.partition("@")
    order = [
        "recall",
        "precision",
        "ndcg",
        "hit_rate",
        "mrr",
        "coverage",
        "diversity",
        "novelty",
        "popularity_percentile",
    ]
    return (order.index(base) if base in order else len(order), int(k) if k.isdigit() else 0, name)


def history_length_slices(
    lengths: np.ndarray, buckets: Sequence[int] = HISTORY_BUCKETS
) -> dict[str, np.ndarray]:
    """Bool masks per history-length bucket, named ``history_1``, ``history_2-4``, ..., ``history_50+``."""
    lengths = np.asarray(lengths)
    out: dict[str, np.ndarray] = {}
    for i, low in enumerate(buckets):
        high = buckets[i + 1] if i + 1 < len(buckets) else None
        if high is None:
            name, mask = f"history_{low}+", lengths >= low
        else:
            name = f"history_{low}" if high == low + 1 else f"history_{low}-{high - 1}"
            mask = (lengths >= low) & (lengths < high)
        out[name] = mask
    return out


def evaluate_rankings(
    rankings: Mapping[str, np.ndarray],
    targets: np.ndarray,
    k_values: Sequence[int],
    num_items: int,
    item_counts: np.ndarray,
    diversity_vectors: np.ndarray | None = None,
    slices: Mapping[str, np.ndarray] | None = None,
    list_k: int = 10,
) -> dict[str, Any]:
    """``{method: metrics, ..., "slices": {slice: {"queries": n, method: metrics}}}`` for ranked top-k lists.

    ``rankings``: method -> int [Q, max(K)] item indices; ``targets`` int [Q]; ``item_counts`` [N] training-period
    counts (popularity percentiles); ``slices``: name -> bool [Q] query mask. Slices report accuracy only
    (coverage/diversity/novelty are about whole lists, reported overall).
    """
    targets = np.asarray(targets)
    pct = popularity_percentile(item_counts)
    results: dict[str, Any] = {
        name: ranking_metrics(top, targets, k_values, num_items, pct, diversity_vectors, list_k)
        for name, top in rankings.items()
    }
    sliced: dict[str, Any] = {}
    for slice_name, mask in (slices or {}).items():
        mask = np.asarray(mask, dtype=bool)
        entry: dict[str, Any] = {"queries": int(mask.sum())}
        for name, top in rankings.items():
            entry[name] = ranking_metrics(top[mask], targets[mask], k_values, num_items, coverage=False)
        sliced[slice_name] = entry
    results["slices"] = sliced
    return results


def format_table(
    rows: Mapping[str, Mapping[str, float]], columns: Sequence[str], row_title: str = "method"
) -> str:
    """A fixed-width text table: one row per key of ``rows``, the given metric columns (missing -> '-')."""
    header = [row_title, *columns]

    def cell(value: Any) -> str:
        return str(value) if isinstance(value, int | np.integer) else f"{value:.4f}"

    body = [
        [name, *(cell(values[c]) if c in values else "-" for c in columns)] for name, values in rows.items()
    ]
    widths = [max(len(str(row[i])) for row in [header, *body]) for i in range(len(header))]
    lines = [
        "  ".join(
            str(text).rjust(w) if i else str(text).ljust(w)
            for i, (text, w) in enumerate(zip(row, widths, strict=True))
        )
        for row in [header, *body]
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def report_text(
    results: Mapping[str, Any], k_values: Sequence[int], methods: Sequence[str], list_k: int
) -> str:
    """The tables evaluate prints: served setting (all metrics, slices), the other exclusion setting, choices."""
    meta = results["meta"]
    k_values = sorted(k_values)
    list_k = min(list_k, k_values[-1])
    k10 = 10 if 10 in k_values else k_values[-1]
    columns = [f"recall@{k}" for k in k_values] + [
        f"ndcg@{k10}",
        "mrr",
        f"coverage@{list_k}",
        f"diversity@{list_k}",
        f"novelty@{list_k}",
    ]
    served = results["scoring"]
    text = (
        f"\n{meta['split']} split: {meta['queries']} queries, {meta['candidates']} candidates; {meta['ranking']}\n"
        f"served scoring ({meta.get('scoring_source')}): {served}\n"
        + format_table({m: results[m] for m in methods}, columns)
    )
    entries = [("", results)]
    if "other_exclusion" in results:
        entries.append(("other: ", results["other_exclusion"]))
    summary = {}
    for m in methods:
        row: dict[str, float] = {}
        for label, entry in (("served", results), ("other", results.get("other_exclusion"))):
            if entry is not None and m in entry:
                row[f"{label} recall@{k10}"] = entry[m][f"recall@{k10}"]
                row[f"{label} ndcg@{k10}"] = entry[m][f"ndcg@{k10}"]
        summary[m] = row
    if "other_exclusion" in results:
        other = "excluded" if results["other_exclusion"]["exclude_seen"] else "allowed"
        text += (
            f"\n\nserved vs the other exclusion setting (seen items {other}; the model's scoring there: "
            f"{results['other_exclusion'].get('scoring')})\n"
        ) + format_table(summary, [c for c in next(iter(summary.values()), {})])
    for label, entry in entries:
        slice_rows = {
            name: {"queries": int(e["queries"]), **{m: e[m][f"recall@{k10}"] for m in methods if m in e}}
            for name, e in entry["slices"].items()
        }
        text += (
            f"\n\n{label}recall@{k10} by slice (warm/cold target; repeat/new_item: target in the history "
            "input or not; history length in events)\n"
            + format_table(slice_rows, ["queries", *methods], row_title="slice")
        )
    choices = {
        m: {key: json.dumps(value, sort_keys=True) for key, value in entry.items() if key != "grid"}
        for m, entry in results.get("tuning", {}).items()
    }
    if choices:
        text += "\n\nchosen on val (ranker parameters, scoring settings, val score):"
        for m, entry in choices.items():
            for key, value in entry.items():
                text += f"\n  {m} [{key}]: {value}"
    return text
