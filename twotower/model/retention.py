"""Text retention: how much of the text encoder's product-matching ability the trained item tower keeps.

Fixed noisy spellings of catalog titles (seed 0) are embedded through the item tower's text path only and
searched against the catalog's item vectors; recall@k of the source product is divided by the same recall
with raw encoder vectors on both sides. 1.0 = the tower matches text as well as the encoder it starts from.
Pure PyTorch/NumPy (no Lightning): the module logs it, and the export can record it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

NoiseFn = Callable[[str, np.random.Generator], str]


def default_noise() -> NoiseFn:
    """The sample generator's spelling noise (Arabic variants; case and typo noise for Latin script)."""
    try:
        from twotower.data.sample.noise import noisy_spelling  # lazy: lives in the data package
    except ImportError as error:
        raise ImportError(
            "text retention needs twotower.data.sample.noise.noisy_spelling (the sample's spelling noise); "
            "pass noise=... explicitly where it is not available"
        ) from error
    return noisy_spelling


def retention_queries(
    titles: list[str], noise: NoiseFn | None = None, num_queries: int = 1000, seed: int = 0
) -> tuple[list[str], np.ndarray]:
    """(noisy query texts, source item index int64 [n]): fixed for a given catalog, noise and seed."""
    if not titles:
        raise ValueError("text retention needs a non-empty catalog")
    noise = noise or default_noise()
    rng = np.random.default_rng(seed)
    n = min(num_queries, len(titles))
    sources = rng.choice(len(titles), size=n, replace=False).astype(np.int64)
    return [noise(titles[i], rng) for i in sources], sources


def _recall(queries: Tensor, catalog: Tensor, sources: Tensor, k: int, chunk: int = 1024) -> float:
    queries, catalog = F.normalize(queries.float(), dim=-1), F.normalize(catalog.float(), dim=-1)
    hits = 0
    for start in range(0, len(queries), chunk):
        top = (queries[start : start + chunk] @ catalog.T).topk(min(k, len(catalog)), dim=1).indices
        hits += int((top == sources[start : start + chunk, None]).any(dim=1).sum())
    return hits / max(1, len(queries))


@dataclass
class Retention:
    ratio: float  # tower recall / raw recall (1.0 when the raw recall is 0)
    tower_recall: float
    raw_recall: float
    num_queries: int


@torch.no_grad()
def text_retention(
    raw_queries: Tensor,
    sources: Tensor,
    raw_catalog: Tensor,
    item_vectors: Tensor,
    text_path: Callable[[Tensor], Tensor],
    k: int = 10,
) -> Retention:
    """Retention of encoded noisy queries `raw_queries` [n, text_dim] whose source items are `sources` [n].

    raw_catalog: the catalog's raw encoder vectors [N, text_dim]; item_vectors: the tower's [N, D];
    text_path: the tower's text-only embedding (reserved ID, no brand/category).
    """
    sources = sources.to(raw_queries.device).long()
    raw = _recall(raw_queries, raw_catalog, sources, k)
    tower = _recall(text_path(raw_queries), item_vectors.to(raw_queries.device), sources, k)
    return Retention(tower / raw if raw > 0 else 1.0, tower, raw, len(sources))
