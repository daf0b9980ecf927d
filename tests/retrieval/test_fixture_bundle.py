"""Bundles and indexes written before the issue-10 refactor still load and answer (tests/fixtures/README.md)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from twotower.model.buyer_tower import load_buyer_tower
from twotower.retrieval.bundle import load_bundle
from twotower.retrieval.index import VectorIndex

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
BUNDLE = FIXTURES / "bundle_v1"


def test_v1_bundle_loads_and_searches():
    bundle = load_bundle(BUNDLE)
    assert len(bundle.product_ids) == 48 and bundle.embeddings.shape == (48, 8)
    assert bundle.index.kind == "flat" and bundle.index.ntotal == 48
    scores, ids = bundle.index.search(bundle.embeddings[:5], 3)
    assert ids[:, 0].tolist() == [0, 1, 2, 3, 4]
    np.testing.assert_allclose(scores[:, 0], 1.0, atol=1e-5)


def test_v1_bundle_buyer_tower_encodes_a_history():
    tower = load_buyer_tower(BUNDLE / "model.ckpt")
    vectors = torch.from_numpy(np.load(BUNDLE / "embeddings.npy"))
    buyer = tower.pool(vectors, torch.tensor([[0, 3, 5]]), torch.ones(1, 3), torch.ones(1, 3))
    assert buyer.shape == (1, 8) and torch.isfinite(buyer).all()


@pytest.mark.parametrize("name", ["index_v1_torch_exact", "index_v1_hnsw"])
def test_v1_index_directories_load_and_agree_with_exact(name):
    embeddings = np.load(BUNDLE / "embeddings.npy")
    index = VectorIndex.load(FIXTURES / name)
    exact = VectorIndex.load(BUNDLE)
    _, ids = index.search(embeddings, 5)
    _, want = exact.search(embeddings, 5)
    assert (ids[:, 0] == want[:, 0]).all()
    assert index.measure_recall(embeddings, exact=exact, k=5) >= 0.9


@pytest.mark.slow
def test_v1_checkpoint_loads_as_a_module_and_reproduces_the_stored_embeddings():
    from hydra.utils import instantiate

    from twotower.model.module import load_module

    bundle = load_bundle(BUNDLE)
    encoder = instantiate(bundle.manifest["config"]["model"]["text_encoder"])
    module = load_module(bundle.checkpoint_path, text_encoder=encoder)
    module.hparams.feature_cache_dir = None  # the recorded cache dir belonged to the machine that trained it
    module.attach_catalog(bundle.catalog)
    vectors = module.embed_catalog().numpy()
    np.testing.assert_allclose(vectors, bundle.embeddings, atol=1e-4)
