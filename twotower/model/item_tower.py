"""Item tower: a hybrid of a text path (text ++ brand ++ category -> MLP, plus a linear residual of the text)
and a learned item-ID embedding for items seen in training, summed and L2-normalized.

Items outside the ID vocabulary (cold items, new catalogs) use the reserved ID index 0, whose embedding is
fixed at zero: they get the text path alone. ID dropout maps seen items to index 0 during training, so that
text-only path stays a good embedding of its own.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

RESERVED_ID = 0  # unseen items, ID dropout and the text-only path


@dataclass
class ItemTowerConfig:
    """The `model.item_tower` config node (`_target_`): a typo in a key fails at start-up, naming the key.

    id_embedding: width of the learned item-ID embedding (0 = no ID embedding: a text-only tower).
    id_dropout: probability, per item and training step, of replacing a seen item's ID by the reserved one.
    use_text: false = an ID-only tower (ablation): the text features are not used.
    text_residual: add a linear map of the text vector to the MLP output, keeping text neighbourhoods.
    """

    brand_dim: int = 64
    category_dim: int = 64
    hidden_dim: int = 256
    output_dim: int = 384
    dropout: float = 0.1
    id_embedding: int = 64
    id_dropout: float = 0.5
    use_text: bool = True
    text_residual: bool = True

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class ItemTower(nn.Module):
    """(text, brand, category, item id) -> L2-normalized vector [n, output_dim].

    vector = normalize(MLP(text ++ brand ++ category) + R text + P id_embedding[id]); index 0 of the brand,
    category and ID vocabularies is <UNK>/reserved.
    """

    def __init__(
        self,
        text_dim: int,
        num_brands: int,
        num_categories: int,
        num_ids: int = 0,
        brand_dim: int = 64,
        category_dim: int = 64,
        hidden_dim: int = 256,
        output_dim: int = 384,
        dropout: float = 0.1,
        id_embedding: int = 0,
        id_dropout: float = 0.0,
        use_text: bool = True,
        text_residual: bool = False,
    ) -> None:
        super().__init__()
        if (
            min(text_dim, num_brands, num_categories, hidden_dim, output_dim) < 1
            or min(brand_dim, category_dim, id_embedding, num_ids) < 0
        ):
            raise ValueError("item tower dimensions and vocabulary sizes must be positive")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"model.item_tower.dropout must be in [0, 1), got {dropout}")
        if not 0.0 <= id_dropout <= 1.0:
            raise ValueError(f"model.item_tower.id_dropout must be in [0, 1], got {id_dropout}")
        if not use_text and (id_embedding == 0 or num_ids <= 1):
            raise ValueError(
                "model.item_tower.use_text=false (ID-only) needs model.item_tower.id_embedding > 0 "
                "and items seen in training"
            )
        self.output_dim, self.use_text, self.id_dropout = output_dim, use_text, id_dropout
        self.brand_embedding = nn.Embedding(num_brands, brand_dim)
        self.category_embedding = nn.Embedding(num_categories, category_dim)
        mlp_in = (text_dim if use_text else 0) + brand_dim + category_dim
        self.mlp = nn.Sequential(
            nn.Linear(max(mlp_in, 1), hidden_dim),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(hidden_dim, output_dim),
        )
        self.text_residual: nn.Linear | None = None
        if use_text and text_residual:
            # Semi-orthogonal start: cosines of the text vectors are (nearly) kept, so the tower begins at the
            # text neighbourhoods; the MLP starts small and learns the correction on top.
            self.text_residual = nn.Linear(text_dim, output_dim, bias=False)
            nn.init.orthogonal_(self.text_residual.weight)
            with torch.no_grad():
                self.mlp[-1].weight.mul_(0.1)
                self.mlp[-1].bias.zero_()
        self.id_embedding: nn.Embedding | None = None
        if id_embedding > 0 and num_ids > 1:
            self.id_embedding = nn.Embedding(num_ids, id_embedding, padding_idx=RESERVED_ID)
            nn.init.normal_(self.id_embedding.weight, std=0.01)
            with torch.no_grad():
                self.id_embedding.weight[RESERVED_ID].zero_()
            self.id_projection = nn.Linear(id_embedding, output_dim, bias=False)

    @property
    def dtype(self) -> torch.dtype:
        return self.mlp[0].weight.dtype

    def forward(
        self, text_features: Tensor, brand: Tensor, category: Tensor, ids: Tensor | None = None
    ) -> Tensor:
        parts = [self.brand_embedding(brand), self.category_embedding(category)]
        if self.use_text:
            parts.insert(0, text_features)
        features = torch.cat(parts, dim=-1)  # [n, mlp_in]
        if features.shape[-1] == 0:
            features = features.new_zeros(features.shape[0], 1)
        out = self.mlp(features)  # [n, output_dim]
        if self.text_residual is not None:
            out = out + self.text_residual(text_features)
        if self.id_embedding is not None and ids is not None:
            if self.training and self.id_dropout > 0:
                dropped = torch.rand(ids.shape, device=ids.device) < self.id_dropout
                ids = ids.masked_fill(dropped, RESERVED_ID)
            out = out + self.id_projection(self.id_embedding(ids))
        return F.normalize(out, dim=-1)

    def text_path(self, text_features: Tensor) -> Tensor:
        """The text-only embedding: reserved ID, <UNK> brand and category (cold items, retention queries)."""
        unknown = torch.zeros(text_features.shape[0], dtype=torch.long, device=text_features.device)
        return self(text_features.to(self.dtype), unknown, unknown, unknown)
