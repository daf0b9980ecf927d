"""python -m twotower.evaluate: a bundle's offline metrics beside baselines, on one split of its data.

Every method ranks the same candidate set (the bundle's catalog) for the same queries (the split's next-item
examples). The model's ranking is exact full-catalog inner product over the bundle's stored embeddings with
the checkpoint's buyer tower — not the ANN index — so the figures are the model's, not the index's.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any

import hydra
import numpy as np
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from tqdm.auto import tqdm

from twotower.assembly import build_text_encoder, metric_value
from twotower.baselines import Interactions, TextOnlyRecommender
from twotower.config import ConfigError, validate_config
from twotower.data.catalog import Catalog
from twotower.data.datamodule import TwoTowerDataModule
from twotower.evaluation import ModelRecommender, evaluate_rankings, format_table, history_length_slices
from twotower.model.buyer_tower import load_buyer_tower
from twotower.retrieval.bundle import Bundle, BundleError, load_bundle
from twotower.text.cache import TextFeatureCache

log = logging.getLogger(__name__)

RUNTIME_ARGS = {"baselines.text_only": {"item_vectors"}}
DATA_SOURCES = ("auto", "bundle", "config")
_DATA_OVERRIDE = re.compile(r"^[+~]*data([./=]|$)")  # data=..., data.x=..., data/...; not data_source=...


def data_overridden(overrides: list[str]) -> bool:
    """Whether command-line overrides touch the data config group."""
    return any(_DATA_OVERRIDE.match(o) for o in overrides)


def select_data_config(cfg: DictConfig, manifest: dict, overridden: bool = False) -> DictConfig:
    """The data config to evaluate on: the bundle's recorded one, or the composed one (see conf/evaluate.yaml)."""
    source = cfg.get("data_source", "auto")
    if source not in DATA_SOURCES:
        raise ConfigError(f"data_source={source!r} is unknown; use one of {list(DATA_SOURCES)}")
    recorded = (manifest.get("config") or {}).get("data")
    usable = isinstance(recorded, dict) and "_target_" in recorded
    if source == "bundle" or (source == "auto" and not overridden):
        if usable:
            data = OmegaConf.create(recorded)
            data.report_path = str(Path(cfg.paths.output_dir) / "data_report.json")
            log.info("data: the bundle's recorded data config (events: %s)", data.get("events_path"))
            return data
        if source == "bundle":
            raise ConfigError(
                "data_source=bundle but the bundle's manifest records no data config with a _target_; "
                "pass the data on the command line (data=csv data.events_path=... data.products_path=...)"
            )
        log.warning("the bundle records no usable data config; evaluating on the composed data config")
    log.info("data: the composed data config (events: %s)", cfg.data.get("events_path"))
    return cfg.data


def catalog_mapping(data_catalog: Catalog, bundle_catalog: Catalog) -> np.ndarray:
    """int64 [num data items]: each data-catalog item's row in the bundle (by product id or alias), -1 if absent."""
    mapping = bundle_catalog.resolve(data_catalog.product_ids)
    missing = mapping < 0
    if missing.any():
        # a duplicate may be canonical under another id in the bundle: try the data catalog's aliases too
        by_alias: dict[int, int] = {}
        for alias, index in data_catalog.aliases.items():
            if missing[index] and alias in bundle_catalog.aliases:
                by_alias.setdefault(index, bundle_catalog.aliases[alias])
        for index, row in by_alias.items():
            mapping[index] = row
    return mapping


def _check_referenced(mapping: np.ndarray, items: np.ndarray, catalog: Catalog, bundle_path: Path) -> None:
    absent = np.unique(items[mapping[items] < 0])
    if len(absent):
        ids = [catalog.product_ids[i] for i in absent[:10]]
        raise BundleError(
            f"the evaluation data references {len(absent)} products that the bundle {bundle_path} does not contain "
            f"(e.g. {ids}); evaluate on the data the bundle was trained on, or re-export the bundle over this "
            "catalog with `python -m twotower.export`"
        )


def text_vectors(manifest: dict, texts: list[str], cache_dir: str) -> np.ndarray:
    """The bundle's frozen text encoder (manifest config model.text_encoder) over texts, through the feature cache."""
    encoder_cfg = ((manifest.get("config") or {}).get("model") or {}).get("text_encoder")
    if not isinstance(encoder_cfg, dict) or "_target_" not in encoder_cfg:
        raise BundleError(
            "the bundle's manifest records no model.text_encoder config, which the text_only baseline and the "
            "diversity metric need; re-export the bundle with `python -m twotower.export`"
        )
    encoder = build_text_encoder(OmegaConf.create(encoder_cfg))
    return TextFeatureCache(cache_dir).encode(encoder, texts)


def _build_methods(cfg: DictConfig, bundle: Bundle, vectors: np.ndarray) -> dict[str, Any]:
    methods: dict[str, Any] = {
        "model": ModelRecommender(load_buyer_tower(bundle.checkpoint_path), bundle.embeddings)
    }
    for name, node in (cfg.get("baselines") or {}).items():
        if node is None:
            continue
        if name in methods:
            raise ConfigError(f"baselines.{name}: the name {name!r} is taken by the model")
        extra = (
            {"item_vectors": vectors}
            if node.get("_target_", "").endswith(TextOnlyRecommender.__name__)
            else {}
        )
        methods[str(name)] = instantiate(node, **extra)
    return methods


