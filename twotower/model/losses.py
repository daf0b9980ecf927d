"""InfoNCE (sampled softmax) loss for the two-tower model, with negative sampling helpers.

Sentence-transformers style: a pure function (:func:`info_nce_from_embeddings`) holds the maths and a thin
:class:`InfoNCELoss` module adds configuration and the cross-rank candidate gather used under DDP.

Candidates are the batch's unique positive items followed by sampled negatives. Two corrections apply:

- accidental hits: a candidate column holding the row's own positive item (other than the positive column
  itself) is masked, so the model is never pushed away from its target;
- logQ correction (Yi et al., 2019, "Sampling-bias-corrected neural modeling"): popular items appear as
  candidates more often, so ``log q`` (the log sampling probability, or expected count) of every candidate is
  subtracted from its logit, positive column included, as in the standard sampled-softmax correction.

No Lightning or Hydra imports here (core logic).
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "MASK_VALUE",
    "InfoNCELoss",
    "gather_candidates",
    "info_nce_from_embeddings",
    "item_log_q",
    "mixed_log_q",
    "sample_negatives",
]

# Large negative *finite* logit for masked columns: representable in fp16 (max 65504) and bf16, far below any
# real logit (|cos| / temperature + |log q| is at most a few hundred), so exp() underflows to exactly 0 in the
# float32 softmax and a masked column contributes nothing, with no inf - inf = NaN risk.
MASK_VALUE = -1.0e4


def info_nce_from_embeddings(
    query: Tensor,
    candidates: Tensor,
    positive_index: Tensor,
    temperature: float = 0.07,
    query_item_ids: Tensor | None = None,
    candidate_item_ids: Tensor | None = None,
    candidate_log_q: Tensor | None = None,
) -> Tensor:
    """Mean InfoNCE (softmax cross-entropy over candidates) of each query against its positive column.

    Args:
        query: ``[B, D]`` buyer vectors (L2-normalized).
        candidates: ``[C, D]`` item vectors (the batch's unique positives, then sampled negatives).
        positive_index: ``[B]`` long, the column in ``candidates`` of each row's positive.
        temperature: softmax temperature; logits are ``query @ candidates.T / temperature``.
        query_item_ids: ``[B]`` item id of each row's positive. With ``candidate_item_ids``, enables
            accidental-hit masking: column ``c`` of row ``b`` is masked when
            ``candidate_item_ids[c] == query_item_ids[b]`` and ``c != positive_index[b]``.
        candidate_item_ids: ``[C]`` item id of each candidate column.
        candidate_log_q: ``[C]`` log sampling probability (or log expected count) of each candidate;
            subtracted from every column's logit (logQ correction). Build it with :func:`item_log_q`,
            :func:`sample_negatives` and :func:`mixed_log_q`.

    Returns:
        Scalar float32 loss (the softmax is computed in float32 even under fp16/bf16 autocast).
    """
    if query.dim() != 2 or candidates.dim() != 2:
        raise ValueError(
            f"query and candidates must be 2-D [B, D] and [C, D]; got {tuple(query.shape)} and "
            f"{tuple(candidates.shape)}"
        )
    if query.shape[1] != candidates.shape[1]:
        raise ValueError(
            f"query dim {query.shape[1]} != candidate dim {candidates.shape[1]}: both towers must output the "
            "same embedding size"
        )
    num_rows, num_cols = query.shape[0], candidates.shape[0]
    if positive_index.shape != (num_rows,):
        raise ValueError(
            f"positive_index must have shape [{num_rows}] (one per query); got {tuple(positive_index.shape)}"
        )
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0; got {temperature}")
    if (query_item_ids is None) != (candidate_item_ids is None):
        raise ValueError(
            "accidental-hit masking needs both query_item_ids and candidate_item_ids; pass both or neither"
        )
    positive_index = positive_index.long()
    if num_rows and (int(positive_index.min()) < 0 or int(positive_index.max()) >= num_cols):
        raise ValueError(
            f"positive_index values must lie in [0, {num_cols}) (the candidate columns); got "
            f"min {int(positive_index.min())}, max {int(positive_index.max())}"
        )

    # Upcast: the matmul may run in half precision under autocast, the softmax should not.
    logits = (query @ candidates.T).float() / temperature  # [B, C]
    if candidate_log_q is not None:
        if candidate_log_q.shape != (num_cols,):
            raise ValueError(
                f"candidate_log_q must have shape [{num_cols}]; got {tuple(candidate_log_q.shape)}"
            )
        logits = logits - candidate_log_q.float().unsqueeze(0)  # [B, C] - [1, C]
    if query_item_ids is not None and candidate_item_ids is not None:
        if query_item_ids.shape != (num_rows,) or candidate_item_ids.shape != (num_cols,):
            raise ValueError(
                f"query_item_ids must be [{num_rows}] and candidate_item_ids [{num_cols}]; got "
                f"{tuple(query_item_ids.shape)} and {tuple(candidate_item_ids.shape)}"
            )
        same_item = query_item_ids.unsqueeze(1) == candidate_item_ids.unsqueeze(0)  # [B, C]
        is_positive_col = F.one_hot(positive_index, num_cols).bool()  # [B, C]
        logits = logits.masked_fill(same_item & ~is_positive_col, MASK_VALUE)
    return F.cross_entropy(logits, positive_index)


def _is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _all_gather_padded(tensor: Tensor, sizes: list[int], with_grad: bool) -> Tensor:
    """Gather ``tensor`` (first dim = this rank's size) from all ranks; returns the ranks' rows concatenated.

    Ranks may hold different numbers of rows: each pads to the largest size, gathers, then the padding is
    sliced away again (slicing keeps gradients).
    """
    max_size = max(sizes)
    pad_rows = max_size - tensor.shape[0]
    if pad_rows:
        tensor = torch.cat([tensor, tensor.new_zeros((pad_rows, *tensor.shape[1:]))])
    if with_grad:
        # Imported here: torch.distributed.nn is absent from builds without distributed support.
        import torch.distributed.nn.functional as dist_fn

        # Autograd-aware: the backward sums every rank's gradient for this rank's rows (reduce-scatter).
        parts = list(dist_fn.all_gather(tensor))
    else:
        parts = [torch.empty_like(tensor) for _ in sizes]
        dist.all_gather(parts, tensor.contiguous())
    return torch.cat([part[:size] for part, size in zip(parts, sizes, strict=True)])


def gather_candidates(
    candidates: Tensor,
    positive_index: Tensor,
    candidate_item_ids: Tensor | None = None,
    candidate_log_q: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor | None, Tensor | None]:
    """All-gather candidate vectors (with gradients), their ids and log q across DDP ranks.

    Ranks may hold different numbers of candidates (sizes are exchanged first). ``positive_index`` is
    shifted by the number of candidates on lower ranks so it indexes the gathered ``[sum C_r, D]`` matrix.
    Every rank must call this (and later run backward) — it is a collective. Without an initialized
    process group of size > 1 the inputs are returned unchanged.
    """
    if not _is_distributed():
        return candidates, positive_index, candidate_item_ids, candidate_log_q
    rank, world = dist.get_rank(), dist.get_world_size()
    local_size = torch.tensor([candidates.shape[0]], device=candidates.device, dtype=torch.long)
    size_parts = [torch.empty_like(local_size) for _ in range(world)]
    dist.all_gather(size_parts, local_size)
    sizes = [int(s.item()) for s in size_parts]
    offset = sum(sizes[:rank])

    all_candidates = _all_gather_padded(candidates, sizes, with_grad=True)
    all_ids = (
        None if candidate_item_ids is None else _all_gather_padded(candidate_item_ids, sizes, with_grad=False)
    )
    # log q is data (counts), not a function of the parameters: no gradient needed.
    all_log_q = (
        None
        if candidate_log_q is None
        else _all_gather_padded(candidate_log_q.detach(), sizes, with_grad=False)
    )
    return all_candidates, positive_index + offset, all_ids, all_log_q


class InfoNCELoss(nn.Module):
    """InfoNCE over in-batch + sampled candidates, with optional logQ correction and DDP candidate gather.

    Under DDP (process group initialized, world size > 1) with ``gather_across_ranks``, every rank's candidates
    become negatives for every rank's queries, gathered *with gradients*, so the number of negatives scales
    with world size. Ranks may use different candidate counts. Each rank returns the mean loss over its own
    queries; DDP's gradient averaging then yields the gradient of the mean over all ranks. Item ids are then
    compared across ranks, so another rank's copy of a row's positive is masked as an accidental hit —
    pass ``query_item_ids``/``candidate_item_ids`` to get that.
    """

    def __init__(
        self, temperature: float = 0.07, use_log_q_correction: bool = False, gather_across_ranks: bool = True
    ) -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"InfoNCELoss temperature must be > 0; got {temperature}")
        self.temperature = float(temperature)
        self.use_log_q_correction = use_log_q_correction
        self.gather_across_ranks = gather_across_ranks

    def forward(
        self,
        query: Tensor,
        candidates: Tensor,
        positive_index: Tensor,
        query_item_ids: Tensor | None = None,
        candidate_item_ids: Tensor | None = None,
        candidate_log_q: Tensor | None = None,
    ) -> Tensor:
        """Scalar loss; see :func:`info_nce_from_embeddings` for the arguments."""
        if self.use_log_q_correction and candidate_log_q is None:
            raise ValueError(
                "InfoNCELoss(use_log_q_correction=True) needs candidate_log_q (log sampling probability per "
                "candidate); pass it or set use_log_q_correction=False"
            )
        log_q = candidate_log_q if self.use_log_q_correction else None
        if self.gather_across_ranks:
            candidates, positive_index, candidate_item_ids, log_q = gather_candidates(
                candidates, positive_index, candidate_item_ids, log_q
            )
        return info_nce_from_embeddings(
            query,
            candidates,
            positive_index,
            temperature=self.temperature,
            query_item_ids=query_item_ids,
            candidate_item_ids=candidate_item_ids,
            candidate_log_q=log_q,
        )

    def extra_repr(self) -> str:
        return (
            f"temperature={self.temperature}, use_log_q_correction={self.use_log_q_correction}, "
            f"gather_across_ranks={self.gather_across_ranks}"
        )


def item_log_q(item_counts: Tensor, alpha: float = 1.0) -> Tensor:
    """Log probability of each item under ``p ∝ (count + 1) ** alpha``; ``[N]`` float32.

    ``alpha=1`` approximates in-batch sampling (positives are drawn ∝ interaction frequency); the +1 keeps
    never-seen items finite. ``alpha=0`` is uniform. The same distribution drives :func:`sample_negatives`.
    """
    if item_counts.dim() != 1 or item_counts.numel() == 0:
        raise ValueError(
            f"item_counts must be a non-empty 1-D tensor [num_items]; got shape {tuple(item_counts.shape)}"
        )
    if bool((item_counts < 0).any()):
        raise ValueError("item_counts must be >= 0 (interaction counts per item)")
    log_weight = alpha * torch.log1p(item_counts.double())  # log((count + 1) ** alpha)
    return (log_weight - torch.logsumexp(log_weight, dim=0)).float()


def sample_negatives(
    num_items: int,
    num_negatives: int,
    generator: torch.Generator | None = None,
    item_counts: Tensor | None = None,
    alpha: float = 0.0,
) -> tuple[Tensor, Tensor]:
    """Draw ``num_negatives`` item ids with replacement; returns ``(ids [N] long, log_q [N] float32)``.

    Uniform over ``[0, num_items)`` when ``alpha == 0`` or ``item_counts`` is None, else ``p ∝ (count + 1) **
    alpha`` (``alpha`` ≈ 0.75 is the word2vec choice). ``log_q`` is the per-draw log probability of each
    drawn id; for the logQ correction of a mixed candidate set see :func:`mixed_log_q`. Ids are on the CPU
    (or the generator's device); move them with the batch.
    """
    if num_items <= 0:
        raise ValueError(f"num_items must be > 0; got {num_items}")
    if num_negatives < 0:
        raise ValueError(f"num_negatives must be >= 0; got {num_negatives}")
    device = generator.device if generator is not None else torch.device("cpu")
    if alpha == 0.0 or item_counts is None:
        ids = torch.randint(0, num_items, (num_negatives,), generator=generator, device=device)
        return ids, torch.full((num_negatives,), -math.log(num_items), dtype=torch.float32, device=device)
    if item_counts.shape != (num_items,):
        raise ValueError(
            f"item_counts must have shape [num_items={num_items}]; got {tuple(item_counts.shape)}"
        )
    log_p = item_log_q(item_counts.to(device), alpha)  # [num_items]
    ids = torch.multinomial(log_p.double().exp(), num_negatives, replacement=True, generator=generator)
    return ids, log_p[ids]


def mixed_log_q(
    batch_log_q: Tensor, num_batch_draws: int, negative_log_q: Tensor, num_negative_draws: int
) -> Tensor:
    """Log expected count of each candidate when candidates come from two samplers.

    With ``B`` in-batch draws under ``p_batch`` and ``N`` sampled negatives under ``p_neg``, a candidate item
    ``j`` is expected ``B * p_batch(j) + N * p_neg(j)`` times; its log is the logQ correction that keeps the
    two sources on one scale (``batch_log_q`` and ``negative_log_q`` are both given for the same candidate
    columns, e.g. ``item_log_q(counts, 1)[cand_ids]`` and ``item_log_q(counts, alpha)[cand_ids]``).
    """
    if num_batch_draws <= 0 or num_negative_draws < 0:
        raise ValueError(
            f"need num_batch_draws > 0 and num_negative_draws >= 0; got {num_batch_draws}, {num_negative_draws}"
        )
    batch_term = batch_log_q + math.log(num_batch_draws)
    if num_negative_draws == 0:
        return batch_term
    return torch.logaddexp(batch_term, negative_log_q + math.log(num_negative_draws))
