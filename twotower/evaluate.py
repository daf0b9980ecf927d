"""python -m twotower.evaluate: a bundle's offline metrics beside baselines, on one split of its data.

Every method ranks the same candidate set (the bundle's catalog) for the same queries (the split's next-item
examples). The model scores exactly (full-catalog inner product over the bundle's stored embeddings with the
checkpoint's buyer tower, not the ANN index; ``use_index=true`` adds a ``model_index`` row through the index).
Every method's list is then built by the served scoring function (:mod:`twotower.scoring`) under the served
settings (the bundle's recorded ones, else the model's best on val), so all methods compete under the
configuration the service uses; the other exclusion setting is reported too. Baseline parameters and repeat
weights are chosen on the val split (small grids, recorded in metrics.json under ``tuning``).
The core lives in :mod:`twotower.evaluation`; this module reads the config and the data.

(Just over ~300 lines: the Hydra entry point also selects the data and scoring sources and prints the tables.)
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import hydra
import numpy as np
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, ListConfig, OmegaConf

from twotower.assembly import build_text_encoder, metric_value
from twotower.config import ConfigError, check_k_values, validate_config
from twotower.data.datamodule import TwoTowerDataModule
from twotower.evaluation.queries import catalog_mapping, check_referenced, split_queries
from twotower.evaluation.rankers import Interactions, ModelRanker
from twotower.evaluation.report import evaluate_rankings, history_length_slices, report_text
from twotower.evaluation.tuning import MethodSpec, tune_and_rank
from twotower.model.buyer_tower import load_buyer_tower
from twotower.retrieval.bundle import Bundle, BundleError, load_bundle
from twotower.scoring import MANIFEST_KEY as SCORING_KEY
from twotower.scoring import ScoringSettings, item_features
from twotower.text.cache import TextFeatureCache

log = logging.getLogger(__name__)

RUNTIME_ARGS = {"baselines.text_only.ranker": {"item_vectors"}}
SCORING_SOURCES = ("auto", "bundle", "config", "tune")
DATA_SOURCES = ("auto", "bundle", "config")
_DATA_OVERRIDE = re.compile(r"^[+~]*data([./=]|$)")  # data=..., data.x=..., data/...; not data_source=...


def data_overridden(overrides: list[str]) -> bool:
    """Whether command-line overrides touch the data config group."""
    return any(_DATA_OVERRIDE.match(o) for o in overrides)


def select_data_config(cfg: DictConfig, recorded: dict, overridden: bool = False) -> DictConfig:
    """The data config to evaluate on: the bundle's recorded one (`Bundle.data_config`), or the composed one
    (see conf/evaluate.yaml)."""
    source = cfg.get("data_source", "auto")
    if source not in DATA_SOURCES:
        raise ConfigError(f"data_source={source!r} is unknown; use one of {list(DATA_SOURCES)}")
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


def text_vectors(encoder_cfg: dict | None, texts: list[str], cache_dir: str) -> np.ndarray:
    """The bundle's frozen text encoder (`Bundle.text_encoder_config`) over texts, through the feature cache."""
    if encoder_cfg is None:
        raise BundleError(
            "the bundle's manifest records no model.text_encoder config, which the text_only baseline and the "
            "diversity metric need; re-export the bundle with `python -m twotower.export`"
        )
    encoder = build_text_encoder(OmegaConf.create(encoder_cfg))
    return TextFeatureCache(cache_dir).encode(encoder, texts)


def check_history_similarity(weights: Any) -> None:
    """Fail at start-up on a bad ``scoring.history_similarity`` (a list of weights >= 0, or empty/null)."""
    if weights is None:
        return
    if isinstance(weights, str) or not isinstance(weights, Sequence | ListConfig):
        raise ConfigError(f"scoring.history_similarity must be a list of weights >= 0; got {weights!r}")
    for weight in weights:
        try:
            ScoringSettings(history_similarity=weight)
        except ValueError as error:
            raise ConfigError(f"scoring.history_similarity: {error}") from error


def served_settings(cfg: DictConfig, manifest: dict) -> ScoringSettings | None:
    """The model's scoring settings when they are not to be chosen here: the bundle's recorded ones
    (``scoring.source=auto|bundle``) or the configured ones (``config``); None = choose on val."""
    source = cfg.scoring.source
    if source not in SCORING_SOURCES:
        raise ConfigError(f"scoring.source={source!r} is unknown; use one of {list(SCORING_SOURCES)}")
    recorded = manifest.get(SCORING_KEY)
    if source == "config":
        return ScoringSettings.from_dict(OmegaConf.to_container(cfg.scoring.settings, resolve=True))
    if source in ("auto", "bundle") and isinstance(recorded, dict):
        return ScoringSettings.from_dict(recorded)
    if source == "bundle":
        raise ConfigError(
            f"scoring.source=bundle but the bundle's manifest records no '{SCORING_KEY}' settings; "
            "use scoring.source=tune (choose them on val here) or re-export the bundle"
        )
    return None


