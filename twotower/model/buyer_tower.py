"""Buyer tower: aggregates the item vectors of a buyer's history, weighted by event, into one vector.

Aggregations are a registry: a new method is one class decorated with `@register_aggregation("name")`
and one yaml under conf/model/buyer_tower/.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

AGGREGATIONS: dict[str, type[Aggregation]] = {}


def register_aggregation(name: str) -> Callable[[type[Aggregation]], type[Aggregation]]:
    def register(cls: type[Aggregation]) -> type[Aggregation]:
        AGGREGATIONS[name] = cls
        return cls

    return register


def _pooled(vectors: Tensor, index: Tensor, coefficients: Tensor) -> Tensor:
    """sum_l coefficients[b, l] * vectors[index[b, l]] without materializing [B, L, D].

    Scatters the coefficients into a [B, U] matrix (repeated items add up), then one matmul with [U, D]:
    far cheaper forward and backward than gathering every history position.
    """
    pooling = torch.zeros(
        index.shape[0], vectors.shape[0], dtype=vectors.dtype, device=vectors.device
    )  # [B, U]
    pooling.scatter_add_(1, index, coefficients.to(vectors.dtype))
    return pooling @ vectors  # [B, D]


class Aggregation(nn.Module):
    """An aggregation maps history vectors [B, L, D] (+ weights, mask) to [B, D].

    `pool` is the same computation given unique item vectors [U, D] and per-position indices [B, L];
    subclasses override it with a path that avoids the [B, L, D] gather (used in training).
    """

    def pool(self, vectors: Tensor, index: Tensor, weights: Tensor, mask: Tensor) -> Tensor:
        return self(vectors[index], weights, mask)


@register_aggregation("weighted_avg")
class WeightedAverage(Aggregation):
    """sum_i w_i e_i / sum_i w_i over the unmasked history."""

    def __init__(self, embedding_dim: int) -> None:
        super().__init__()

    @staticmethod
    def coefficients(weights: Tensor, mask: Tensor) -> Tensor:
        weights = weights * mask  # [B, L]; padding contributes nothing
        return weights / weights.sum(dim=1, keepdim=True).clamp_min(1e-12)  # [B, L]

    def forward(self, history: Tensor, weights: Tensor, mask: Tensor) -> Tensor:
        return torch.einsum(
            "bl,bld->bd", self.coefficients(weights, mask).to(history.dtype), history
        )  # [B, D]

    def pool(self, vectors: Tensor, index: Tensor, weights: Tensor, mask: Tensor) -> Tensor:
        return _pooled(vectors, index, self.coefficients(weights, mask))


@register_aggregation("attention")
class AttentionAggregation(Aggregation):
    """Learned relevance scores (MLP D -> hidden -> 1) plus log event weights, softmax over the unmasked history."""

    def __init__(self, embedding_dim: int, hidden_dim: int = 128) -> None:
        super().__init__()
        self.score = nn.Sequential(nn.Linear(embedding_dim, hidden_dim), nn.Tanh(), nn.Linear(hidden_dim, 1))

    @staticmethod
    def attention(scores: Tensor, weights: Tensor, mask: Tensor) -> Tensor:
        logits = scores.float() + torch.log(weights.float().clamp_min(1e-6))  # [B, L]
        logits = logits.masked_fill(~mask, float("-inf"))
        return torch.softmax(logits, dim=1).nan_to_num(0.0)  # [B, L]; an all-padding row -> zeros

    def forward(self, history: Tensor, weights: Tensor, mask: Tensor) -> Tensor:
        attention = self.attention(self.score(history).squeeze(-1), weights, mask)  # [B, L]
        return torch.einsum("bl,bld->bd", attention.to(history.dtype), history)  # [B, D]

    def pool(self, vectors: Tensor, index: Tensor, weights: Tensor, mask: Tensor) -> Tensor:
        scores = self.score(vectors).squeeze(-1)[index]  # score each unique item once: [U] -> [B, L]
        return _pooled(vectors, index, self.attention(scores, weights, mask))


class BuyerTower(nn.Module):
    """History item vectors [B, L, D] + event weights [B, L] + mask [B, L] -> L2-normalized buyer vector [B, D]."""

    def __init__(
        self, aggregation_method: str = "weighted_avg", embedding_dim: int = 384, options: dict | None = None
    ):
        super().__init__()
        if aggregation_method not in AGGREGATIONS:
            raise ValueError(
                f"model.buyer_tower.aggregation_method={aggregation_method!r} is unknown; "
                f"registered methods: {sorted(AGGREGATIONS)}"
            )
        self.aggregation_method = aggregation_method
        try:
            self.aggregate = AGGREGATIONS[aggregation_method](embedding_dim, **dict(options or {}))
        except TypeError as error:
            raise ValueError(
                f"model.buyer_tower.options {dict(options or {})} do not fit {aggregation_method!r}: {error}"
            ) from error

    def forward(self, history: Tensor, weights: Tensor, mask: Tensor) -> Tensor:
        """History vectors [B, L, D] -> [B, D]."""
        return F.normalize(self.aggregate(history, weights, mask.bool()), dim=-1)

    def pool(self, vectors: Tensor, index: Tensor, weights: Tensor, mask: Tensor) -> Tensor:
        """Same result as forward(vectors[index], ...) for unique item vectors [U, D] and indices [B, L] into them."""
        return F.normalize(self.aggregate.pool(vectors, index, weights, mask.bool()), dim=-1)


def load_buyer_tower(ckpt_path: str | Path, map_location: str = "cpu") -> BuyerTower:
    """The buyer tower of a training checkpoint, in eval mode: all serving needs beside the stored item vectors.

    Reads the checkpoint with torch alone (no code from the file runs), so workers start without Lightning.
    """
    from twotower.model.checkpoint import read_checkpoint

    checkpoint = read_checkpoint(ckpt_path, map_location=map_location)
    hparams = checkpoint["hyper_parameters"]
    embedding_dim = dict(hparams.get("item_tower") or {}).get("output_dim", 384)
    tower = BuyerTower(embedding_dim=embedding_dim, **dict(hparams.get("buyer_tower") or {}))
    prefix = "buyer_tower."
    tower.load_state_dict(
        {k[len(prefix) :]: v for k, v in checkpoint["state_dict"].items() if k.startswith(prefix)}
    )
    return tower.eval()
