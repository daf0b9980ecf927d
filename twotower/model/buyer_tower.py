"""Buyer tower: aggregates the item vectors of a buyer's history, weighted by event, into one vector.

Aggregations are a registry: a new method is one class decorated with `@register_aggregation("name")`
and one yaml under conf/model/buyer_tower/.

(Over ~300 lines: the aggregation registry holds three aggregations and the loader; the next aggregation
should go into its own module and register itself.)
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from twotower.data.batches import NUM_GAP_BUCKETS

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

    def forward_all(self, history: Tensor, weights: Tensor, mask: Tensor) -> Tensor:
        """[B, L, D]: output l is forward() of the history up to and including position l (causal).

        Lets training score every next-item target of a sequence in one pass. The generic path runs
        forward() once per prefix; subclasses override it with a single pass.
        """
        outputs = [
            self(history[:, : i + 1], weights[:, : i + 1], mask[:, : i + 1]) for i in range(history.shape[1])
        ]
        return torch.stack(outputs, dim=1)

    def forward_at(
        self, history: Tensor, weights: Tensor, mask: Tensor, rows: Tensor, cols: Tensor
    ) -> Tensor:
        """[T, D]: forward_all(...)[rows, cols], for subclasses that can skip positions nobody queries."""
        return self.forward_all(history, weights, mask)[rows, cols]


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

    def forward_all(self, history: Tensor, weights: Tensor, mask: Tensor) -> Tensor:
        weights = (weights * mask).to(history.dtype)  # [B, L]
        totals = torch.cumsum(weights, dim=1).clamp_min(1e-12)  # [B, L]
        return torch.cumsum(weights.unsqueeze(-1) * history, dim=1) / totals.unsqueeze(-1)  # [B, L, D]


_MEAN = WeightedAverage(0)  # parameter-free: shared by the transformer's mean residual


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

    def forward_all(self, history: Tensor, weights: Tensor, mask: Tensor) -> Tensor:
        length = history.shape[1]
        logits = self.score(history).squeeze(-1).float() + torch.log(
            weights.float().clamp_min(1e-6)
        )  # [B, L]
        causal = torch.ones(
            length, length, dtype=torch.bool, device=history.device
        ).tril()  # [L(query), L(key)]
        allowed = causal.unsqueeze(0) & mask.unsqueeze(1)  # [B, L, L]
        logits = logits.unsqueeze(1).masked_fill(~allowed, float("-inf"))
        attention = torch.softmax(logits, dim=-1).nan_to_num(0.0)  # [B, L, L]
        return attention.to(history.dtype) @ history  # [B, L, D]


class _Block(nn.Module):
    """Pre-norm transformer block: attention with an additive bias [B, H, L, L], then a feed-forward."""

    def __init__(self, width: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.heads, self.dropout = heads, dropout
        self.norm1, self.norm2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.qkv = nn.Linear(width, 3 * width)
        self.out = nn.Linear(width, width)
        self.ffn = nn.Sequential(
            nn.Linear(width, 2 * width), nn.GELU(), nn.Dropout(dropout), nn.Linear(2 * width, width)
        )

    def forward(self, x: Tensor, bias: Tensor, last_only: bool = False) -> Tensor:
        """x [B, L, W] -> [B, L, W]; with last_only, only the newest position's output [B, 1, W] (serving)."""
        batch, length, width = x.shape
        head = width // self.heads
        normed = self.norm1(x)
        if last_only:
            q = F.linear(normed[:, -1:], self.qkv.weight[:width], self.qkv.bias[:width])
            k, v = F.linear(normed, self.qkv.weight[width:], self.qkv.bias[width:]).chunk(2, dim=-1)
            x, bias = x[:, -1:], bias[:, :, -1:]
        else:
            q, k, v = self.qkv(normed).chunk(3, dim=-1)
        q, k, v = (
            t.reshape(batch, -1, self.heads, head).transpose(1, 2) for t in (q, k, v)
        )  # [B, H, *, W/H]
        attended = F.scaled_dot_product_attention(
            q, k, v, attn_mask=bias, dropout_p=self.dropout if self.training else 0.0
        )  # [B, H, L or 1, W/H]
        x = x + self.out(attended.transpose(1, 2).reshape(batch, -1, width))
        return x + self.ffn(self.norm2(x))


