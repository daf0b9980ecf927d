"""LightningDataModule over the data layer: padded histories, event weights, masks and targets."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import lightning as L
import numpy as np
from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler
from lightning.pytorch.strategies import ParallelStrategy
from torch.utils.data import DataLoader, Dataset

from twotower.data.batches import HistoryBatch, LengthBucketBatchSampler, SequenceDataset, build_windows
from twotower.data.catalog import Catalog, load_catalog
from twotower.data.io import DEFAULT_CHUNKSIZE, DEFAULT_ENCODING
from twotower.data.report import DataReport
from twotower.data.schema import EventSchema
from twotower.data.sequences import (
    EventLog,
    Examples,
    build_examples,
    check_buyer_fraction,
    gather_histories,
    item_counts,
    item_recent_counts,
    item_repeat_counts,
    load_events,
)

log = logging.getLogger(__name__)


class HistoryDataset(Dataset):
    """Next-item examples; `__getitems__` builds a whole batch with one vectorized gather."""

    def __init__(
        self, events: EventLog, positions: np.ndarray, max_history: int, weights_by_event: np.ndarray
    ):
        self.events, self.positions = events, positions
        self.max_history, self.weights_by_event = max_history, weights_by_event

    def __len__(self) -> int:
        return len(self.positions)

    def __getitems__(self, indices: Sequence[int]) -> HistoryBatch:
        return gather_histories(
            self.events,
            self.positions[np.asarray(indices, dtype=np.int64)],
            self.max_history,
            self.weights_by_event,
            trim=True,
        )

    def __getitem__(self, index: int) -> HistoryBatch:
        return self.__getitems__([index])


def _batch_as_is(batch: object) -> object:
    return batch  # __getitems__ already collated the batch; module-level so workers can pickle it


class CatalogDataset(Dataset):
    """Item indices 0..N-1, for embedding the whole catalog with Lightning predict."""

    def __init__(self, num_items: int):
        self.num_items = num_items

    def __len__(self) -> int:
        return self.num_items

    def __getitem__(self, index: int) -> int:
        return index


class TwoTowerDataModule(L.LightningDataModule):
    """Loads products and events once, builds causal examples per split, serves padded batches."""

    def __init__(
        self,
        events_path: str,
        products_path: str,
        photos_path: str | None = None,
        sample: dict | None = None,
        event_weights: dict[str, float] | None = None,
        event_aliases: dict[str, list[str]] | None = None,
        target_event_types: Sequence[str] = ("view", "add_to_cart", "purchase"),
        max_history: int = 100,
        split_method: str = "temporal",
        val_cut: float | str = 0.8,
        test_cut: float | str = 0.9,
        batch_size: int = 256,
        eval_batch_size: int = 1024,
        sequence_training: bool = True,
        sequence_batch_size: int = 32,
        num_workers: int = 0,
        chunksize: int = DEFAULT_CHUNKSIZE,
        report_path: str | None = None,
        encoding: str = DEFAULT_ENCODING,
        buyer_fraction: float = 1.0,
    ) -> None:
        super().__init__()
        self.buyer_fraction = check_buyer_fraction(buyer_fraction)  # at start-up, before any data is read
        if max_history < 1:
            raise ValueError(f"data.max_history must be >= 1, got {max_history}")
        if batch_size < 1 or eval_batch_size < 1:
            raise ValueError(
                f"data.batch_size and data.eval_batch_size must be >= 1, got {batch_size}, {eval_batch_size}"
            )
        self.events_path, self.products_path, self.photos_path = events_path, products_path, photos_path
        self.sample = dict(sample) if sample else None
        self.schema = EventSchema(weights=dict(event_weights or {}), aliases=dict(event_aliases or {}))
        self.target_event_types = list(target_event_types)
        self.schema.type_codes(self.target_event_types)  # fail at start-up on a bad type name
        self.max_history = max_history
        self.split_method, self.val_cut, self.test_cut = split_method, val_cut, test_cut
        if sequence_batch_size < 1:
            raise ValueError(f"data.sequence_batch_size must be >= 1, got {sequence_batch_size}")
        self.batch_size, self.eval_batch_size, self.num_workers = batch_size, eval_batch_size, num_workers
        # sequence_training: batches of buyer-sequence windows, every next-item target of a window in one pass
        self.sequence_training, self.sequence_batch_size = sequence_training, sequence_batch_size
        self.chunksize, self.report_path, self.encoding = chunksize, report_path, encoding
        self.report = DataReport()
        self.catalog: Catalog | None = None
        self.events: EventLog | None = None
        self.examples: Examples | None = None
        self.train_item_counts: np.ndarray | None = None

    # -- loading ---------------------------------------------------------------------------------
    def prepare_data(self) -> None:
        if self.sample is not None:
            from twotower.data.sample import ensure_sample

            ensure_sample(Path(self.events_path).parent, **self.sample)

    def setup(self, stage: str | None = None) -> None:
        if self.catalog is not None:
            return
        if self.sample is not None and not Path(self.events_path).exists():
            self.prepare_data()  # used without a Trainer (tests, notebooks, evaluate)
        is_main = self.trainer is None or self.trainer.is_global_zero
        self.catalog = load_catalog(
            self.products_path, self.photos_path, self.report, self.chunksize, encoding=self.encoding
        )
        self.events = load_events(
            self.events_path,
            self.catalog,
            self.schema,
            self.report,
            self.chunksize,
            show_progress=is_main,
            encoding=self.encoding,
        )
        if self.buyer_fraction < 1:  # a quick run (e.g. a hyperparameter search) on a seeded share of buyers
            kept = self.events.keep_buyers(self.buyer_fraction)
            self.report.drop("events.buyer_fraction", len(self.events) - len(kept))
            self.events = kept
        self.examples = build_examples(
            self.events, self.schema, self.target_event_types, self.split_method, self.val_cut, self.test_cut
        )
        train = self.examples.train_events
        self.train_item_counts = item_counts(self.events, train, len(self.catalog))
        self.catalog.popularity = self.train_item_counts
        self.catalog.repeats = item_repeat_counts(self.events, train, len(self.catalog))
        self.catalog.recent_popularity = item_recent_counts(self.events, train, len(self.catalog))
        self.report.examples = {name: int(len(p)) for name, p in self.examples.positions.items()}
        self.report.cold_items = int(self.cold_items.sum())
        self.report.split = self.examples.cuts
        if not len(self.examples.positions["train"]):
            raise ValueError(
                f"no training examples: every eligible target falls after val_cut ({self.examples.cuts}); "
                "move data.val_cut later or check the timestamps"
            )
        if is_main:
            log.info(self.report.summary())
            if self.report_path:
                self.report.save(self.report_path)

    @property
    def num_items(self) -> int:
        assert self.catalog is not None, "call setup() first"
        return len(self.catalog)

    @property
    def cold_items(self) -> np.ndarray:
        """bool [num_items]: never seen in training-period events."""
        return self.train_item_counts == 0

    def dataset(self, split: str) -> HistoryDataset:
        assert self.events is not None and self.examples is not None, "call setup() first"
        return HistoryDataset(
            self.events, self.examples.positions[split], self.max_history, self.schema.weight_array
        )

    # -- loaders ---------------------------------------------------------------------------------
    def _loader(self, dataset: Dataset, batch_size: int, shuffle: bool, collate=_batch_as_is) -> DataLoader:
        sampler = None
        if not shuffle and self.trainer is not None and self.trainer.world_size > 1:
            # Evaluation must see each example exactly once across ranks, or synced metrics are biased.
            sampler = UnrepeatedDistributedSampler(
                dataset, self.trainer.world_size, self.trainer.global_rank, False
            )
        return DataLoader(
            dataset,
            batch_size=batch_size,
            shuffle=shuffle,
            sampler=sampler,
            num_workers=self.num_workers,
            collate_fn=collate,
            persistent_workers=self.num_workers > 0,
        )

    def _distributed(self) -> bool:
        """Whether Lightning will inject a distributed sampler: under any parallel strategy (DDP), even with
        one process (`trainer=ddp trainer.devices=1`), and it can't wrap the length-bucket batch sampler."""
        return self.trainer is not None and (
            self.trainer.world_size > 1 or isinstance(self.trainer.strategy, ParallelStrategy)
        )

    def sequence_dataset(self, split: str = "train") -> SequenceDataset:
        """Windows of max_history events holding every `split` target (see build_windows)."""
        assert self.events is not None and self.examples is not None, "call setup() first"
        windows = build_windows(self.events, self.examples.positions[split], max(2, self.max_history))
        return SequenceDataset(self.events, windows, self.schema.weight_array)

    def train_dataloader(self) -> DataLoader:
        if self.sequence_training:
            dataset = self.sequence_dataset("train")
            if self._distributed():  # Lightning's distributed sampler shards the windows
                return self._loader(dataset, self.sequence_batch_size, shuffle=True)
            lengths = dataset.windows.end - dataset.windows.start
            return DataLoader(
                dataset,
                batch_sampler=LengthBucketBatchSampler(lengths, self.sequence_batch_size),
                num_workers=self.num_workers,
                collate_fn=_batch_as_is,
                persistent_workers=self.num_workers > 0,
            )
        return self._loader(self.dataset("train"), self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.dataset("val"), self.eval_batch_size, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.dataset("test"), self.eval_batch_size, shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader(CatalogDataset(self.num_items), self.eval_batch_size, shuffle=False, collate=None)
