"""python -m twotower.export ckpt_path=...: embed a (possibly new) catalog with a trained model into a bundle."""

from __future__ import annotations

import logging
from pathlib import Path

import hydra
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from twotower.assembly import RUNTIME_ARGS, build_text_encoder
from twotower.callbacks import BundleExporter, held_out_dataset
from twotower.config import ConfigError, validate_config
from twotower.model.checkpoint import read_checkpoint
from twotower.model.module import load_module
from twotower.retrieval.export import export_bundle, model_config_from_hparams

log = logging.getLogger(__name__)


def export(cfg: DictConfig) -> Path:
    """Returns the written bundle directory."""
    validate_config(cfg, RUNTIME_ARGS)
    ckpt_path = Path(cfg.ckpt_path)
    if not ckpt_path.is_file():
        raise ConfigError(
            f"ckpt_path={ckpt_path} does not exist; pass a checkpoint, e.g. outputs/latest/model.ckpt"
        )
    hparams = read_checkpoint(ckpt_path)["hyper_parameters"]
    try:
        model_config = model_config_from_hparams(hparams)
    except ValueError as error:
        raise ConfigError(f"{ckpt_path}: {error}") from error
    module = load_module(ckpt_path, text_encoder=build_text_encoder(model_config["text_encoder"]))
    datamodule = instantiate(cfg.data)
    datamodule.prepare_data()
    datamodule.setup("predict")
    index, settings = instantiate(cfg.index), instantiate(cfg.exporter)
    gatherer = BundleExporter(index, settings)
    trainer = instantiate(cfg.trainer, callbacks=[gatherer], logger=False)
    embeddings = gatherer.predict_embeddings(trainer, module, datamodule)
    # The manifest has the shape a training run writes: its model node is the checkpoint's model config.
    run_config = {**OmegaConf.to_container(cfg, resolve=True), "model": model_config}
    return export_bundle(
        module,
        datamodule.catalog,
        ckpt_path,
        index=index,
        settings=settings,
        run_config=run_config,
        counts=datamodule.report.counts(),
        embeddings=embeddings,
        recall_dataset=held_out_dataset(datamodule),
        val_dataset=datamodule.dataset("val"),
    )


@hydra.main(version_base="1.3", config_path="../conf", config_name="export")
def main(cfg: DictConfig) -> None:
    export(cfg)


if __name__ == "__main__":
    main()
