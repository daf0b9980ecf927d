"""Shared set-up of the probe scripts that re-rank a bundle's queries (knn_rerank_check, history_similarity_check):
the bundle, its data module as `python -m twotower.evaluate` would build it, and a split's queries."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate

from twotower.data.datamodule import TwoTowerDataModule
from twotower.evaluate import select_data_config
from twotower.evaluation.queries import SplitQueries, catalog_mapping, split_queries
from twotower.retrieval.bundle import Bundle, load_bundle


def load_bundle_data(
    bundle_path: Path, overrides: list[str], name: str
) -> tuple[Bundle, TwoTowerDataModule, np.ndarray]:
    """The bundle (without its index), its set-up data module (evaluate's config with ``overrides``) and the
    data's catalog rows in the bundle's catalog; ``name`` names the folder under /tmp for the data report."""
    conf = str(Path(__file__).resolve().parents[1] / "conf")
    with initialize_config_dir(config_dir=conf, version_base="1.3"):
        cfg = compose(
            "evaluate",
            overrides=[f"bundle={bundle_path}", f"paths.output_dir=/tmp/{name}", *overrides],
            return_hydra_config=True,
        )
    HydraConfig.instance().set_config(cfg)  # the config interpolates hydra.runtime paths
    bundle = load_bundle(cfg.bundle, load_index=False)
    dm = instantiate(select_data_config(cfg, bundle.data_config, overridden=bool(overrides)))
    dm.prepare_data()
    dm.setup("test")
    return bundle, dm, catalog_mapping(dm.catalog, bundle.catalog)


def queries_of(dm: TwoTowerDataModule, mapping: np.ndarray, split: str) -> SplitQueries:
    """A split's next-item queries, as evaluate ranks them."""
    return split_queries(
        dm.events,
        dm.examples.positions[split],
        dm.dataset(split),
        mapping,
        dm.max_history,
        dm.schema.weight_array,
    )