@register_aggregation("transformer")
class TransformerAggregation(Aggregation):
    """Causal self-attention over the history (SASRec-like, narrow inner width), output at the last position.

    Inputs per position: the item vector projected to `width`, plus an embedding of the event weight (the
    event type as serving passes it: view/cart/purchase weights). Recency enters as a learned per-head linear
    attention bias on the distance between positions (ALiBi), so the output at a position depends only on
    that position and earlier ones, and does not change with left padding: the prefix outputs of one pass
    over a sequence are exactly what forward() returns for each prefix (training uses that, serving forward).
    The output adds a residual, so an untrained tower starts at a known aggregation: `residual=mean` the
    event-weighted mean of the history up to that position (weighted_avg), `residual=last` the newest item.
    With `time_gaps`, each position also adds an embedding of the time since the previous event
    (:func:`twotower.data.batches.time_gap_buckets`: same invoice, an hour, a day, ...; 0 when unknown).
    """

    def __init__(
        self,
        embedding_dim: int,
        width: int = 64,
        heads: int = 2,
        layers: int = 2,
        dropout: float = 0.1,
        residual: str = "mean",
        time_gaps: bool = False,
    ) -> None:
        super().__init__()
        if width % heads:
            raise ValueError(f"model.buyer_tower.options.width={width} must be a multiple of heads={heads}")
        if residual not in ("mean", "last"):
            raise ValueError(f"model.buyer_tower.options.residual must be 'mean' or 'last', got {residual!r}")
        self.heads, self.residual = heads, residual
        self.input = nn.Linear(embedding_dim, width)
        self.event = nn.Linear(1, width)
        self.gap = nn.Embedding(NUM_GAP_BUCKETS, width) if time_gaps else None
        if self.gap is not None:
            nn.init.normal_(self.gap.weight, std=0.02)
        self.blocks = nn.ModuleList(_Block(width, heads, dropout) for _ in range(layers))
        self.norm = nn.LayerNorm(width)
        self.output = nn.Linear(width, embedding_dim)
        nn.init.normal_(self.output.weight, std=0.02)
        nn.init.zeros_(self.output.bias)
        # recency slopes from 1/2 to 1/64 per step back, learned
        slopes = (
            torch.logspace(math.log10(0.5), math.log10(1 / 64), heads) if heads > 1 else torch.tensor([0.1])
        )
        self.log_slope = nn.Parameter(slopes.log())
        self._geometry: dict[tuple[int, torch.device], tuple[Tensor, Tensor, Tensor]] = {}

    def _bias(self, mask: Tensor) -> Tensor:
        """[B, H, L, L] additive attention bias: -slope * distance for earlier real keys, -inf elsewhere."""
        length = mask.shape[1]
        key = (length, mask.device)
        if key not in self._geometry:  # distances and the causal pattern depend only on the length
            position = torch.arange(length, device=mask.device)
            distance = (position[:, None] - position[None, :]).float()  # [L, L] query - key
            self._geometry = {
                key: (distance, distance >= 0, torch.eye(length, dtype=torch.bool, device=mask.device))
            }
        distance, causal, diagonal = self._geometry[key]
        bias = -self.log_slope.exp()[:, None, None] * distance  # [H, L, L]
        allowed = (causal & mask[:, None, :]) | diagonal  # [B, L, L]; the diagonal keeps padding rows finite
        return bias.unsqueeze(0).masked_fill(~allowed.unsqueeze(1), float("-inf"))

    @property
    def uses_gaps(self) -> bool:
        return self.gap is not None

    def _run(
        self, history: Tensor, weights: Tensor, mask: Tensor, last_only: bool, gaps: Tensor | None = None
    ) -> Tensor:
        """Hidden states [B, L, W] (with last_only: [B, 1, W], the newest position only)."""
        event = torch.log1p(weights.clamp_min(0).to(history.dtype)).unsqueeze(-1)  # [B, L, 1]
        x = self.input(history) + self.event(event)  # [B, L, W]
        if self.gap is not None:  # no gaps given (times unknown): bucket 0 everywhere
            x = x + self.gap(gaps if gaps is not None else torch.zeros_like(mask, dtype=torch.long))
        bias = self._bias(mask).to(x.dtype)
        for i, block in enumerate(self.blocks):
            x = block(x, bias, last_only=last_only and i == len(self.blocks) - 1)
        return x[:, -1:] if last_only and not len(self.blocks) else x

    def _output(self, hidden: Tensor, item: Tensor) -> Tensor:
        return self.output(self.norm(hidden)) + item  # residual: the item vector at that position

    def _residuals(self, history: Tensor, weights: Tensor, mask: Tensor) -> Tensor:
        """[B, L, D] residual at each position (causal)."""
        return _MEAN.forward_all(history, weights, mask) if self.residual == "mean" else history

    def forward_all(
        self, history: Tensor, weights: Tensor, mask: Tensor, gaps: Tensor | None = None
    ) -> Tensor:
        hidden = self._run(history, weights, mask, last_only=False, gaps=gaps)
        return self._output(hidden, self._residuals(history, weights, mask))

    def forward_at(
        self,
        history: Tensor,
        weights: Tensor,
        mask: Tensor,
        rows: Tensor,
        cols: Tensor,
        gaps: Tensor | None = None,
    ) -> Tensor:
        hidden = self._run(history, weights, mask, last_only=False, gaps=gaps)  # [B, L, W]
        residual = self._residuals(history, weights, mask)[rows, cols]
        return self._output(hidden[rows, cols], residual)  # project only the queried positions

    def forward(self, history: Tensor, weights: Tensor, mask: Tensor, gaps: Tensor | None = None) -> Tensor:
        if history.shape[1] == 0:
            return history.new_zeros(history.shape[0], history.shape[2])
        residual = _MEAN(history, weights, mask) if self.residual == "mean" else history[:, -1]
        # right-aligned histories: the newest event is last; the last block computes only that query
        last = self._output(self._run(history, weights, mask, last_only=True, gaps=gaps)[:, 0], residual)
        return last * mask.any(dim=1, keepdim=True).to(last.dtype)  # an empty history -> zero vector


