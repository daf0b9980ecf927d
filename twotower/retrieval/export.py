"""Bundle export as one plain function: item vectors + index + checkpoint + config -> a bundle directory.

``python -m twotower.train``, ``python -m twotower.export`` and the ``BundleExporter`` callback (its
``refresh_on_best``) all call :func:`export_bundle`; nothing is passed by setting attributes on objects.
Every bundle's manifest has one config shape, checked here (:func:`check_manifest_config`): ``config.data``
(the data config, with its ``_target_``) and ``config.model`` with its ``text_encoder`` node, which
``twotower.evaluate`` and ``twotower.serve`` read back through ``Bundle``'s accessors.

The served scoring settings (seen-item exclusion, repeat score, cap; :mod:`twotower.scoring`) are chosen
here on the validation split with the new item vectors and recorded as ``manifest["scoring"]`` (what
``/retrieve`` uses by default and ``twotower.evaluate`` ranks every method with), with the val figures of the
choice under ``manifest["scoring_choice"]``. The other exclusion setting's best on val is recorded too
(``manifest["scoring_other_exclusion"]``): a request that overrides the exclusion is served with it.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from twotower.data.batches import HistoryBatch
from twotower.data.catalog import Catalog
from twotower.retrieval.bundle import point_latest, write_bundle
from twotower.retrieval.index import IndexBuilder
from twotower.scoring import MANIFEST_KEY as SCORING_KEY
from twotower.scoring import OTHER_EXCLUSION_KEY, ScoringSettings, item_features

if TYPE_CHECKING:
    from twotower.data.datamodule import HistoryDataset
    from twotower.model.module import TwoTowerModule

log = logging.getLogger(__name__)

MODEL_TARGET = "twotower.model.module.TwoTowerModule"
# Module arguments computed from the data and the encoder at build time, not model settings: left out of
# the manifest's model config (the vocabularies alone can be megabytes; the checkpoint keeps them).
_RUNTIME_HPARAMS = (
    "text_dim", "brand_vocab", "category_vocab", "item_vocab", "text_encoder", "text_encoder_config",
)  # fmt: skip
# checkpoints store the tower nodes as plain dicts; the config tree builds them through these targets
_TOWER_TARGETS = {
    "item_tower": "twotower.model.item_tower.ItemTowerConfig",
    "buyer_tower": "twotower.model.buyer_tower.BuyerTowerConfig",
}


@dataclass(frozen=True)
class ExportSettings:
    """Where bundles go (``conf/exporter/default.yaml``, shared by train, export and the callback).

    Args:
        bundle_dir: the bundle directory to write (replaced atomically).
        latest_link: a symlink switched to each newly exported bundle (``None``: no link).
        recall_queries: held-out buyers whose vectors measure the index's recall@10 against exact search.
        scoring_default: the scoring settings recorded when none can be chosen (no val examples).
        scoring_grid: scoring fields -> values tried on val when seen items are allowed (both exclusion
            settings are always tried); ``None``: exclusion on/off only.
        scoring_queries: at most this many val queries (seeded sample) choose the settings; 0 = do not
            choose, record ``scoring_default``.
        scoring_k: the settings maximize val recall@scoring_k.
    """

    bundle_dir: str
    latest_link: str | None = None
    recall_queries: int = 2000
    scoring_default: Mapping[str, Any] = field(default_factory=dict)
    scoring_grid: Mapping[str, Any] | None = None
    scoring_queries: int = 20_000
    scoring_k: int = 10
    scoring_seed: int = 0

    def __post_init__(self) -> None:
        for name in ("recall_queries", "scoring_queries"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"exporter.{name} must be an integer >= 0, got {value!r}")
        if self.scoring_k < 1:
            raise ValueError(f"exporter.scoring_k must be >= 1, got {self.scoring_k}")
        try:
            self.default_scoring()
        except (TypeError, ValueError) as error:
            raise ValueError(f"exporter.scoring_default: {error}") from error
        known = set(ScoringSettings().to_dict())
        grid = self.grid()
        bad = sorted(set(grid or {}) - known)
        if bad or not all(isinstance(v, list) and v for v in (grid or {}).values()):
            raise ValueError(
                f"exporter.scoring_grid must map scoring fields ({sorted(known)}) to non-empty lists; "
                f"got {grid!r}"
            )

    def default_scoring(self) -> ScoringSettings:
        return ScoringSettings.from_dict(dict(self.scoring_default or {}))

    def grid(self) -> dict[str, list] | None:
        if self.scoring_grid is None:
            return None
        return {str(k): list(v) if not isinstance(v, str) else v for k, v in dict(self.scoring_grid).items()}


def model_config_from_hparams(hparams: Mapping[str, Any]) -> dict[str, Any]:
    """The model config node a checkpoint's hyperparameters describe, ``text_encoder`` node included.

    Used where only a checkpoint is at hand (``python -m twotower.export``), so that its manifest has the
    shape of a training run's: ``{_target_, text_encoder: {_target_, ...}, item_tower, buyer_tower, ...}``.
    """
    encoder = hparams.get("text_encoder_config")
    if not isinstance(encoder, Mapping) or "_target_" not in encoder:
        raise ValueError(
            "the checkpoint records no text_encoder_config with a _target_: it was not written by "
            "`python -m twotower.train`, so the text encoder to embed new products with is unknown"
        )
    config = {k: v for k, v in hparams.items() if k not in _RUNTIME_HPARAMS}
    for key, target in _TOWER_TARGETS.items():
        if isinstance(config.get(key), Mapping):
            config[key] = {"_target_": target, **{k: v for k, v in config[key].items() if k != "_target_"}}
    return {"_target_": MODEL_TARGET, **config, "text_encoder": dict(encoder)}


def check_manifest_config(config: Mapping[str, Any]) -> None:
    """Raise unless ``config`` has the manifest shape: ``data`` and ``model.text_encoder`` with ``_target_``."""
    data, model = config.get("data"), config.get("model")
    encoder = model.get("text_encoder") if isinstance(model, Mapping) else None
    problems = []
    if not isinstance(data, Mapping) or "_target_" not in data:
        problems.append("config.data (with a _target_)")
    if not isinstance(encoder, Mapping) or "_target_" not in encoder:
        problems.append("config.model.text_encoder (with a _target_)")
    if problems:
        raise ValueError(
            f"the bundle's run config lacks {' and '.join(problems)}, which evaluate and serve read back; "
            "pass the resolved run config (for a checkpoint alone, model_config_from_hparams builds `model`)"
        )


def _collate(batch: HistoryBatch | list[HistoryBatch]) -> HistoryBatch:
    # a dataset that gathers whole batches itself returns one HistoryBatch; others a list of one-example rows
    return batch if isinstance(batch, HistoryBatch) else HistoryBatch.stack(batch)


def held_out_buyer_vectors(
    module: TwoTowerModule, dataset: Dataset, item_vectors: torch.Tensor, limit: int
) -> np.ndarray:
    """Buyer vectors ``[n, D]`` of up to ``limit`` examples of ``dataset``, evenly spread (recall queries).

    ``dataset`` yields ``HistoryBatch``es: a whole batch from ``__getitems__`` (``HistoryDataset``), or one
    example per ``__getitem__``."""
    if limit < 1 or len(dataset) == 0:
        return np.zeros((0, item_vectors.shape[1]), np.float32)
    picks = np.linspace(0, len(dataset) - 1, num=min(limit, len(dataset))).astype(np.int64).tolist()
    # One batch through a DataLoader, which uses the dataset's own batching where it has one
    # (HistoryDataset gathers a whole batch at once) and stacks one-example rows otherwise.
    loader = DataLoader(dataset, batch_size=len(picks), sampler=picks, collate_fn=_collate)
    batch = next(iter(loader))
    device = item_vectors.device
    with torch.no_grad():
        buyers = module.embed_buyers(
            batch.history_items.to(device),
            batch.history_weights.to(device),
            batch.history_mask.to(device),
            item_vectors,
            None if batch.history_gaps is None else batch.history_gaps.to(device),
        )
    return buyers.float().cpu().numpy()


def choose_bundle_scoring(
    module: TwoTowerModule,
    embeddings: np.ndarray,
    val_dataset: HistoryDataset | None,
    settings: ExportSettings,
    catalog_features: np.ndarray | None = None,
) -> dict[str, Any]:
    """The manifest entries ``scoring`` (the served settings), ``scoring_other_exclusion`` (the settings for
    requests that set the other exclusion) and ``scoring_choice`` (how they were chosen):
    the model's best on (a seeded sample of) the val split by recall@k, over both exclusion settings and
    ``settings.grid()``, ranking exactly over the new item vectors (``catalog_features``: the bundle catalog's
    ``item_features``, as the service will use them); ``settings.scoring_default`` when there
    are no val examples (e.g. a new catalog exported without events) or ``scoring_queries=0``."""
    # imported here: the evaluation package (and the datamodule's Lightning) only when a choice is made
    from twotower.data.datamodule import HistoryDataset
    from twotower.evaluation.queries import split_queries
    from twotower.evaluation.rankers import ModelRanker
    from twotower.evaluation.tuning import choose_served_settings

    default = settings.default_scoring()
    available = 0 if val_dataset is None else len(val_dataset)
    if not available or settings.scoring_queries == 0:
        reason = "scoring_queries=0" if available else "no validation examples"
        log.info("scoring: %s; recording the configured default (%s)", reason, default.describe())
        return {SCORING_KEY: default.to_dict(), "scoring_choice": {"source": "default", "reason": reason}}
    assert val_dataset is not None
    positions = np.asarray(val_dataset.positions, dtype=np.int64)
    if len(positions) > settings.scoring_queries:
        rng = np.random.default_rng(settings.scoring_seed)
        positions = np.sort(rng.choice(positions, settings.scoring_queries, replace=False))
    events, max_history = val_dataset.events, val_dataset.max_history
    weights = val_dataset.weights_by_event
    dataset = HistoryDataset(events, positions, max_history, weights)
    # the bundle's catalog is the data's: catalog rows are the events' item indices
    queries = split_queries(
        events, positions, dataset, np.arange(len(embeddings)), max_history, weights, catalog_features
    )
    # a CPU copy: ModelRanker switches its tower to eval mode, and a training run's tower must not change
    tower = copy.deepcopy(module.buyer_tower).cpu()
    ranker = ModelRanker(tower, np.asarray(embeddings, dtype=np.float32))
    chosen, trace = choose_served_settings(ranker, queries, settings.grid(), k=settings.scoring_k)
    other = trace.pop("other_exclusion", None)  # recorded once, beside the served settings (not in the trace)
    log.info(
        "scoring: chose %s on %d val queries (%s %.4f)", chosen.describe(), len(queries), trace["metric"],
        trace["chosen"],
    )  # fmt: skip
    return {
        SCORING_KEY: chosen.to_dict(),
        **({OTHER_EXCLUSION_KEY: other} if other is not None else {}),
        "scoring_choice": {
            "source": "val",
            "queries": len(queries),
            "val_queries": available,
            "seed": settings.scoring_seed,
            **trace,
        },
    }


def export_bundle(
    module: TwoTowerModule,
    catalog: Catalog,
    checkpoint_path: str | Path,
    *,
    index: IndexBuilder,
    settings: ExportSettings,
    run_config: Mapping[str, Any],
    metrics: Mapping[str, float] | None = None,
    counts: Mapping[str, int] | None = None,
    embeddings: np.ndarray | None = None,
    recall_dataset: Dataset | None = None,
    val_dataset: HistoryDataset | None = None,
    move_latest: bool = True,
) -> Path:
    """Embed ``catalog`` with ``module`` (or take its ``embeddings [N, D]``), index it, write the bundle.

    Args:
        module: the trained module, with ``catalog`` attached (``module.catalog_size == len(catalog)``).
        catalog: the products of the bundle, row i = embedding row i.
        checkpoint_path: the checkpoint copied into the bundle (the one ``module`` was loaded from).
        index: the index to build over the item vectors (``index=auto`` picks flat or hnsw by size).
        settings: bundle directory, latest link, number of recall queries.
        run_config: the resolved run config for the manifest; checked by :func:`check_manifest_config`.
        metrics: final metrics recorded in the manifest (``train/`` keys are left out).
        counts: data counts recorded in the manifest (``DataReport.counts()``).
        embeddings: item vectors already computed (e.g. sharded across ranks by the callback); by default
            ``module.embed_catalog()``.
        recall_dataset: held-out examples whose buyer vectors measure the index's recall@10 vs exact.
        val_dataset: the validation examples that choose the served scoring settings
            (:func:`choose_bundle_scoring`); None: the configured default is recorded.
        move_latest: switch ``settings.latest_link`` to the new bundle.

    Returns the bundle directory.

    Example:
        >>> export_bundle(module, datamodule.catalog, "best.ckpt", index=IndexBuilder("auto"),
        ...               settings=ExportSettings("outputs/b1"), run_config=config)  # doctest: +SKIP
    """
    check_manifest_config(run_config)
    if module.catalog_size != len(catalog):
        raise ValueError(
            f"the module has {module.catalog_size} products attached but the catalog has {len(catalog)}: "
            "attach the catalog being exported (module.attach_catalog(catalog))"
        )
    if embeddings is None:
        embeddings = module.embed_catalog().float().cpu().numpy()
    built = index.build(embeddings)
    if recall_dataset is not None and settings.recall_queries > 0:
        vectors = torch.from_numpy(np.ascontiguousarray(embeddings, dtype=np.float32)).to(module.device)
        queries = held_out_buyer_vectors(module, recall_dataset, vectors, settings.recall_queries)
        if len(queries):
            built.measure_recall(queries, k=10)
    scoring = choose_bundle_scoring(module, embeddings, val_dataset, settings, item_features(catalog))
    path = write_bundle(
        settings.bundle_dir,
        embeddings=embeddings,
        catalog=catalog,
        index=built,
        checkpoint_path=checkpoint_path,
        config=dict(run_config),
        metrics={k: float(v) for k, v in (metrics or {}).items() if not k.startswith("train/")},
        counts=dict(counts or {}),
        text_encoder_id=getattr(module.encoder, "id", None),
        scoring=scoring,
    )
    if move_latest and settings.latest_link:
        point_latest(settings.latest_link, path)
        log.info("%s -> %s", settings.latest_link, path)
    return path
