"""twotower.export: re-embed a catalog that holds new products with a trained checkpoint, and the whole
chain train -> export -> evaluate -> serve (slow)."""

import json

import numpy as np
import pandas as pd
import pytest

from tests.conftest import compose_config
from twotower.evaluate import evaluate
from twotower.export import export
from twotower.retrieval.bundle import load_bundle
from twotower.serving.recommender import Query, Recommender

NEW_PRODUCTS = [
    {
        "id": "new-1",
        "title": "ساعة ذكية رياضية مقاومة للماء",
        "description": "ساعة جديدة كليا",
        "metadata": json.dumps({"brand": "علامة جديدة", "catalog_id": "wearables"}, ensure_ascii=False),
    },
    {"id": "new-2", "title": "خاتم ذهب عيار 18 جديد", "description": "", "metadata": "{}"},
]


def export_new_catalog(trained_root, tmp_path, *overrides: str):
    """Export the trained checkpoint over the training catalog plus NEW_PRODUCTS; returns the bundle path."""
    sample = trained_root / "data" / "sample"
    products = pd.read_csv(sample / "products.csv", dtype=str, keep_default_na=False)
    pd.concat([products, pd.DataFrame(NEW_PRODUCTS)]).to_csv(tmp_path / "products.csv", index=False)
    cfg = compose_config(
        tmp_path,
        [
            "data=csv",
            f"data.events_path={sample / 'events.csv'}",
            f"data.products_path={tmp_path / 'products.csv'}",
            f"ckpt_path={trained_root / 'run' / 'bundle' / 'model.ckpt'}",
            *overrides,
        ],
        config_name="export",
    )
    return export(cfg)


@pytest.mark.slow
def test_export_new_catalog_with_ivf_retrieves_new_products(trained_root, tmp_path):
    written = export_new_catalog(trained_root, tmp_path, "index=ivf")
    bundle = load_bundle(written)
    old = load_bundle(trained_root / "run" / "bundle", load_index=False)
    assert len(bundle.product_ids) == len(old.product_ids) + 2
    assert bundle.index.info["kind"] == "ivf" and bundle.index.info["recall@10_vs_exact"] >= 0.95
    # unchanged products keep their vectors; new ones are embedded and retrievable
    position = {pid: i for i, pid in enumerate(bundle.product_ids)}
    same = [position[pid] for pid in old.product_ids]
    np.testing.assert_allclose(bundle.embeddings[same], old.embeddings, atol=1e-5)
    for pid in ("new-1", "new-2"):
        row = position[pid]
        _, ids = bundle.index.search(bundle.embeddings[row : row + 1], 5)
        assert ids[0, 0] == row
    assert (tmp_path / "outputs" / "latest").resolve() == written.resolve()


@pytest.mark.slow
def test_train_export_evaluate_serve_chain(trained_root, tmp_path):
    """Issue 9 item 2: a bundle from `python -m twotower.export` evaluates and serves like a trained one."""
    # export: a new catalog, and an index kind that index=auto chooses (threshold lowered below the catalog)
    written = export_new_catalog(trained_root, tmp_path, "index.auto_threshold=100")
    trained = load_bundle(trained_root / "run" / "bundle", load_index=False)
    exported = load_bundle(written)
    assert trained.index is None and exported.index.kind == "hnsw"
    assert exported.index.info["chosen_by"] == "auto"
    # one manifest shape for every writer: data and model.text_encoder, each with its _target_
    for bundle in (trained, exported):
        assert "_target_" in bundle.data_config and "_target_" in bundle.model_config
        assert bundle.text_encoder_config is not None and "_target_" in bundle.text_encoder_config
        assert not {"brand_vocab", "category_vocab"} & set(bundle.model_config)
    assert exported.text_encoder_config == trained.text_encoder_config
    assert exported.data_config["products_path"] == str(tmp_path / "products.csv")
    assert exported.model_config["item_tower"] == trained.model_config["item_tower"]

    # evaluate the exported bundle on the data it records (the text_only baseline needs its text encoder)
    eval_cfg = compose_config(
        tmp_path / "eval", [f"bundle={written}", "k_values=[1,5,10]"], config_name="evaluate"
    )
    results = evaluate(eval_cfg)
    assert results["meta"]["candidates"] == len(exported.product_ids)
    assert results["model"]["recall@10"] > results["popularity"]["recall@10"]
    assert "text_only" in results

    # serve one request, in process, with a new product in the history
    recommender = Recommender.from_bundle(written)
    # exclusion asked for explicitly: by default the bundle's scoring settings (chosen on val) decide
    history = ["new-1", trained.product_ids[0]]
    (answer,) = recommender.retrieve([Query(history, ["view", "purchase"], k=5, exclude_seen=True)])
    assert answer.unknown_product_ids == [] and len(answer.items) == 5
    assert {"new-1", trained.product_ids[0]}.isdisjoint(item["product_id"] for item in answer.items)