@dataclass
class BuyerTowerConfig:
    """The `model.buyer_tower` config node (`_target_`): a typo in a key fails at start-up, naming the key.

    options are the aggregation's own arguments (e.g. transformer: width, heads, layers, dropout).
    time_gaps: feed the time since the previous event to aggregations that read it (the transformer); the
    others ignore it, so switching `aggregation_method` on the command line keeps working. A checkpoint
    from before this key loads with False, as it was trained.
    """

    aggregation_method: str = "weighted_avg"
    options: dict[str, Any] = field(default_factory=dict)
    time_gaps: bool = False

    def __post_init__(self) -> None:
        self.options = dict(self.options or {})

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class BuyerTower(nn.Module):
    """History item vectors [B, L, D] + event weights [B, L] + mask [B, L] -> L2-normalized buyer vector [B, D]."""

    def __init__(
        self,
        aggregation_method: str = "weighted_avg",
        embedding_dim: int = 384,
        options: dict | None = None,
        time_gaps: bool = False,
    ):
        super().__init__()
        if aggregation_method not in AGGREGATIONS:
            raise ValueError(
                f"model.buyer_tower.aggregation_method={aggregation_method!r} is unknown; "
                f"registered methods: {sorted(AGGREGATIONS)}"
            )
        self.aggregation_method = aggregation_method
        options = dict(options or {})
        if "time_gaps" in options:
            raise ValueError(
                "model.buyer_tower.options.time_gaps: set model.buyer_tower.time_gaps=true|false instead"
            )
        kind = AGGREGATIONS[aggregation_method]
        if time_gaps and "time_gaps" in inspect.signature(kind).parameters:
            options["time_gaps"] = True  # others have no use for event times
        try:
            self.aggregate = kind(embedding_dim, **options)
        except TypeError as error:
            raise ValueError(
                f"model.buyer_tower.options {options} do not fit {aggregation_method!r}: {error}"
            ) from error

    @property
    def uses_gaps(self) -> bool:
        """Whether the aggregation reads time-gap buckets (callers need not compute them otherwise)."""
        return getattr(self.aggregate, "uses_gaps", False)

    def _gaps(self, gaps: Tensor | None) -> dict[str, Tensor | None]:
        """The time-gap argument for aggregations that read it; others never see it."""
        return {"gaps": gaps} if self.uses_gaps else {}

    def forward(self, history: Tensor, weights: Tensor, mask: Tensor, gaps: Tensor | None = None) -> Tensor:
        """History vectors [B, L, D] -> [B, D]. ``gaps``: time_gap_buckets [B, L] (None: unknown)."""
        return F.normalize(self.aggregate(history, weights, mask.bool(), **self._gaps(gaps)), dim=-1)

    def pool(
        self, vectors: Tensor, index: Tensor, weights: Tensor, mask: Tensor, gaps: Tensor | None = None
    ) -> Tensor:
        """Same result as forward(vectors[index], ...) for unique item vectors [U, D] and indices [B, L] into them."""
        if self.uses_gaps:
            return self(vectors[index], weights, mask, gaps)
        return F.normalize(self.aggregate.pool(vectors, index, weights, mask.bool()), dim=-1)

    def forward_all(
        self, history: Tensor, weights: Tensor, mask: Tensor, gaps: Tensor | None = None
    ) -> Tensor:
        """[B, L, D]: position l holds forward() of the history up to l (every next-item query of a sequence)."""
        return F.normalize(
            self.aggregate.forward_all(history, weights, mask.bool(), **self._gaps(gaps)), dim=-1
        )

    def forward_at(
        self,
        history: Tensor,
        weights: Tensor,
        mask: Tensor,
        rows: Tensor,
        cols: Tensor,
        gaps: Tensor | None = None,
    ) -> Tensor:
        """[T, D]: forward_all(...)[rows, cols] (training queries), skipping work for unqueried positions."""
        out = self.aggregate.forward_at(history, weights, mask.bool(), rows, cols, **self._gaps(gaps))
        return F.normalize(out, dim=-1)


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
