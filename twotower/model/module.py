"""TwoTowerModule: the towers, softmax training (full-catalog or sampled), full-catalog ranking metrics and
text retention. (Over the ~300-line guideline: the training objective - training_step and the text
alignment loss - is the part to move into its own module next.)"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor

from twotower.data.batches import HistoryBatch, SequenceBatch
from twotower.data.catalog import Catalog, Vocabulary
from twotower.evaluation.metrics import RetrievalMetrics, topk_scores_chunked
from twotower.model.buyer_tower import BuyerTower, BuyerTowerConfig
from twotower.model.item_tower import ItemTower, ItemTowerConfig
from twotower.model.losses import (
    MASK_VALUE,
    InfoNCELoss,
    item_log_q,
    mixed_log_q,
    sample_negatives,
)
from twotower.model.retention import Retention, default_noise, retention_queries, text_retention
from twotower.text.cache import TextFeatureCache

log = logging.getLogger(__name__)

# Checkpoints written before the hybrid tower store item_tower dicts without these keys: they meant this.
LEGACY_ITEM_TOWER = {"id_embedding": 0, "id_dropout": 0.0, "use_text": True, "text_residual": False}


def tower_config(kind: type, value: Any, key: str) -> Any:
    """An ItemTowerConfig/BuyerTowerConfig from a config object or a plain dict (a checkpoint's hparams)."""
    if value is None:
        return kind()
    if isinstance(value, kind):
        return value
    options = {k: v for k, v in dict(value).items() if not str(k).startswith("_")}
    if kind is ItemTowerConfig:
        options = {**LEGACY_ITEM_TOWER, **options}
    try:
        return kind(**options)
    except TypeError as error:
        valid = ", ".join(kind.__dataclass_fields__)
        raise ValueError(
            f"model.{key} {options} has a key that is not an option ({valid}): {error}"
        ) from error


class TwoTowerModule(L.LightningModule):
    """Item tower + buyer tower trained with InfoNCE over in-batch and sampled negatives.

    The catalog's item features (cached text vectors, brand and category indices) are attached in `setup`
    from the datamodule's catalog, so one checkpoint can embed any catalog: vocabularies travel in the
    hyperparameters and unseen brands/categories map to <UNK>.
    """

    def __init__(
        self,
        text_dim: int,
        brand_vocab: Sequence[str],
        category_vocab: Sequence[str],
        text_encoder: Any = None,
        text_encoder_config: dict | None = None,
        freeze_text_encoder: bool = True,
        item_tower: ItemTowerConfig | dict | None = None,
        buyer_tower: BuyerTowerConfig | dict | None = None,
        item_vocab: Sequence[str] | None = None,
        full_softmax_max_items: int = 20000,
        text_retention_queries: int = 1000,
        exclude_seen_in_loss: bool = False,
        text_alignment_weight: float = 0.0,
        text_alignment_items: int = 512,
        temperature: float = 0.07,
        num_negatives: int = 256,
        negative_sampling_alpha: float = 0.0,
        use_log_q_correction: bool = False,
        optimizer: Callable[..., torch.optim.Optimizer] | None = None,
        scheduler: Callable[..., Any] | None = None,
        k_values: Sequence[int] = (10, 50, 100),
        feature_cache_dir: str | None = ".cache/text_features",
    ) -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"model.temperature must be > 0, got {temperature}")
        if num_negatives < 0:
            raise ValueError(f"model.num_negatives must be >= 0, got {num_negatives}")
        if not k_values or min(k_values) < 1:
            raise ValueError(f"model.k_values must be positive integers, got {list(k_values)}")
        self.save_hyperparameters(ignore=["text_encoder", "optimizer", "scheduler"])
        self.item_config = tower_config(ItemTowerConfig, item_tower, "item_tower")
        buyer_config = tower_config(BuyerTowerConfig, buyer_tower, "buyer_tower")
        # plain dicts in the checkpoint: loadable with weights_only=True and by load_buyer_tower
        self.hparams["item_tower"], self.hparams["buyer_tower"] = (
            self.item_config.as_dict(),
            buyer_config.as_dict(),
        )
        self.brand_vocab, self.category_vocab = (
            Vocabulary(list(brand_vocab)),
            Vocabulary(list(category_vocab)),
        )
        # The ID vocabulary (product ids seen in training) is known once the training catalog is attached;
        # a checkpoint carries it in its hyperparameters. Until then the item tower has no ID embedding.
        self._build_item_tower(item_vocab)
        embedding_dim = self.item_tower.output_dim
        self.buyer_tower = BuyerTower(embedding_dim=embedding_dim, **buyer_config.as_dict())
        self.loss_fn = InfoNCELoss(temperature, use_log_q_correction=use_log_q_correction)
        self.fine_tune_text = not freeze_text_encoder
        if self.fine_tune_text:
            if text_encoder is None or not getattr(text_encoder, "trainable", False):
                raise ValueError(
                    "model.freeze_text_encoder=false needs a trainable text encoder (sentence-transformers); "
                    f"{getattr(text_encoder, 'id', text_encoder)!r} is frozen-only"
                )
            self.text_encoder = text_encoder  # registered: its weights train and are checkpointed
        else:
            object.__setattr__(self, "_frozen_text_encoder", text_encoder)  # kept out of state_dict
        self.optimizer_factory, self.scheduler_factory = optimizer, scheduler
        self.k_values = sorted(set(int(k) for k in k_values))
        self.max_k = max(self.k_values)
        self._catalog_size = 0
        self._item_embeddings: Tensor | None = None
        self._retention_inputs: tuple[Tensor, Tensor] | None = None
        self.last_text_retention: Retention | None = None
        self._epoch_examples, self._epoch_start = 0, time.perf_counter()
        self._retention_warned = False

    def _build_item_tower(self, item_vocab: Sequence[str] | None) -> None:
        config = self.item_config.as_dict()
        wants_ids = config["id_embedding"] > 0
        if wants_ids and item_vocab is None:
            config.update(id_embedding=0, use_text=True)  # placeholder until the vocabulary is known
        self.item_vocab = None if item_vocab is None else list(item_vocab)
        self._id_lookup = {pid: i + 1 for i, pid in enumerate(self.item_vocab or [])}  # 0 = reserved
        self.item_tower = ItemTower(
            self.hparams.text_dim,
            len(self.brand_vocab),
            len(self.category_vocab),
            num_ids=len(self._id_lookup) + 1 if item_vocab is not None else 0,
            **config,
        )

    # -- catalog features ----------------------------------------------------------------------
    @property
    def catalog_size(self) -> int:
        """Products of the attached catalog (0 before ``attach_catalog``)."""
        return self._catalog_size

    @property
    def encoder(self) -> Any:
        return self.text_encoder if self.fine_tune_text else self._frozen_text_encoder

    def attach_catalog(self, catalog: Catalog, item_counts: np.ndarray | None = None) -> None:
        """Attach a catalog's item features: cached text vectors (encoded once) + vocabulary indices."""
        self._catalog_size = len(catalog)
        self._texts, self._titles = catalog.texts, list(catalog.titles)
        if self.item_config.id_embedding > 0 and self.item_vocab is None and item_counts is not None:
            # first attach in training: the vocabulary is the items with training interactions
            vocab = [pid for pid, count in zip(catalog.product_ids, item_counts, strict=True) if count > 0]
            self._build_item_tower(vocab)
            self.item_tower.to(self.device)
            self.hparams["item_vocab"] = vocab
        ids = np.array([self._id_lookup.get(pid, 0) for pid in catalog.product_ids], dtype=np.int64)
        self.register_buffer("id_index", torch.from_numpy(ids), persistent=False)
        self._retention_inputs = None
        if not self.fine_tune_text:
            features = self._encode_texts_once(self._texts)
            if features.shape[1] != self.hparams.text_dim:
                raise ValueError(
                    f"text encoder gives {features.shape[1]}-d vectors but this model expects {self.hparams.text_dim}-d; "
                    "use the text encoder the checkpoint was trained with"
                )
            self.register_buffer("text_features", torch.from_numpy(features), persistent=False)
        self.register_buffer(
            "brand_index", torch.from_numpy(catalog.brand_indices(self.brand_vocab)), persistent=False
        )
        self.register_buffer(
            "category_index",
            torch.from_numpy(catalog.category_indices(self.category_vocab)),
            persistent=False,
        )
        counts = (
            np.ones(len(catalog), np.float32) if item_counts is None else np.asarray(item_counts, np.float32)
        )
        self.register_buffer("item_counts", torch.from_numpy(counts), persistent=False)
        self._item_embeddings = None

    def _encode_texts_once(self, texts: list[str]) -> np.ndarray:
        encoder = self.encoder
        if encoder is None:
            raise ValueError("no text encoder: pass model.text_encoder (see conf/model/text_encoder/)")
        if self.hparams.feature_cache_dir is None:
            return encoder.encode(texts, show_progress=True)
        cache = TextFeatureCache(self.hparams.feature_cache_dir)
        distributed = dist.is_available() and dist.is_initialized()
        if distributed and dist.get_rank() != 0:
            dist.barrier()  # rank 0 fills the cache first; the others then read it
        features = cache.encode(encoder, texts, show_progress=not distributed or dist.get_rank() == 0)
        if distributed and dist.get_rank() == 0:
            dist.barrier()
        return features

    def setup(self, stage: str) -> None:
        if self._trainer is not None and self.trainer.world_size > 1 and self.device.type == "cpu":
            # CPU DDP ranks share the cores: oversubscribed OpenMP threads stall every small op on barriers.
            local_ranks = max(1, self.trainer.world_size // max(1, self.trainer.num_nodes))
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // local_ranks))
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        if (
            datamodule is not None
            and getattr(datamodule, "catalog", None) is not None
            and self._catalog_size == 0
        ):
            self.attach_catalog(datamodule.catalog, datamodule.train_item_counts)

    # -- towers ----------------------------------------------------------------------------------
    def embed_items(self, items: Tensor) -> Tensor:
        """L2-normalized item vectors [n, D] for catalog item indices [n]."""
        if self._catalog_size == 0:
            raise RuntimeError(
                "no catalog attached: call attach_catalog() or run through a Trainer with the datamodule"
            )
        if self.fine_tune_text:
            text = self.text_encoder([self._texts[i] for i in items.tolist()])
        else:
            text = self.text_features[items]
        return self.item_tower(
            text.to(self.item_tower.dtype),
            self.brand_index[items],
            self.category_index[items],
            self.id_index[items],
        )

    def embed_buyers(
        self,
        history_items: Tensor,
        history_weights: Tensor,
        history_mask: Tensor,
        item_vectors: Tensor,
        history_gaps: Tensor | None = None,
    ) -> Tensor:
        """Buyer vectors [B, D] from history item indices [B, L] using precomputed item vectors [N, D]."""
        return self.buyer_tower.pool(item_vectors, history_items, history_weights, history_mask, history_gaps)

    @torch.no_grad()
    def embed_catalog(self, chunk_size: int = 8192) -> Tensor:
        """All item vectors [N, D] in eval mode."""
        was_training = self.training
        self.eval()
        index = torch.arange(self._catalog_size, device=self.device)
        vectors = torch.cat([self.embed_items(chunk) for chunk in index.split(chunk_size)])
        self.train(was_training)
        return vectors

    # -- training ---------------------------------------------------------------------------------
    def training_step(self, batch: HistoryBatch | SequenceBatch, batch_idx: int) -> Tensor:
        if isinstance(batch, SequenceBatch):
            history, weights, mask, gaps = batch.items, batch.weights, batch.mask, batch.gaps
        else:
            history, weights, mask = batch.history_items, batch.history_weights, batch.history_mask
            gaps = batch.history_gaps
        target = batch.target
        full = self._catalog_size <= self.hparams.full_softmax_max_items
        if full:
            # Full softmax: every catalog item is a candidate (one matmul), no sampling bias to correct.
            candidate_ids = torch.arange(self._catalog_size, device=self.device)
            negatives = candidate_ids[:0]
        else:
            negatives, _ = sample_negatives(
                self._catalog_size,
                self.hparams.num_negatives,
                item_counts=self.item_counts,
                alpha=self.hparams.negative_sampling_alpha,
            )
            negatives = negatives.to(self.device)
            candidate_ids = torch.cat([target, negatives])  # each row's positive, then the negatives
        # Run the item tower once over the unique items this batch touches.
        touched, inverse = torch.unique(torch.cat([history.flatten(), candidate_ids]), return_inverse=True)
        vectors = self.embed_items(touched)  # [U, D]
        history_index = inverse[: history.numel()].view(history.shape)
        candidates = vectors[inverse[history.numel() :]]  # [C, D]
        if isinstance(batch, SequenceBatch):
            # one causal pass per window; each target reads the output at its history's last position
            buyers = self.buyer_tower.forward_at(
                vectors[history_index], weights, mask, batch.query_window, batch.query_position, gaps
            )  # [T, D]
            query_history = history[batch.query_window]  # [T, L]
            query_mask = mask[batch.query_window] & (
                torch.arange(history.shape[1], device=self.device)[None, :] <= batch.query_position[:, None]
            )
        else:
            buyers = self.buyer_tower.pool(vectors, history_index, weights, mask, gaps)  # [B, D]
            query_history, query_mask = history, mask.bool()
        positive_column = torch.arange(len(target), device=self.device)  # sampled mode: row i's own target
        query_ids = target
        if self.hparams.exclude_seen_in_loss:
            # Explore-only objective: serving scores the buyer's own items separately (repeat score) and can
            # exclude them, so the model learns to rank *new* items: repeat targets are dropped and the
            # history's items are no negatives.
            seen = torch.zeros(len(target), self._catalog_size, dtype=torch.bool, device=self.device)
            # True at the history's items only. Scattering the mask would also write False for an item that
            # recurs after the query (the target itself, in its window) or for item 0 (padding); with such
            # duplicate indices the last write wins on the CPU and any one on CUDA.
            rows = torch.arange(len(target), device=self.device)[:, None].expand_as(query_history)
            seen[rows[query_mask], query_history[query_mask]] = True  # [T, N]
            new = ~seen.gather(1, target[:, None]).squeeze(1)
            if not bool(new.any()):
                return buyers.sum() * 0.0  # every target of this batch is a repeat: nothing to learn here
            buyers, target, seen, positive_column = buyers[new], target[new], seen[new], positive_column[new]
            # (sampled mode masks accidental hits but not the history's items among the negatives)
        if full:
            # the whole catalog on every rank already: no cross-rank gather, no logQ (nothing was sampled)
            logits = (buyers @ candidates.T).float() / self.hparams.temperature  # [T, N]
            # Items without training interactions are never positives: as ever-present negatives they would
            # only learn to score low, and cold items (text path only) would never be recommended.
            never_positive = (self.item_counts == 0).unsqueeze(0)  # [1, N]
            logits = logits.masked_fill(never_positive, MASK_VALUE)
            if self.hparams.exclude_seen_in_loss:
                logits = logits.masked_fill(seen, MASK_VALUE)
            loss = torch.nn.functional.cross_entropy(logits, target)
        else:
            log_q = None
            if self.hparams.use_log_q_correction:
                # positives arrive ∝ popularity, negatives ∝ popularity^alpha: correct by each one's expected count
                log_q = mixed_log_q(
                    item_log_q(self.item_counts, 1.0)[candidate_ids],
                    len(query_ids),
                    item_log_q(self.item_counts, self.hparams.negative_sampling_alpha)[candidate_ids],
                    len(negatives),
                )
            loss = self.loss_fn(
                buyers,
                candidates,
                positive_column,
                query_item_ids=target,
                candidate_item_ids=candidate_ids,
                candidate_log_q=log_q if self.hparams.use_log_q_correction else None,
            )
        if self.hparams.text_alignment_weight > 0 and self.item_tower.use_text:
            alignment = self._text_alignment_loss()
            self.log("train/text_alignment", alignment, on_step=False, on_epoch=True, batch_size=len(target))
            loss = loss + self.hparams.text_alignment_weight * alignment
        self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=True, batch_size=len(target))
        self._epoch_examples += len(target)
        return loss

    def _text_alignment_loss(self) -> Tensor:
        """Keeps text queries finding their items: a random set of catalog items' text-only embeddings (reserved
        ID, no brand/category, as a text query is embedded) must pick out their own full item vectors among
        the set (softmax over the set). This is what the text-retention metric measures."""
        count = min(self.hparams.text_alignment_items, self._catalog_size)
        items = torch.randperm(self._catalog_size, device=self.device)[:count]
        full = self.embed_items(items)  # [K, D] with IDs, brand, category
        text = self.text_features[items] if not self.fine_tune_text else None
        if text is None:
            return full.sum() * 0.0  # fine-tuned encoders: no cached text features to align
        queries = self.item_tower.text_path(text)  # [K, D]
        logits = (queries @ full.T).float() / self.hparams.temperature
        return torch.nn.functional.cross_entropy(logits, torch.arange(count, device=self.device))

    def on_train_epoch_start(self) -> None:
        self._epoch_examples, self._epoch_start = 0, time.perf_counter()

    def on_train_epoch_end(self) -> None:
        # training throughput (next-item targets per second) and epoch time, for the ablation tables
        seconds = time.perf_counter() - self._epoch_start
        self.log("train/examples_per_s", self._epoch_examples / max(seconds, 1e-9), sync_dist=False)
        self.log("train/epoch_seconds", seconds, sync_dist=False)

    def configure_optimizers(self) -> Any:
        factory = self.optimizer_factory or (lambda params: torch.optim.Adam(params, lr=1e-3))
        optimizer = factory(params=self.parameters())
        if self.scheduler_factory is None:
            return optimizer
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": self.scheduler_factory(optimizer=optimizer), "interval": "epoch"},
        }

    # -- evaluation -------------------------------------------------------------------------------
    def _start_eval(self, prefix: str) -> None:
        self._eval_prefix = prefix
        self._item_embeddings = self.embed_catalog()
        self._metrics = torch.nn.ModuleDict(
            {
                "model": RetrievalMetrics(self.k_values, self._catalog_size, prefix=f"{prefix}/"),
                "cold": RetrievalMetrics(self.k_values, self._catalog_size, prefix=f"{prefix}/cold/"),
                # explore: targets new to the buyer, ranked with the buyer's own items excluded (as served
                # when a shop has no repeats); the part of the task no repeat score can do
                "new": RetrievalMetrics(self.k_values, self._catalog_size, prefix=f"{prefix}/new/"),
                "popularity": RetrievalMetrics(
                    self.k_values, self._catalog_size, prefix=f"{prefix}/popularity/"
                ),
            }
        ).to(self.device)
        k = min(self.max_k, self._catalog_size)
        self._popular = torch.topk(self.item_counts, k).indices  # [k]

    def _eval_step(self, batch: HistoryBatch) -> None:
        buyers = self.embed_buyers(
            batch.history_items,
            batch.history_weights,
            batch.history_mask,
            self._item_embeddings,
            batch.history_gaps,
        )
        seen = torch.where(batch.history_mask, batch.history_items, -1)  # [B, L], -1 = padding
        # one catalog pass: the K + L best hold the K best outside the history (at most L are the history's)
        _, wide = topk_scores_chunked(
            buyers.float(), self._item_embeddings.float(), self.max_k + seen.shape[1]
        )  # [B, K + L]
        top = wide[:, : self.max_k]
        target = batch.target
        self._metrics["model"].update(top, target)
        cold = self.item_counts[target] == 0
        self._metrics["cold"].update(top[cold], target[cold])
        self._metrics["popularity"].update(self._popular.expand(len(target), -1), target)
        new = ~(seen == target[:, None]).any(dim=1)
        if bool(new.any()):
            # the new targets' lists with the buyer's items excluded: the wide list's unseen items, in order
            in_history = (wide[new, :, None] == seen[new, None, :]).any(dim=2)  # [B', K + L]
            order = torch.sort(in_history.to(torch.uint8), dim=1, stable=True).indices[:, : self.max_k]
            top_new = wide[new].gather(1, order).masked_fill(in_history.gather(1, order), -1)
            self._metrics["new"].update(top_new, target[new])

    def _end_eval(self) -> dict[str, Tensor]:
        values: dict[str, Tensor] = {}
        for metric in self._metrics.values():
            values.update(metric.compute())
        retention = self.text_retention(self._item_embeddings) if self._eval_prefix == "val" else None
        if retention is not None:
            values["val/text_retention"] = torch.tensor(retention.ratio, device=self.device)
        self.log_dict(values, sync_dist=False)  # torchmetrics already synced the states across ranks
        self._item_embeddings = None
        return values

    @torch.no_grad()
    def text_retention(self, item_vectors: Tensor | None = None) -> Retention | None:
        """Text retention of the item tower (see twotower.model.retention); None where it cannot be measured.

        The noisy queries are encoded once per attached catalog. Also kept in `last_text_retention`.
        """
        n = int(self.hparams.text_retention_queries)
        if n <= 0 or self.fine_tune_text or not self.item_tower.use_text or self._catalog_size == 0:
            return None
        if self._retention_inputs is None:
            try:
                noise = default_noise()
            except ImportError as error:
                if not self._retention_warned:
                    log.warning("text retention not measured: %s", error)
                    self._retention_warned = True
                return None
            queries, sources = retention_queries(self._titles, noise, n, seed=0)
            raw = torch.from_numpy(self.encoder.encode(queries, show_progress=False)).to(self.device)
            self._retention_inputs = (raw, torch.from_numpy(sources).to(self.device))
        if item_vectors is None:
            item_vectors = self.embed_catalog()
        was_training = self.item_tower.training
        self.item_tower.eval()
        # Plain attributes, not buffers: .to()/.cpu() leave them behind, and Lightning moves the module (to
        # the GPU for fit and test, back to the CPU at each teardown). Keep them where the module is now.
        raw, sources = (t.to(self.device) for t in self._retention_inputs)
        self._retention_inputs = (raw, sources)
        result = text_retention(raw, sources, self.text_features, item_vectors, self.item_tower.text_path)
        self.item_tower.train(was_training)
        self.last_text_retention = result
        return result

    def on_validation_epoch_start(self) -> None:
        self._start_eval("val")

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self._eval_step(batch)

    def on_validation_epoch_end(self) -> None:
        self._end_eval()

    def on_test_epoch_start(self) -> None:
        self._start_eval("test")

    def test_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self._eval_step(batch)

    def on_test_epoch_end(self) -> None:
        self._end_eval()

    def predict_step(self, batch: Tensor, batch_idx: int) -> dict[str, Tensor]:
        """Item vectors [n, D] for a batch of catalog indices [n] (used by the export callback)."""
        return {"items": batch, "vectors": self.embed_items(batch).float()}


def load_module(ckpt_path: str | Path, text_encoder: Any = None, map_location: str = "cpu") -> TwoTowerModule:
    """Load a TwoTowerModule checkpoint; pass the text encoder only to embed text (the buyer tower needs none).

    The file is read by `read_checkpoint` (weights_only: nothing in it can run code); Lightning's own
    `_load_state` then builds the module exactly as `load_from_checkpoint` would after its own unpickling.
    """
    from lightning.pytorch.core.saving import _load_state

    from twotower.model.checkpoint import read_checkpoint

    path = Path(ckpt_path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    checkpoint = read_checkpoint(path, map_location=map_location)
    return _load_state(TwoTowerModule, checkpoint, text_encoder=text_encoder)
