"""Assembly of a run from its config, shared by the Hydra entry points (train, export, evaluate): validate the
config, then build the text encoder, data, model, trainer and callbacks; metric and hparams helpers."""

from __future__ import annotations

import inspect
import logging
from dataclasses import dataclass
from typing import Any

import lightning as L
from hydra.utils import get_object, instantiate
from lightning.pytorch.loggers import TensorBoardLogger
from omegaconf import DictConfig, OmegaConf, open_dict

from twotower.callbacks import BundleExporter
from twotower.config import check_epoch_budget, epochs_for_budget, validate_config
from twotower.data.datamodule import TwoTowerDataModule

log = logging.getLogger(__name__)

# Arguments that the entry point computes from the data and the encoder instead of reading them from YAML.
RUNTIME_ARGS = {
    "model": {"text_dim", "brand_vocab", "category_vocab", "text_encoder", "text_encoder_config"},
    "trainer": {"callbacks", "logger"},
}


@dataclass
class Run:
    datamodule: TwoTowerDataModule
    model: L.LightningModule
    trainer: L.Trainer
    exporter: BundleExporter | None
    config: dict


def build_text_encoder(encoder_cfg: DictConfig | dict) -> Any:
    return instantiate(encoder_cfg)


def build_model(model_cfg: DictConfig, datamodule: TwoTowerDataModule) -> L.LightningModule:
    encoder = build_text_encoder(model_cfg.text_encoder)
    encoder_config = OmegaConf.to_container(model_cfg.text_encoder, resolve=True)
    model_cfg = model_cfg.copy()
    with open_dict(model_cfg):
        del model_cfg["text_encoder"]  # passed as the built object below
    model = instantiate(
        model_cfg,
        text_dim=encoder.dim,
        brand_vocab=datamodule.catalog.brand_vocab.tokens,
        category_vocab=datamodule.catalog.category_vocab.tokens,
        text_encoder=encoder,
    )
    # recorded after instantiation: passed as a kwarg, Hydra would build the encoder from its _target_ again
    model.hparams["text_encoder_config"] = encoder_config
    return model


def instantiate_group(group: DictConfig | None, **runtime: Any) -> list[Any]:
    """Build every `_target_` node of a group such as callbacks or logger (null entries are switched off).

    ``runtime`` gives extra arguments to the nodes whose target accepts them (e.g. ``run_config``).
    """
    built = []
    for node in (group or {}).values():
        if not (isinstance(node, DictConfig) and "_target_" in node):
            continue
        params = inspect.signature(get_object(node._target_)).parameters
        extra = {k: v for k, v in runtime.items() if k in params}
        # Passed to the partial, not to instantiate: Hydra would merge them into the node and build any
        # `_target_` inside them (a run config holds several).
        built.append(instantiate(node, _partial_=True)(**extra) if extra else instantiate(node))
    return built


def build_run(cfg: DictConfig) -> Run:
    validate_config(cfg, RUNTIME_ARGS)
    budget = check_epoch_budget(cfg.get("epoch_budget_targets"))
    datamodule: TwoTowerDataModule = instantiate(cfg.data)
    datamodule.prepare_data()
    datamodule.setup("fit")
    model = build_model(cfg.model, datamodule)
    config = OmegaConf.to_container(cfg, resolve=True)
    train_targets, cap = len(datamodule.examples.positions["train"]), cfg.trainer.get("max_epochs")
    epochs = epochs_for_budget(budget, train_targets, cfg.trainer.get("min_epochs"), cap)
    if budget is not None:
        log.info(
            "training for %s epochs: about %d training targets (epoch_budget_targets) over %d a pass, at most "
            "trainer.max_epochs=%s", epochs, budget, train_targets, cap,
        )  # fmt: skip
    config["trainer"]["max_epochs"] = epochs  # what the run trained (manifest, hparams)
    callbacks = instantiate_group(cfg.get("callbacks"), run_config=config)
    loggers = instantiate_group(cfg.get("logger"))
    trainer: L.Trainer = instantiate(
        cfg.trainer, max_epochs=epochs, callbacks=callbacks, logger=loggers or False
    )
    exporter = next((c for c in callbacks if isinstance(c, BundleExporter)), None)
    return Run(datamodule, model, trainer, exporter, config)


def metric_value(metrics: dict[str, float], name: str | None) -> float | None:
    if not name:
        return None
    if name not in metrics:
        raise KeyError(f"optimized_metric={name!r} was not logged; logged metrics: {sorted(metrics)}")
    return metrics[name]


def _flatten(config: dict, prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{name}/"))
        elif isinstance(value, int | float | str | bool):
            flat[name] = value
    return flat


def record_hparams(run: Run, cfg: DictConfig, metrics: dict[str, float]) -> None:
    """TensorBoard hparams: the run's scalar config beside its final metrics, for comparing sweep runs."""
    final = {
        f"hp/{k}": v
        for k, v in metrics.items()
        if k.startswith(("val/", "test/")) and "/popularity/" not in k
    }
    params = _flatten({k: run.config[k] for k in ("data", "model", "trainer", "seed") if k in run.config})
    for logger in run.trainer.loggers:
        if isinstance(logger, TensorBoardLogger):
            logger.log_hyperparams(params, metrics=final)