def _grid(node: Any) -> Any:
    return OmegaConf.to_container(node, resolve=True) if node is not None else None


def _needs_vectors(node: DictConfig) -> bool:
    return str(node.ranker.get("_target_", "")).endswith("TextOnlyRanker")


def check_baselines(cfg: DictConfig) -> None:
    """Fail at start-up, not after the data has loaded: every baseline has a ranker and valid grid keys."""
    for name, node in (cfg.get("baselines") or {}).items():
        if node is None:
            continue
        if name == "model":
            raise ConfigError("baselines.model: the name 'model' is taken by the model")
        if not isinstance(node, DictConfig) or "ranker" not in node or "_target_" not in node.ranker:
            raise ConfigError(
                f"baselines.{name} needs a 'ranker' node with a _target_ (see conf/evaluate.yaml)"
            )
        unknown = set(node) - {"ranker", "grid", "repeat"}
        if unknown:
            raise ConfigError(f"baselines.{name}: unknown keys {sorted(unknown)}; use ranker, grid, repeat")
        ranker = OmegaConf.to_container(node.ranker, resolve=True)
        provided = {f"baselines.{name}": {"item_vectors"} if _needs_vectors(node) else set()}
        for params in _grid(node.get("grid")) or [{}]:
            if not isinstance(params, dict):
                raise ConfigError(
                    f"baselines.{name}.grid must be a list of parameter mappings; got {params!r}"
                )
            validate_config(OmegaConf.create({"baselines": {name: {**ranker, **params}}}), provided)
        repeat = _grid(node.get("repeat"))
        if repeat is not None:
            bad = set(repeat) - set(ScoringSettings().to_dict())
            if bad or not all(isinstance(v, list) for v in repeat.values()):
                raise ConfigError(
                    f"baselines.{name}.repeat must map scoring fields to lists of values; got {repeat!r}"
                )


def method_specs(
    cfg: DictConfig, bundle: Bundle, vectors: np.ndarray, fixed: ScoringSettings | None
) -> list[MethodSpec]:
    """The model first, then the configured baselines (a node set to null is skipped). With the bundle's
    recorded settings, the model's other exclusion setting is ranked as ``/retrieve`` serves a request that
    sets it (``Bundle.scoring_for``), not tuned here."""
    # what /retrieve serves a request that sets the other exclusion (settings from config: tuned here instead)
    fixed_other = (
        bundle.scoring_for(not fixed.exclude_seen)
        if fixed is not None and cfg.scoring.source != "config"
        else None
    )
    index = bundle.index if cfg.use_index else None
    tower = load_buyer_tower(bundle.checkpoint_path)
    specs = [
        MethodSpec(
            "model",
            lambda params: ModelRanker(tower, bundle.embeddings, index),
            # the history similarity needs item vectors: the model's grid alone tries it
            repeat_grid={
                **(_grid(cfg.scoring.grid) or {}),
                "history_similarity": list(cfg.scoring.get("history_similarity") or []),
            },
            fixed=fixed,
            fixed_other=fixed_other,
        )
    ]
    for name, node in (cfg.get("baselines") or {}).items():
        if node is None:
            continue
        extra = {"item_vectors": vectors} if _needs_vectors(node) else {}
        grid = _grid(node.get("grid")) or [{}]

        def make(params: dict, node=node.ranker, extra=extra) -> Any:
            return instantiate(node, **params, **extra)

        specs.append(MethodSpec(str(name), make, grid, _grid(node.get("repeat"))))
    return specs


def _interactions(datamodule: TwoTowerDataModule, mapping: np.ndarray, num_items: int) -> Interactions:
    events, train = datamodule.events, datamodule.examples.train_events
    return Interactions(
        buyer=events.buyer[train],
        item=mapping[events.item[train]],
        weight=datamodule.schema.weight_array[events.event[train]],
        num_items=num_items,
        time=events.timestamp[train] / 1e6,
    )


