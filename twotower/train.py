"""python -m twotower.train: fit, test the best checkpoint, export embeddings + index into a bundle."""

from __future__ import annotations

import logging

import hydra
import lightning as L
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig

from twotower.assembly import build_run, metric_value, record_hparams
from twotower.callbacks import held_out_dataset
from twotower.config import check_matmul_precision
from twotower.retrieval.export import export_bundle

log = logging.getLogger(__name__)


def train(cfg: DictConfig) -> dict[str, float]:
    """Run the configured job; returns the final metrics (val from the best epoch, test, exported bundle)."""
    torch.set_float32_matmul_precision(check_matmul_precision(cfg.get("float32_matmul_precision", "highest")))
    L.seed_everything(cfg.seed, workers=True)
    run = build_run(cfg)
    if cfg.train:
        run.trainer.fit(run.model, datamodule=run.datamodule, ckpt_path=cfg.ckpt_path)
    best = run.trainer.checkpoint_callback.best_model_path if run.trainer.checkpoint_callback else None
    ckpt = best or cfg.ckpt_path
    metrics = {k: float(v) for k, v in run.trainer.callback_metrics.items()}
    if cfg.test:
        run.trainer.test(run.model, datamodule=run.datamodule, ckpt_path=ckpt)
        metrics.update({k: float(v) for k, v in run.trainer.callback_metrics.items()})
    if cfg.export:
        if run.exporter is None:
            log.warning("export=true but callbacks has no bundle_exporter; no bundle written")
        else:
            # predict loads the best checkpoint's weights into run.model and shards the catalog over ranks
            embeddings = run.exporter.predict_embeddings(run.trainer, run.model, run.datamodule, ckpt)
            if run.trainer.is_global_zero:
                if not ckpt:
                    raise RuntimeError(
                        "no checkpoint to put in the bundle: enable ModelCheckpoint or pass ckpt_path"
                    )
                export_bundle(
                    run.model,
                    run.datamodule.catalog,
                    ckpt,
                    index=instantiate(cfg.index),
                    settings=instantiate(cfg.exporter),
                    run_config=run.config,
                    metrics=metrics,
                    counts=run.datamodule.report.counts(),
                    embeddings=embeddings,
                    recall_dataset=held_out_dataset(run.datamodule),
                    val_dataset=run.datamodule.dataset("val"),
                )
    record_hparams(run, cfg, metrics)
    return metrics


@hydra.main(version_base="1.3", config_path="../conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    return metric_value(train(cfg), cfg.get("optimized_metric"))


if __name__ == "__main__":
    main()
