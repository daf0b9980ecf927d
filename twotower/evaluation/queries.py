"""A split's queries: ranker batches (``HistoryBatch``es as the datamodule yields them, in the bundle's item
order) and the scoring function's history input (rows, event weights, times, the target's time as "now")."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from twotower.data.batches import HistoryBatch
from twotower.data.catalog import Catalog
from twotower.retrieval.bundle import BundleError
from twotower.scoring import History

__all__ = ["SplitQueries", "catalog_mapping", "split_queries"]


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


def check_referenced(mapping: np.ndarray, items: np.ndarray, catalog: Catalog, bundle_path: Path) -> None:
    absent = np.unique(items[mapping[items] < 0])
    if len(absent):
        ids = [catalog.product_ids[i] for i in absent[:10]]
        raise BundleError(
            f"the evaluation data references {len(absent)} products that the bundle {bundle_path} does not contain "
            f"(e.g. {ids}); evaluate on the data the bundle was trained on, or re-export the bundle over this "
            "catalog with `python -m twotower.export`"
        )


@dataclass
class SplitQueries:
    """Every query of one split. ``history`` rows are the ranker batches' histories, as a served request."""

    dataset: Any  # HistoryDataset of the split (ranker batches)
    mapping: np.ndarray  # data item index -> bundle row
    history: History  # [Q, L] bundle rows, event weights, epoch seconds, now = the target's time
    targets: np.ndarray  # int64 [Q] bundle rows
    history_length: np.ndarray  # int64 [Q] events before the target (all, not only the last max_history)
    # the bundle catalog's item_features [N, 3] (training-period statistics) for the learned repeat score
    catalog_features: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.targets)

    @property
    def repeat(self) -> np.ndarray:
        """bool [Q]: the target is already in the history input (evaluate's definition of a repeat)."""
        return ((self.history.items == self.targets[:, None]) & self.history.mask).any(axis=1)

    def batches(self, batch_size: int) -> Iterator[tuple[np.ndarray, HistoryBatch, History]]:
        """``(query indices, ranker batch, history)`` per batch, item indices (history and target) in the
        bundle's order."""
        for start in range(0, len(self), batch_size):
            index = np.arange(start, min(start + batch_size, len(self)))
            yield index, self.dataset.__getitems__(index).map_items(self.mapping), self.history.take(index)


def split_queries(
    events: Any,
    positions: np.ndarray,
    dataset: Any,
    mapping: np.ndarray,
    max_history: int,
    weights_by_event: np.ndarray,
    catalog_features: np.ndarray | None = None,
) -> SplitQueries:
    """The queries of target ``positions`` in ``events`` (an ``EventLog``), histories cut as training cuts them
    (the ``max_history`` latest events strictly before the target's time). ``catalog_features``: the bundle
    catalog's :func:`twotower.scoring.item_features`, what the service gives the learned repeat score."""
    positions = np.asarray(positions, dtype=np.int64)
    end = events.history_end[positions]  # [Q]
    first = events.buyer_start[events.buyer[positions]]  # [Q]
    start = np.maximum(first, end - max_history)
    width = max(1, int((end - start).max())) if len(positions) else 1
    index = end[:, None] + np.arange(-width, 0, dtype=np.int64)[None, :]  # [Q, L], right-aligned
    mask = index >= start[:, None]
    index = np.where(mask, index, 0)
    history = History(
        items=np.where(mask, mapping[events.item[index]], 0),
        mask=mask,
        weights=np.where(mask, weights_by_event[events.event[index]], 0.0).astype(np.float32),
        times=np.where(mask, events.timestamp[index] / 1e6, np.nan),
        now=events.timestamp[positions] / 1e6,
    )
    return SplitQueries(
        dataset=dataset,
        mapping=mapping,
        history=history,
        targets=mapping[events.item[positions]].astype(np.int64),
        history_length=end - first,
        catalog_features=catalog_features,
    )
