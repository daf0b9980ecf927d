"""Item tower: text features ++ brand embedding ++ category embedding -> MLP -> L2-normalized vector."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class ItemTower(nn.Module):
    """text [n, text_dim] ++ brand emb ++ category emb -> Linear -> ReLU -> Dropout -> Linear(output_dim) -> L2.

    Index 0 of the brand and category vocabularies is <UNK> (missing or unseen values).
    """

    def __init__(
        self,
        text_dim: int,
        num_brands: int,
        num_categories: int,
        brand_dim: int = 64,
        category_dim: int = 64,
        hidden_dim: int = 256,
        output_dim: int = 384,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        if (
            min(text_dim, num_brands, num_categories, hidden_dim, output_dim) < 1
            or brand_dim < 0
            or category_dim < 0
        ):
            raise ValueError("item tower dimensions and vocabulary sizes must be positive")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"model.item_tower.dropout must be in [0, 1), got {dropout}")
        self.output_dim = output_dim
        self.brand_embedding = nn.Embedding(num_brands, brand_dim)
        self.category_embedding = nn.Embedding(num_categories, category_dim)
        self.mlp = nn.Sequential(
            nn.Linear(text_dim + brand_dim + category_dim, hidden_dim),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(hidden_dim, output_dim),
        )

    def forward(self, text_features: Tensor, brand: Tensor, category: Tensor) -> Tensor:
        features = torch.cat(
            [text_features, self.brand_embedding(brand), self.category_embedding(category)], dim=-1
        )  # [n, text_dim + brand_dim + category_dim]
        return F.normalize(self.mlp(features), dim=-1)
