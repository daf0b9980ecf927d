"""export_bundle, the one bundle writer: explicit inputs, one manifest shape, index=auto, Bundle accessors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.utils import instantiate

from tests.conftest import compose_config
from tests.retrieval.test_bundle import make_catalog
from twotower.data.batches import HistoryBatch
from twotower.data.schema import DEFAULT_EVENT_WEIGHTS
from twotower.model.module import TwoTowerModule
from twotower.retrieval.bundle import load_bundle
from twotower.retrieval.export import (
    ExportSettings,
    check_manifest_config,
    export_bundle,
    held_out_buyer_vectors,
    model_config_from_hparams,
)
from twotower.retrieval.index import IndexBuilder

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "bundle_v1"
RUN_CONFIG = {
    "data": {"_target_": "twotower.data.datamodule.TwoTowerDataModule", "max_history": 7},
    "model": {"_target_": "twotower.model.module.TwoTowerModule", "text_encoder": {"_target_": "enc.Enc"}},
}


class HashEncoder:
    """A frozen text encoder stand-in: deterministic vectors from the text's characters."""

    id, dim, trainable = "hash-test", 8, False

    def encode(self, texts: list[str], batch_size: int = 256, show_progress: bool = False) -> np.ndarray:
        rng = [np.random.default_rng(sum(map(ord, text))) for text in texts]
        return np.stack([r.standard_normal(self.dim) for r in rng]).astype(np.float32)


def tiny_module(n: int) -> TwoTowerModule:
    catalog = make_catalog(n)
    torch.manual_seed(0)
    module = TwoTowerModule(
        text_dim=HashEncoder.dim,
        brand_vocab=catalog.brand_vocab.tokens,
        category_vocab=catalog.category_vocab.tokens,
        text_encoder=HashEncoder(),
        item_tower={"brand_dim": 2, "category_dim": 2, "hidden_dim": 8, "output_dim": 8},
        feature_cache_dir=None,
    )
    module.attach_catalog(catalog)
    return module


def test_manifest_config_must_name_data_and_the_text_encoder():
    check_manifest_config(RUN_CONFIG)
    with pytest.raises(ValueError, match=r"config\.data .* and config\.model\.text_encoder"):
        check_manifest_config({"model": {"text_dim": 3}})
    with pytest.raises(ValueError, match=r"config\.model\.text_encoder"):
        check_manifest_config({**RUN_CONFIG, "model": {"text_encoder_config": {"_target_": "x"}}})


def test_model_config_from_checkpoint_hparams_has_the_training_shape():
    hparams = torch.load(FIXTURE / "model.ckpt", weights_only=True)["hyper_parameters"]
    model = model_config_from_hparams(hparams)
    trained = json.loads((FIXTURE / "manifest.json").read_text())["config"]["model"]
    assert model["text_encoder"] == trained["text_encoder"]
    assert model["_target_"] == trained["_target_"]
    # the tower nodes come back as the config tree builds them (with their _target_), same values
    assert model["item_tower"].pop("_target_") == "twotower.model.item_tower.ItemTowerConfig"
    assert model["item_tower"] == trained["item_tower"]
    assert not {"brand_vocab", "category_vocab", "item_vocab", "text_dim", "text_encoder_config"} & set(model)
    with pytest.raises(ValueError, match="text_encoder_config"):
        model_config_from_hparams({"text_dim": 3})


def test_export_bundle_writes_a_loadable_bundle_from_explicit_inputs(tmp_path):
    module = tiny_module(30)
    checkpoint = tmp_path / "model.ckpt"
    checkpoint.write_bytes(b"checkpoint bytes")
    settings = ExportSettings(str(tmp_path / "b"), latest_link=str(tmp_path / "latest"))
    written = export_bundle(
        module,
        make_catalog(30),
        checkpoint,
        index=IndexBuilder("flat"),
        settings=settings,
        run_config=RUN_CONFIG,
        metrics={"val/recall@10": 0.5, "train/loss": 1.0},
        counts={"buyers": 4},
    )
    bundle = load_bundle(written)
    np.testing.assert_allclose(bundle.embeddings, module.embed_catalog().numpy(), atol=1e-6)
    assert bundle.manifest["metrics"] == {"val/recall@10": 0.5}  # train/ metrics are left out
    assert bundle.manifest["counts"] == {"buyers": 4} and bundle.text_encoder_id == "hash-test"
    assert (tmp_path / "latest").resolve() == written.resolve()
    assert bundle.data_config["max_history"] == 7
    assert bundle.text_encoder_config == {"_target_": "enc.Enc"}


