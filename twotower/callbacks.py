"""Callbacks: gather the catalog's item vectors for bundle export; TensorBoard embedding projector."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import BasePredictionWriter, Callback
from lightning.pytorch.loggers import TensorBoardLogger
from torch.utils.data import Dataset

from twotower.retrieval.export import ExportSettings, export_bundle
from twotower.retrieval.index import IndexBuilder

if TYPE_CHECKING:
    from twotower.data.datamodule import TwoTowerDataModule
    from twotower.model.module import TwoTowerModule

log = logging.getLogger(__name__)


def held_out_dataset(datamodule: TwoTowerDataModule) -> Dataset:
    """The examples whose buyer vectors measure an index's recall: val, else test, else train."""
    for split in ("val", "test"):
        dataset = datamodule.dataset(split)
        if len(dataset):
            return dataset
    return datamodule.dataset("train")


class BundleExporter(BasePredictionWriter):
    """Gathers the catalog's item vectors from Lightning predict (sharded across ranks) onto rank 0.

    ``python -m twotower.train`` and ``python -m twotower.export`` call :meth:`predict_embeddings`, then
    :func:`~twotower.retrieval.export.export_bundle`. With ``refresh_on_best``, this callback itself
    exports the bundle at the end of every epoch that sets a new best checkpoint (``run_config`` is then
    the manifest's config; ``twotower.assembly.build_run`` passes it).
    """

    def __init__(
        self,
        index: IndexBuilder,
        settings: ExportSettings,
        refresh_on_best: bool = False,
        run_config: dict | None = None,
    ) -> None:
        super().__init__(write_interval="epoch")
        self.index, self.settings = index, settings
        self.refresh_on_best, self.run_config = refresh_on_best, run_config
        self._gathered: np.ndarray | None = None
        self._last_best: str | None = None

    def predict_embeddings(
        self,
        trainer: L.Trainer,
        module: TwoTowerModule,
        datamodule: L.LightningDataModule,
        ckpt_path: str | None = None,
    ) -> np.ndarray | None:
        """Item vectors ``[N, D]`` of the datamodule's catalog on rank 0 (``None`` on other ranks)."""
        if self not in trainer.callbacks:
            raise ValueError("this BundleExporter is not among the trainer's callbacks: add it to gather")
        self._gathered = None
        trainer.predict(module, datamodule=datamodule, ckpt_path=ckpt_path, return_predictions=False)
        embeddings, self._gathered = self._gathered, None
        return embeddings

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
        embeddings = np.zeros((pl_module.catalog_size, vectors.shape[1]), np.float32)
        embeddings[items.cpu().numpy()] = vectors.float().cpu().numpy()
        self._gathered = embeddings

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
            datamodule = trainer.datamodule
            export_bundle(
                pl_module,
                datamodule.catalog,
                best,
                index=self.index,
                settings=self.settings,
                run_config=self.run_config or {},
                metrics={k: float(v) for k, v in trainer.callback_metrics.items()},
                counts=datamodule.report.counts(),
                recall_dataset=held_out_dataset(datamodule),
                val_dataset=datamodule.dataset("val"),
                move_latest=False,  # refreshes do not move outputs/latest
            )


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
