"""twotower.export: re-embed a catalog that holds new products with a trained checkpoint (slow)."""

import json

import numpy as np
import pandas as pd
import pytest

from tests.conftest import compose_config
from twotower.export import export
from twotower.retrieval.bundle import load_bundle

NEW_PRODUCTS = [
    {
        "id": "new-1",
        "title": "ساعة ذكية رياضية مقاومة للماء",
        "description": "ساعة جديدة كليا",
        "metadata": json.dumps({"brand": "علامة جديدة", "catalog_id": "wearables"}, ensure_ascii=False),
    },
    {"id": "new-2", "title": "خاتم ذهب عيار 18 جديد", "description": "", "metadata": "{}"},
]


@pytest.mark.slow
def test_export_new_catalog_with_ivf_retrieves_new_products(trained_root, tmp_path):
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
            "index=ivf",
        ],
        config_name="export",
    )
    written = export(cfg)
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
