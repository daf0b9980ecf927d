"""python -m twotower.export ckpt_path=...: embed a (possibly new) catalog with a trained model into a bundle."""

from __future__ import annotations

import logging
from pathlib import Path

import hydra
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from twotower.callbacks import BundleExporter
from twotower.config import ConfigError, validate_config
from twotower.entry import RUNTIME_ARGS, build_text_encoder
from twotower.model.module import load_module

log = logging.getLogger(__name__)


def export(cfg: DictConfig) -> Path:
    """Returns the written bundle directory."""
    validate_config(cfg, RUNTIME_ARGS)
    ckpt_path = Path(cfg.ckpt_path)
    if not ckpt_path.is_file():
        raise ConfigError(
            f"ckpt_path={ckpt_path} does not exist; pass a checkpoint, e.g. outputs/latest/model.ckpt"
        )
    hparams = torch.load(ckpt_path, map_location="cpu", weights_only=False)["hyper_parameters"]
    encoder_config = hparams.get("text_encoder_config")
    if not encoder_config:
        raise ConfigError(f"{ckpt_path} records no text encoder config; it was not written by twotower.train")
    module = load_module(ckpt_path, text_encoder=build_text_encoder(encoder_config))
    datamodule = instantiate(cfg.data)
    datamodule.prepare_data()
    datamodule.setup("predict")
    exporter: BundleExporter = instantiate(cfg.exporter)
    exporter.checkpoint_path = str(ckpt_path)
    exporter.run_config = {**OmegaConf.to_container(cfg, resolve=True), "model": hparams}
    trainer = instantiate(cfg.trainer, callbacks=[exporter], logger=False)
    trainer.predict(module, datamodule=datamodule, return_predictions=False)
    return exporter.written


@hydra.main(version_base="1.3", config_path="../conf", config_name="export")
def main(cfg: DictConfig) -> None:
    export(cfg)


if __name__ == "__main__":
    main()
