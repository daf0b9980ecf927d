"""Callbacks: export embeddings + build the index into a bundle; TensorBoard embedding projector."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import BasePredictionWriter, Callback
from lightning.pytorch.loggers import TensorBoardLogger

from twotower.retrieval.bundle import point_latest, write_bundle
from twotower.retrieval.index import IndexBuilder

log = logging.getLogger(__name__)


def held_out_buyer_queries(
    module: Any, datamodule: Any, item_vectors: torch.Tensor, limit: int
) -> np.ndarray:
    """Buyer vectors [n, D] for up to `limit` held-out examples (val, else test, else train): index recall queries."""
    for split in ("val", "test", "train"):
        dataset = datamodule.dataset(split)
        if len(dataset):
            break
    picks = np.linspace(0, len(dataset) - 1, num=min(limit, len(dataset))).astype(np.int64)
    batch = dataset.__getitems__(picks)
    with torch.no_grad():
        buyers = module.embed_buyers(
            batch["history_items"].to(item_vectors.device),
            batch["history_weights"].to(item_vectors.device),
            batch["history_mask"].to(item_vectors.device),
            item_vectors,
        )
    return buyers.float().cpu().numpy()


def export_bundle(
    module: Any,
    datamodule: Any,
    embeddings: np.ndarray,
    index_builder: IndexBuilder,
    bundle_dir: str | Path,
    checkpoint_path: str | Path,
    run_config: dict | None = None,
    metrics: dict | None = None,
    latest_link: str | Path | None = None,
    recall_queries: int = 2000,
) -> Path:
    """Build the index over `embeddings`, measure its recall on held-out buyers, write the bundle, point latest."""
    index = index_builder.build(embeddings)
    vectors = torch.from_numpy(embeddings).to(module.device)
    queries = held_out_buyer_queries(module, datamodule, vectors, recall_queries)
    index.measure_recall(queries, k=10)
    counts = {
        **{f"examples_{k}": v for k, v in datamodule.report.examples.items()},
        "buyers": datamodule.report.buyers,
        "events": datamodule.report.events_kept,
        "cold_items": datamodule.report.cold_items,
    }
    path = write_bundle(
        bundle_dir,
        embeddings=embeddings,
        catalog=datamodule.catalog,
        index=index,
        checkpoint_path=checkpoint_path,
        config=run_config,
        metrics=metrics,
        counts=counts,
        text_encoder_id=getattr(module.encoder, "id", None),
    )
    if latest_link:
        point_latest(latest_link, path)
        log.info("%s -> %s", latest_link, path)
    return path


class BundleExporter(BasePredictionWriter):
    """After fit: embed the catalog with Lightning predict (sharded across ranks), rank 0 writes the bundle.

    With refresh_on_best, the bundle is also rewritten at the end of every epoch that sets a new best checkpoint.
    """

    def __init__(
        self,
        index: IndexBuilder,
        bundle_dir: str,
        latest_link: str | None = None,
        recall_queries: int = 2000,
        refresh_on_best: bool = False,
    ) -> None:
        super().__init__(write_interval="epoch")
        self.index_builder, self.bundle_dir, self.latest_link = index, Path(bundle_dir), latest_link
        self.recall_queries, self.refresh_on_best = recall_queries, refresh_on_best
        self.run_config: dict | None = (
            None  # set by the entry point: the resolved run config for the manifest
        )
        self.checkpoint_path: str | None = None  # set by the entry point for exports outside a fit
        self.metrics: dict[str, float] | None = (
            None  # set by the entry point: predict resets callback_metrics
        )
        self.written: Path | None = None
        self._last_best: str | None = None

    def _checkpoint(self, trainer: L.Trainer) -> str:
        path = (
            self.checkpoint_path
            or trainer.ckpt_path
            or getattr(trainer.checkpoint_callback, "best_model_path", "")
        )
        if not path:
            raise RuntimeError("no checkpoint to put in the bundle: enable ModelCheckpoint or pass ckpt_path")
        return str(path)

    def _export(
        self,
        trainer: L.Trainer,
        pl_module: Any,
        embeddings: np.ndarray,
        checkpoint: str,
        latest_link: str | None,
    ) -> None:
        self.written = export_bundle(
            pl_module,
            trainer.datamodule,
            embeddings,
            self.index_builder,
            self.bundle_dir,
            checkpoint,
            self.run_config,
            self._metrics(trainer),
            latest_link,
            self.recall_queries,
        )

    def _metrics(self, trainer: L.Trainer) -> dict[str, float]:
        metrics = self.metrics if self.metrics is not None else trainer.callback_metrics
        return {k: float(v) for k, v in metrics.items() if not k.startswith("train/")}

    def write_on_epoch_end(
        self, trainer: L.Trainer, pl_module: Any, predictions: list, batch_indices: Any
    ) -> None:
        items = (
            torch.cat([p["items"] for p in predictions]) if predictions else torch.zeros(0, dtype=torch.long)
        )
        vectors = (
            torch.cat([p["vectors"] for p in predictions])
            if predictions
            else torch.zeros(0, pl_module.item_tower.output_dim)
        )  # [n_local, D]
        if trainer.world_size > 1:
            items, vectors = self._gather(pl_module, items, vectors)
        if not trainer.is_global_zero:
            return
        embeddings = np.zeros((pl_module._catalog_size, vectors.shape[1]), np.float32)
        embeddings[items.cpu().numpy()] = vectors.float().cpu().numpy()
        self._export(trainer, pl_module, embeddings, self._checkpoint(trainer), self.latest_link)

    @staticmethod
    def _gather(
        pl_module: Any, items: torch.Tensor, vectors: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """All ranks' rows (ranks hold different numbers of rows, so pad to the longest first)."""
        device = pl_module.device
        items, vectors = items.to(device), vectors.float().to(device)
        longest = int(pl_module.all_gather(torch.tensor([len(items)], device=device)).max())
        padded_items = torch.full((longest,), -1, dtype=torch.long, device=device)
        padded_items[: len(items)] = items
        padded_vectors = torch.zeros(longest, vectors.shape[1], device=device)
        padded_vectors[: len(vectors)] = vectors
        all_items = pl_module.all_gather(padded_items).reshape(-1)  # [world * longest]
        all_vectors = pl_module.all_gather(padded_vectors).reshape(
            -1, vectors.shape[1]
        )  # [world * longest, D]
        keep = all_items >= 0
        return all_items[keep], all_vectors[keep]

    # ModelCheckpoint runs after every other callback's epoch-end hook, so a new best is seen one hook later:
    # at the next epoch's start or at the end of fit, when the weights are still those of that best epoch.
    def on_train_start(self, trainer: L.Trainer, pl_module: Any) -> None:
        # a resumed run restores its best path with weights that may be newer: refresh only on a new best
        self._last_best = getattr(trainer.checkpoint_callback, "best_model_path", "") or None

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: Any) -> None:
        self._refresh_if_new_best(trainer, pl_module)

    def on_fit_end(self, trainer: L.Trainer, pl_module: Any) -> None:
        self._refresh_if_new_best(trainer, pl_module)

    def _refresh_if_new_best(self, trainer: L.Trainer, pl_module: Any) -> None:
        best = getattr(trainer.checkpoint_callback, "best_model_path", "")
        if not self.refresh_on_best or not best or best == self._last_best:
            return
        self._last_best = best
        if trainer.is_global_zero:
            embeddings = pl_module.embed_catalog().float().cpu().numpy()
            self._export(trainer, pl_module, embeddings, best, latest_link=None)


class EmbeddingProjector(Callback):
    """After testing, log a sample of product vectors labelled with their titles to TensorBoard's projector."""

    def __init__(self, num_items: int = 1000, seed: int = 0) -> None:
        self.num_items, self.seed = num_items, seed

    def on_test_end(self, trainer: L.Trainer, pl_module: Any) -> None:
        loggers = [lg for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)]
        if not loggers or not trainer.is_global_zero:
            return
        catalog = trainer.datamodule.catalog
        rng = np.random.default_rng(self.seed)
        picks = np.sort(rng.choice(len(catalog), size=min(self.num_items, len(catalog)), replace=False))
        with torch.no_grad():
            vectors = pl_module.embed_items(torch.as_tensor(picks, device=pl_module.device)).float().cpu()
        labels = [
            [
                catalog.titles[i] or catalog.product_ids[i],
                catalog.categories[i] or "-",
                catalog.brands[i] or "-",
            ]
            for i in picks
        ]
        loggers[0].experiment.add_embedding(
            vectors,
            metadata=labels,
            metadata_header=["title", "category", "brand"],
            tag="products",
            global_step=trainer.global_step,
        )
