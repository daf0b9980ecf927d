"""Full-catalog retrieval metrics (torchmetrics, DDP-synced) and a memory-bounded top-k over the catalog.

Next-item evaluation: each query has one target item; the model ranks the whole catalog and we score the
target's rank. No Lightning or Hydra imports here (core logic).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torchmetrics
from torch import Tensor

__all__ = ["RetrievalMetrics", "topk_scores_chunked"]


def _exclusion_mask(exclude: Tensor, num_queries: int, start: int, stop: int) -> Tensor:
    """Bool ``[B, stop - start]`` mask of the excluded items that fall inside catalog chunk ``[start, stop)``."""
    width = stop - start
    if exclude.dtype == torch.bool:
        return exclude[:, start:stop]
    index = exclude if exclude.dim() == 2 else exclude.unsqueeze(0).expand(num_queries, -1)  # [B, E]
    in_chunk = (index >= start) & (index < stop)  # [B, E]; -1 padding is never in a chunk
    mask = torch.zeros(num_queries, width, dtype=torch.bool, device=index.device)
    rows = torch.arange(num_queries, device=index.device).unsqueeze(1).expand_as(index)  # [B, E]
    mask[rows[in_chunk], index[in_chunk] - start] = True
    return mask


def topk_scores_chunked(
    queries: Tensor, items: Tensor, k: int, chunk_size: int = 65536, exclude: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """Exact inner-product top-k of every query over the whole catalog, in catalog chunks.

    Args:
        queries: ``[B, D]``.
        items: ``[N, D]`` (catalog embeddings, same dtype/device as ``queries``).
        k: results per query; clamped to ``N``.
        chunk_size: catalog rows scored at once; peak memory is ``O(B * (chunk_size + k))``.
        exclude: items never to return (e.g. the buyer's history): a long tensor of item indices ``[B, E]``
            (one row per query, padded with -1) or ``[E]`` (the same for all queries), or a bool mask ``[B, N]``.

    Returns:
        ``(scores [B, k], indices [B, k])``, best first. If exclusion leaves fewer than ``k`` items, the
        remaining slots hold score ``-inf`` and index ``-1``.
    """
    if queries.dim() != 2 or items.dim() != 2 or queries.shape[1] != items.shape[1]:
        raise ValueError(
            f"queries must be [B, D] and items [N, D] with the same D; got {tuple(queries.shape)} and "
            f"{tuple(items.shape)}"
        )
    if k <= 0:
        raise ValueError(f"k must be > 0; got {k}")
    if chunk_size <= 0:
        raise ValueError(f"chunk_size must be > 0; got {chunk_size}")
    num_queries, num_items = queries.shape[0], items.shape[0]
    if num_items == 0:
        raise ValueError("items is empty: the catalog has no embeddings to search")
    if exclude is not None:
        if exclude.dtype == torch.bool and exclude.shape != (num_queries, num_items):
            raise ValueError(
                f"a bool exclude mask must be [B, N] = [{num_queries}, {num_items}]; got {tuple(exclude.shape)}"
            )
        if exclude.dtype != torch.bool and (
            exclude.dim() not in (1, 2) or (exclude.dim() == 2 and exclude.shape[0] != num_queries)
        ):
            raise ValueError(
                f"exclude indices must be [B={num_queries}, E] or [E]; got {tuple(exclude.shape)}"
            )
    k = min(k, num_items)

    best_scores: Tensor | None = None
    best_indices: Tensor | None = None
    for start in range(0, num_items, chunk_size):
        stop = min(start + chunk_size, num_items)
        scores = queries @ items[start:stop].T  # [B, chunk]
        if exclude is not None:
            scores = scores.masked_fill(_exclusion_mask(exclude, num_queries, start, stop), float("-inf"))
        chunk_scores, chunk_indices = torch.topk(scores, min(k, stop - start), dim=1)  # [B, <=k]
        chunk_indices = chunk_indices + start
        if best_scores is None or best_indices is None:
            best_scores, best_indices = chunk_scores, chunk_indices
            continue
        # Merge the running top-k with this chunk's top-k: [B, <=k + <=k] -> [B, <=k] (chunks smaller than k
        # leave fewer than k columns until enough rows have been seen).
        merged_scores = torch.cat([best_scores, chunk_scores], dim=1)
        merged_indices = torch.cat([best_indices, chunk_indices], dim=1)
        best_scores, order = torch.topk(merged_scores, min(k, merged_scores.shape[1]), dim=1)
        best_indices = torch.gather(merged_indices, 1, order)
    assert best_scores is not None and best_indices is not None  # num_items > 0 guarantees one chunk
    if exclude is not None:
        best_indices = best_indices.masked_fill(torch.isneginf(best_scores), -1)
    return best_scores, best_indices


class RetrievalMetrics(torchmetrics.Metric):
    """Recall / NDCG / hit rate / coverage at several K, plus MRR, for single-target next-item retrieval.

    ``update(topk_indices, targets)`` takes each query's ranked top-``Kmax`` item indices (e.g. from
    :func:`topk_scores_chunked`) and its one target item index; targets of -1 are ignored (no known target).
    With one target per query, ``recall@K == hit_rate@K`` (both are the fraction of queries whose target is in
    the top K); both are reported so dashboards comparing with multi-target setups keep their names.
    ``ndcg@K`` is ``1 / log2(rank + 2)`` for a target at 0-based ``rank < K`` (the ideal DCG is 1).
    ``mrr`` is the mean of ``1 / (rank + 1)`` within the given list, 0 when the target is absent.
    ``coverage@K`` (only with ``num_items``) is the fraction of the catalog that appears in any top-K list
    of *any* row passed to ``update``, including rows whose target is -1.

    All states are sums/counts (``dist_reduce_fx="sum"``) plus, for coverage, a per-item best rank
    (``"min"``), so they sync across DDP ranks and merge with :meth:`merge_state`. Computing with no valid
    query returns zeros.
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(
        self, k_values: Sequence[int] = (10, 50, 100), num_items: int | None = None, prefix: str = ""
    ) -> None:
        super().__init__()
        k_values = sorted({int(k) for k in k_values})
        if not k_values or k_values[0] <= 0:
            raise ValueError(f"k_values must be a non-empty list of positive integers; got {k_values}")
        if num_items is not None and num_items <= 0:
            raise ValueError(f"num_items must be > 0 (the catalog size) or None; got {num_items}")
        self.k_values = k_values
        self.num_items = num_items
        self.prefix = prefix
        num_k = len(k_values)
        self.add_state("hits", default=torch.zeros(num_k, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("ndcg_sum", default=torch.zeros(num_k, dtype=torch.float32), dist_reduce_fx="sum")
        self.add_state("rr_sum", default=torch.zeros((), dtype=torch.float32), dist_reduce_fx="sum")
        self.add_state("count", default=torch.zeros((), dtype=torch.long), dist_reduce_fx="sum")
        if num_items is not None:
            # Best (0-based) rank at which each item appeared in any list; max(k) means "never in a top-max(k)".
            # One state serves every K; uint8 (NCCL-supported) keeps a 10M catalog at 10 MB.
            dtype = torch.uint8 if k_values[-1] < 255 else torch.int32
            self.add_state(
                "best_rank", default=torch.full((num_items,), k_values[-1], dtype=dtype), dist_reduce_fx="min"
            )

    def update(self, topk_indices: Tensor, targets: Tensor) -> None:
        """Add a batch: ``topk_indices`` ``[B, Kmax]`` ranked item indices (-1 = empty slot), ``targets`` ``[B]``."""
        if topk_indices.dim() != 2 or targets.shape != (topk_indices.shape[0],):
            raise ValueError(
                f"expected topk_indices [B, Kmax] and targets [B]; got {tuple(topk_indices.shape)} and "
                f"{tuple(targets.shape)}"
            )
        topk_indices = topk_indices.long()
        targets = targets.long()
        if self.num_items is not None and topk_indices.numel() and int(topk_indices.max()) >= self.num_items:
            raise ValueError(
                f"topk_indices holds item index {int(topk_indices.max())} but num_items={self.num_items}; "
                "pass the full catalog size to RetrievalMetrics"
            )

        valid = targets >= 0  # [B]
        match = (topk_indices == targets.unsqueeze(1)) & valid.unsqueeze(1)  # [B, Kmax]
        found = match.any(dim=1)  # [B]
        rank = match.int().argmax(dim=1)  # [B]; first match (0 where not found, masked by `found`)
        k_tensor = torch.tensor(self.k_values, device=rank.device)
        in_top_k = found.unsqueeze(1) & (rank.unsqueeze(1) < k_tensor.unsqueeze(0))  # [B, num_k]
        gain = 1.0 / torch.log2(rank.float() + 2.0)  # [B]
        self.hits += in_top_k.sum(dim=0)  # [num_k]
        self.ndcg_sum += (in_top_k.float() * gain.unsqueeze(1)).sum(dim=0)  # [num_k]
        self.rr_sum += torch.where(found, 1.0 / (rank.float() + 1.0), 0.0).sum()
        self.count += valid.sum()

        if self.num_items is not None:
            width = min(topk_indices.shape[1], self.k_values[-1])
            shown = topk_indices[:, :width]  # [B, width]
            ranks = torch.arange(width, device=shown.device).expand_as(shown)  # [B, width]
            keep = shown >= 0
            self.best_rank.scatter_reduce_(
                0, shown[keep], ranks[keep].to(self.best_rank.dtype), reduce="amin", include_self=True
            )

    def compute(self) -> dict[str, Tensor]:
        """``{prefix}recall@K``, ``ndcg@K``, ``hit_rate@K``, ``coverage@K`` (with num_items) and ``mrr``."""
        denom = self.count.clamp(min=1).float()
        hit_rate = self.hits.float() / denom
        ndcg = self.ndcg_sum / denom
        out: dict[str, Tensor] = {}
        for i, k in enumerate(self.k_values):
            out[f"{self.prefix}recall@{k}"] = hit_rate[i]
            out[f"{self.prefix}ndcg@{k}"] = ndcg[i]
            out[f"{self.prefix}hit_rate@{k}"] = hit_rate[i]
            if self.num_items is not None:
                covered = (self.best_rank.long() < k).sum()
                out[f"{self.prefix}coverage@{k}"] = covered.float() / self.num_items
        out[f"{self.prefix}mrr"] = self.rr_sum / denom
        return out
