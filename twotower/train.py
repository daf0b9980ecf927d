"""python -m twotower.train: fit, test the best checkpoint, export embeddings + index into a bundle."""

from __future__ import annotations

import logging

import hydra
import lightning as L
from omegaconf import DictConfig

from twotower.entry import build_run, metric_value, record_hparams

log = logging.getLogger(__name__)


def train(cfg: DictConfig) -> dict[str, float]:
    """Run the configured job; returns the final metrics (val from the best epoch, test, exported bundle)."""
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
            run.exporter.checkpoint_path, run.exporter.metrics = ckpt, metrics
            run.trainer.predict(
                run.model, datamodule=run.datamodule, ckpt_path=ckpt, return_predictions=False
            )
    record_hparams(run, cfg, metrics)
    return metrics


@hydra.main(version_base="1.3", config_path="../conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    return metric_value(train(cfg), cfg.get("optimized_metric"))


if __name__ == "__main__":
    main()
