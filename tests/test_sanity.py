"""The seeds' sanity checks as tests: similar Arabic products embed close, and a buyer who keeps interacting
with one category gets that category back (text-only path fast; the trained model on a tiny bundle, slow)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from tests.test_evaluate import tiny_bundle  # noqa: F401  (session fixture: one tiny trained bundle)
from twotower.data.batches import HistoryBatch
from twotower.data.catalog import load_catalog
from twotower.data.sample import ensure_sample
from twotower.evaluation.rankers import ModelRanker, TextOnlyRanker
from twotower.model.buyer_tower import load_buyer_tower
from twotower.retrieval.bundle import load_bundle
from twotower.text.encoders import UniversalSentenceEncoder

GOLD_RING, GOLD_NECKLACE = "خاتم ذهب", "سلسال ذهب"
DISSIMILAR = ["شاحن سريع", "كريم مرطب للبشرة الجافة", "جوال ذكي", "عطر بالمسك الأبيض", "طقم أواني من الخشب"]


@pytest.fixture(scope="module")
def encoder() -> UniversalSentenceEncoder:
    return UniversalSentenceEncoder()


def test_similar_arabic_items_embed_close(encoder: UniversalSentenceEncoder) -> None:
    vectors = encoder.encode([GOLD_RING, GOLD_NECKLACE, *DISSIMILAR])
    cosine = vectors @ vectors[0]  # rows are L2-normalized
    similar, others = cosine[1], cosine[2:]
    # gold ring vs gold necklace clearly above gold ring vs a charger, a cream, a phone, a perfume, cookware
    assert similar > others.max() + 0.2, dict(
        zip([GOLD_NECKLACE, *DISSIMILAR], cosine[1:].round(3), strict=True)
    )


def _category_history(categories: list[str], category: str, length: int = 8) -> HistoryBatch:
    """One buyer: views, carts and purchases of `length` products of one category (weights 1, 5, 10)."""
    items = np.flatnonzero(np.array(categories) == category)[:length]
    assert len(items) == length, f"the sample has fewer than {length} {category} products"
    weights = np.resize(np.array([1.0, 5.0, 10.0], dtype=np.float32), length)
    return HistoryBatch.from_arrays(items[None, :], weights[None, :], np.ones((1, length), dtype=bool))


@pytest.mark.parametrize("category", ["jewellery", "electronics"])
def test_text_only_buyer_in_one_category_gets_that_category(
    tmp_path_factory: pytest.TempPathFactory, encoder: UniversalSentenceEncoder, category: str
) -> None:
    directory = tmp_path_factory.getbasetemp() / "sanity_sample"
    paths = ensure_sample(directory, products=150, buyers=20, seed=0)
    catalog = load_catalog(paths["products"], paths["photos"])
    recommender = TextOnlyRanker(encoder.encode(catalog.texts)).fit()
    top = recommender.recommend(_category_history(catalog.categories, category), k=10)[0]
    share = np.mean([catalog.categories[i] == category for i in top])
    assert share >= 0.8, [catalog.titles[i] for i in top]


@pytest.mark.slow
@pytest.mark.parametrize("category", ["jewellery", "electronics"])
def test_model_buyer_in_one_category_gets_that_category(tiny_bundle: Path, category: str) -> None:  # noqa: F811
    bundle = load_bundle(tiny_bundle, load_index=False)
    model = ModelRanker(load_buyer_tower(bundle.checkpoint_path), bundle.embeddings)
    top = model.recommend(_category_history(bundle.catalog.categories, category), k=10)[0]
    share = np.mean([bundle.catalog.categories[i] == category for i in top])
    assert share >= 0.7, [bundle.catalog.titles[i] for i in top]


@pytest.mark.slow
def test_model_item_embeddings_keep_categories_together(tiny_bundle: Path) -> None:  # noqa: F811
    bundle = load_bundle(tiny_bundle, load_index=False)
    vectors = torch.from_numpy(bundle.embeddings)
    categories = np.array(bundle.catalog.categories)
    jewellery, electronics = (
        torch.from_numpy(np.flatnonzero(categories == c)) for c in ("jewellery", "electronics")
    )
    within = (vectors[jewellery] @ vectors[jewellery].T).mean()
    across = (vectors[jewellery] @ vectors[electronics].T).mean()
    assert within > across + 0.1, (float(within), float(across))