def evaluate(cfg: DictConfig, overridden: bool = False) -> dict[str, Any]:
    """Rank the split with the model and every baseline, score, print tables, write metrics.json; return the results.

    ``overridden``: whether the caller changed the data config (then ``data_source=auto`` uses it).
    """
    validate_config(cfg, RUNTIME_ARGS)
    if int(cfg.batch_size) < 1:
        raise ConfigError(f"batch_size must be >= 1; got {cfg.batch_size}")
    k_values = sorted({int(k) for k in cfg.k_values})
    if not k_values or k_values[0] < 1:
        raise ConfigError(f"k_values must be positive integers; got {list(cfg.k_values)}")
    bundle = load_bundle(cfg.bundle, load_index=False)
    data_cfg = select_data_config(cfg, bundle.manifest, overridden)
    if data_cfg is not cfg.data:  # the composed data config was validated with cfg above
        validate_config(OmegaConf.create({"data": data_cfg}))
    datamodule: TwoTowerDataModule = instantiate(data_cfg)
    datamodule.prepare_data()
    datamodule.setup("test")
    if cfg.split not in datamodule.examples.positions:
        raise ConfigError(
            f"split={cfg.split!r} is unknown; use one of {sorted(datamodule.examples.positions)}"
        )

    # Everything below works in the bundle's item order: the candidate set is the bundle's catalog.
    events, examples = datamodule.events, datamodule.examples
    mapping = catalog_mapping(datamodule.catalog, bundle.catalog)
    positions = examples.positions[cfg.split]
    _check_referenced(mapping, events.item, datamodule.catalog, bundle.path)
    num_items = len(bundle.catalog)
    train = examples.train_events
    interactions = Interactions(
        buyer=events.buyer[train],
        item=mapping[events.item[train]],
        weight=datamodule.schema.weight_array[events.event[train]],
        num_items=num_items,
    )
    item_counts = np.bincount(interactions.item, minlength=num_items).astype(np.float32)
    vectors = text_vectors(bundle.manifest, bundle.catalog.texts, cfg.text_cache_dir)
    methods = _build_methods(cfg, bundle, vectors)
    for method in methods.values():
        method.fit(interactions)

    if not len(positions):
        raise ValueError(
            f"split {cfg.split!r} has no examples (cuts: {examples.cuts}); move data.val_cut/test_cut"
        )
    dataset = datamodule.dataset(cfg.split)
    max_k = min(k_values[-1], num_items)
    rankings = {name: np.empty((len(positions), max_k), dtype=np.int64) for name in methods}
    targets = np.empty(len(positions), dtype=np.int64)
    repeat = np.empty(len(positions), dtype=bool)  # the target is already in the history input
    for start in tqdm(range(0, len(positions), cfg.batch_size), desc=f"ranking {cfg.split}", unit="batch"):
        index = np.arange(start, min(start + cfg.batch_size, len(positions)))
        batch = {key: value.numpy() for key, value in dataset.__getitems__(index).items()}
        batch["history_items"] = np.where(batch["history_mask"], mapping[batch["history_items"]], 0)
        targets[index] = mapping[batch["target"]]
        repeat[index] = ((batch["history_items"] == targets[index, None]) & batch["history_mask"]).any(axis=1)
        for name, method in methods.items():
            rankings[name][index] = method.recommend(batch, max_k)

    history_length = events.history_end[positions] - events.buyer_start[events.buyer[positions]]
    cold = item_counts[targets] == 0
    slices = {
        "warm": ~cold,
        "cold": cold,
        "repeat": repeat,
        "new_item": ~repeat,
        **history_length_slices(history_length),
    }
    results = evaluate_rankings(
        rankings, targets, k_values, num_items, item_counts, vectors, slices, list_k=int(cfg.list_k)
    )
    results["meta"] = {
        "bundle": str(bundle.path.resolve()),
        "model_version": bundle.version,
        "split": str(cfg.split),
        "queries": len(positions),
        "candidates": num_items,
        "data_events": str(data_cfg.get("events_path")),
        "ranking": "exact full-catalog inner product over the bundle embeddings (not the ANN index)",
        "diversity_space": f"text encoder vectors ({bundle.manifest.get('text_encoder_id')})",
    }
    _report(results, k_values, list(methods), int(cfg.list_k))
    path = Path(cfg.metrics_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2, ensure_ascii=False), encoding="utf-8")
    log.info("wrote %s", path)
    return results


def _report(results: dict[str, Any], k_values: list[int], methods: list[str], list_k: int) -> None:
    meta = results["meta"]
    list_k = min(list_k, k_values[-1])
    columns = [f"recall@{k}" for k in k_values] + [
        f"ndcg@{min(10, k_values[-1])}",
        "mrr",
        f"coverage@{list_k}",
        f"diversity@{list_k}",
        f"novelty@{list_k}",
    ]
    k_slice = 10 if 10 in k_values else k_values[-1]
    slice_rows = {
        name: {"queries": int(entry["queries"]), **{m: entry[m][f"recall@{k_slice}"] for m in methods}}
        for name, entry in results["slices"].items()
    }
    text = (
        f"\n{meta['split']} split: {meta['queries']} queries, {meta['candidates']} candidates; {meta['ranking']}\n"
        + format_table({m: results[m] for m in methods}, columns)
        + f"\n\nrecall@{k_slice} by slice (warm/cold target; repeat/new_item: target in the history or not; "
        "history length in events)\n" + format_table(slice_rows, ["queries", *methods], row_title="slice")
    )
    print(text, flush=True)


def _flatten(results: dict[str, Any]) -> dict[str, float]:
    return {
        f"{m}/{k}": v
        for m, values in results.items()
        if m not in ("slices", "meta")
        for k, v in values.items()
    }


@hydra.main(version_base="1.3", config_path="../conf", config_name="evaluate")
def main(cfg: DictConfig) -> float | None:
    overridden = data_overridden(list(HydraConfig.get().overrides.task))
    return metric_value(_flatten(evaluate(cfg, overridden)), cfg.get("optimized_metric"))


if __name__ == "__main__":
    main()