def test_export_bundle_refuses_a_catalog_other_than_the_attached_one(tmp_path):
    with pytest.raises(ValueError, match="30 products attached but the catalog has 31"):
        export_bundle(
            tiny_module(30),
            make_catalog(31),
            tmp_path / "x.ckpt",
            index=IndexBuilder("flat"),
            settings=ExportSettings(str(tmp_path / "b")),
            run_config=RUN_CONFIG,
        )


def test_the_default_index_is_auto_and_a_large_catalog_gets_hnsw_without_being_told(tmp_path):
    for config_name in ("train", "export"):
        cfg = compose_config(tmp_path, [], config_name=config_name)
        assert cfg.index.kind == "auto" and cfg.index.auto_threshold == 10_000
    cfg = compose_config(tmp_path, ["index.auto_threshold=40"], config_name="export")
    written = export_bundle(
        tiny_module(60),
        make_catalog(60),
        FIXTURE / "model.ckpt",
        index=instantiate(cfg.index),
        settings=ExportSettings(str(tmp_path / "b")),
        run_config=RUN_CONFIG,
    )
    meta = json.loads((written / "index.json").read_text())
    assert (meta["kind"], meta["chosen_by"], meta["auto_threshold"]) == ("hnsw", "auto", 40)
    assert load_bundle(written).index.kind == "hnsw"


def test_bundle_accessors_read_a_bundle_written_before_this_change():
    bundle = load_bundle(FIXTURE, load_index=False)
    assert bundle.data_config["_target_"] == "twotower.data.datamodule.TwoTowerDataModule"
    assert bundle.model_config["item_tower"]["output_dim"] == 8
    assert bundle.text_encoder_config["_target_"].endswith("UniversalSentenceEncoder")
    assert bundle.event_schema.weights == DEFAULT_EVENT_WEIGHTS
    assert bundle.text_encoder_id == bundle.manifest["text_encoder_id"]


def test_bundle_accessors_on_old_export_manifests_and_manifests_without_config():
    bundle = load_bundle(FIXTURE, load_index=False)
    # `python -m twotower.export` used to record the checkpoint's hyperparameters as config.model
    bundle.manifest = {"config": {"model": {"text_encoder_config": {"_target_": "a.B"}}}}
    assert bundle.text_encoder_config == {"_target_": "a.B"} and bundle.data_config == {}
    bundle.manifest = {}
    assert bundle.config == {} and bundle.model_config == {} and bundle.text_encoder_config is None
    assert bundle.event_schema.weights == DEFAULT_EVENT_WEIGHTS


class PerItemHistories(torch.utils.data.Dataset):
    """A dataset without batch gathering (no __getitems__): one one-example HistoryBatch per index."""

    def __len__(self) -> int:
        return 6

    def __getitem__(self, i: int) -> HistoryBatch:
        return HistoryBatch.from_arrays([i, (i + 1) % 30], np.ones(2), np.ones(2, dtype=bool), target=i)


def test_held_out_buyer_vectors_take_evenly_spread_examples_of_any_dataset():
    module = tiny_module(30)
    items = module.embed_catalog()
    vectors = held_out_buyer_vectors(module, PerItemHistories(), items, limit=3)
    assert vectors.shape == (3, 8)
    want = module.embed_buyers(
        torch.tensor([[0, 1]]), torch.ones(1, 2), torch.ones(1, 2, dtype=torch.bool), items
    )
    np.testing.assert_allclose(vectors[0], want[0].detach().numpy(), atol=1e-6)
    assert held_out_buyer_vectors(module, PerItemHistories(), items, limit=0).shape == (0, 8)