def evaluate(cfg: DictConfig, overridden: bool = False) -> dict[str, Any]:
    """Tune on val, rank the split with the model and every baseline under the served scoring settings (and
    the other exclusion setting), score, print tables, write metrics.json; return the results.

    ``overridden``: whether the caller changed the data config (then ``data_source=auto`` uses it).
    """
    validate_config(cfg, RUNTIME_ARGS)
    if int(cfg.batch_size) < 1:
        raise ConfigError(f"batch_size must be >= 1; got {cfg.batch_size}")
    k_values = check_k_values(cfg.k_values)
    tune_k = int(cfg.tune_k)
    if tune_k < 1:
        raise ConfigError(f"tune_k must be >= 1 (settings are chosen by val recall@tune_k); got {tune_k}")
    check_baselines(cfg)
    check_history_similarity(cfg.scoring.get("history_similarity"))
    bundle = load_bundle(cfg.bundle, load_index=bool(cfg.use_index))
    fixed = served_settings(cfg, bundle.manifest)
    data_cfg = select_data_config(cfg, bundle.data_config, overridden)
    if data_cfg is not cfg.data:  # the composed data config was validated with cfg above
        validate_config(OmegaConf.create({"data": data_cfg}))
    datamodule: TwoTowerDataModule = instantiate(data_cfg)
    datamodule.prepare_data()
    datamodule.setup("test")
    examples, events = datamodule.examples, datamodule.events
    for split in (cfg.split, "val"):
        if split not in examples.positions:
            raise ConfigError(f"split={split!r} is unknown; use one of {sorted(examples.positions)}")
        if not len(examples.positions[split]):
            raise ValueError(
                f"split {split!r} has no examples (cuts: {examples.cuts}); move data.val_cut/test_cut"
            )

    # Everything below works in the bundle's item order: the candidate set is the bundle's catalog.
    mapping = catalog_mapping(datamodule.catalog, bundle.catalog)
    check_referenced(mapping, events.item, datamodule.catalog, bundle.path)
    num_items = len(bundle.catalog)
    interactions = _interactions(datamodule, mapping, num_items)
    item_counts = np.bincount(interactions.item, minlength=num_items).astype(np.float32)
    vectors = text_vectors(bundle.text_encoder_config, bundle.catalog.texts, cfg.text_cache_dir)
    specs = method_specs(cfg, bundle, vectors, fixed)
    queries = {
        split: split_queries(
            events,
            examples.positions[split],
            datamodule.dataset(split),
            mapping,
            datamodule.max_history,
            datamodule.schema.weight_array,
            item_features(bundle.catalog),  # the bundle's training-period statistics, as served
        )
        for split in dict.fromkeys(["val", cfg.split])
    }

    test = queries[cfg.split]
    outcome = tune_and_rank(
        specs,
        lambda ranker: ranker.fit(interactions),
        queries["val"],
        test,
        fixed,
        tune_k=tune_k,
        max_k=min(k_values[-1], num_items),
        batch_size=int(cfg.batch_size),
        report_other=bool(cfg.report_other_exclusion),
        use_index=bool(cfg.use_index),
    )
    served, rankings = outcome.served, outcome.rankings

    slices = {
        "warm": item_counts[test.targets] > 0,
        "cold": item_counts[test.targets] == 0,
        "repeat": test.repeat,
        "new_item": ~test.repeat,
        **history_length_slices(test.history_length),
    }

    def score(ranked: dict[str, np.ndarray]) -> dict[str, Any]:
        return evaluate_rankings(
            ranked, test.targets, k_values, num_items, item_counts, vectors, slices, list_k=int(cfg.list_k)
        )

    results = score(rankings[served])
    if cfg.report_other_exclusion:
        results["other_exclusion"] = {
            "exclude_seen": not served,
            "scoring": outcome.chosen["model"][not served].settings.to_dict(),
            **score(rankings[not served]),
        }
    results["scoring"] = outcome.chosen["model"][served].settings.to_dict()
    results["tuning"] = outcome.tuning
    results["meta"] = {
        "bundle": str(bundle.path.resolve()),
        "model_version": bundle.version,
        "split": str(cfg.split),
        "methods": list(rankings[served]),
        "queries": len(test),
        "candidates": num_items,
        "data_events": str(data_cfg.get("events_path")),
        "ranking": "exact full-catalog inner product over the bundle embeddings, then the served scoring "
        "function (twotower.scoring)"
        + ("; model_index: through the bundle's index" if cfg.use_index else ""),
        "scoring_source": "bundle/config" if fixed else f"chosen on val (recall@{tune_k})",
        "diversity_space": f"text encoder vectors ({bundle.text_encoder_id})",
        **outcome.index_meta,
    }
    print(report_text(results, k_values, [*rankings[served]], int(cfg.list_k)), flush=True)
    path = Path(cfg.metrics_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2, ensure_ascii=False), encoding="utf-8")
    log.info("wrote %s", path)
    return results


def _flatten(results: dict[str, Any]) -> dict[str, float]:
    return {f"{m}/{k}": v for m in results["meta"]["methods"] for k, v in results[m].items()}


@hydra.main(version_base="1.3", config_path="../conf", config_name="evaluate")
def main(cfg: DictConfig) -> float | None:
    overridden = data_overridden(list(HydraConfig.get().overrides.task))
    return metric_value(_flatten(evaluate(cfg, overridden)), cfg.get("optimized_metric"))


if __name__ == "__main__":
    main()
