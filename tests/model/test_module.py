"""TwoTowerModule training paths on a tiny in-memory catalog: full vs sampled softmax, the ID vocabulary,
the explore-only objective and the tower config objects in the checkpoint's hyperparameters."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from twotower.data.batches import HistoryBatch, SequenceBatch
from twotower.data.catalog import Catalog, Vocabulary
from twotower.model.buyer_tower import BuyerTowerConfig
from twotower.model.item_tower import ItemTowerConfig
from twotower.model.module import TwoTowerModule


class HashEncoder:
    """A frozen stand-in encoder: a fixed random vector per text."""

    id, dim, trainable = "hash-encoder", 16, False

    def encode(self, texts: list[str], show_progress: bool = False) -> np.ndarray:
        out = np.stack([np.random.default_rng(abs(hash(t)) % 2**32).standard_normal(self.dim) for t in texts])
        return (out / np.linalg.norm(out, axis=1, keepdims=True)).astype(np.float32)


def _catalog(n: int = 12) -> Catalog:
    ids = [f"p{i}" for i in range(n)]
    return Catalog(
        product_ids=ids,
        titles=[f"title {i}" for i in range(n)],
        descriptions=[""] * n,
        brands=[""] * n,
        categories=[""] * n,
        photo_urls=[""] * n,
        aliases={p: i for i, p in enumerate(ids)},
        brand_vocab=Vocabulary(),
        category_vocab=Vocabulary(),
    )


def _module(**kwargs) -> TwoTowerModule:
    module = TwoTowerModule(
        16,
        ["<UNK>"],
        ["<UNK>"],
        text_encoder=HashEncoder(),
        feature_cache_dir=None,
        item_tower=ItemTowerConfig(output_dim=8, hidden_dim=8, id_embedding=4),
        buyer_tower=BuyerTowerConfig("transformer", {"width": 8, "heads": 2, "layers": 1}),
        **kwargs,
    )
    counts = np.array([3, 2, 1, 1, 1, 1, 1, 1, 0, 0, 5, 1], dtype=np.float32)  # p8, p9 never trained on
    module.attach_catalog(_catalog(), counts)
    module.log = lambda *args, **kwargs: None  # no Trainer attached
    module.on_train_epoch_start()
    return module


def _sequence_batch() -> SequenceBatch:
    items = torch.tensor([[0, 1, 2, 3], [4, 5, 6, 0]])
    return SequenceBatch(
        items=items,
        weights=torch.full((2, 4), 10.0),
        mask=torch.tensor([[True] * 4, [True, True, True, False]]),
        query_window=torch.tensor([0, 0, 1, 1]),
        query_position=torch.tensor([0, 2, 1, 2]),
        target=torch.tensor([1, 0, 6, 7]),  # row 1 repeats item 0 (seen at position 0)
    )


def test_id_vocabulary_is_the_trained_items_and_travels_in_hparams():
    module = _module()
    assert module.hparams["item_vocab"] == [f"p{i}" for i in range(12) if i not in (8, 9)]
    assert module.id_index[8] == 0 and module.id_index[9] == 0 and module.id_index[0] > 0
    assert module.hparams["item_tower"]["id_embedding"] == 4  # plain dicts, loadable with weights_only
    assert module.hparams["buyer_tower"] == {
        "aggregation_method": "transformer",
        "options": {"width": 8, "heads": 2, "layers": 1},
        "time_gaps": False,
    }
    reloaded = TwoTowerModule(
        16,
        ["<UNK>"],
        ["<UNK>"],
        **{k: module.hparams[k] for k in ("item_tower", "buyer_tower", "item_vocab")},
    )
    reloaded.load_state_dict(module.state_dict())  # same architecture from the hyperparameters alone


def test_full_softmax_is_cross_entropy_over_the_whole_catalog():
    torch.manual_seed(0)
    module = _module(full_softmax_max_items=100)
    batch = _sequence_batch()
    module.eval()  # no dropout: the loss can be recomputed by hand
    loss = module.training_step(batch, 0)
    vectors = module.embed_catalog()
    queries = module.buyer_tower.forward_all(vectors[batch.items], batch.weights, batch.mask)[
        batch.query_window, batch.query_position
    ]
    logits = (queries @ vectors.T / module.hparams.temperature).masked_fill(module.item_counts == 0, -1.0e4)
    torch.testing.assert_close(loss, torch.nn.functional.cross_entropy(logits, batch.target))
    # items never seen in training (p8, p9) are no negatives: they would only learn to score low
    assert torch.equal(module.item_counts == 0, torch.tensor([False] * 8 + [True, True, False, False]))


def test_sampled_softmax_above_the_threshold_and_per_target_batches():
    torch.manual_seed(0)
    module = _module(full_softmax_max_items=5, num_negatives=4, use_log_q_correction=True)
    loss = module.training_step(_sequence_batch(), 0)
    assert torch.isfinite(loss)
    history = HistoryBatch(
        history_items=torch.tensor([[0, 1], [2, 3]]),
        history_weights=torch.ones(2, 2),
        history_mask=torch.ones(2, 2, dtype=torch.bool),
        target=torch.tensor([4, 5]),
    )
    assert torch.isfinite(module.training_step(history, 0))
    loss.backward()  # gradients reach the ID embedding
    assert module.item_tower.id_embedding.weight.grad is not None


def test_explore_only_objective_drops_repeats_and_masks_the_history():
    torch.manual_seed(0)
    module = _module(full_softmax_max_items=100, exclude_seen_in_loss=True)
    module.eval()
    batch = _sequence_batch()
    loss = module.training_step(batch, 0)
    vectors = module.embed_catalog()
    queries = module.buyer_tower.forward_all(vectors[batch.items], batch.weights, batch.mask)[
        batch.query_window, batch.query_position
    ]
    logits = queries @ vectors.T / module.hparams.temperature
    keep = torch.tensor([0, 2, 3])  # target 0 of row 1 was seen at position 0: dropped
    seen = torch.zeros(3, 12, dtype=torch.bool)
    seen[0, [0]] = True
    seen[1, [4, 5]] = True
    seen[2, [4, 5, 6]] = True
    seen[:, [8, 9]] = True  # never-trained items are masked too
    expected = torch.nn.functional.cross_entropy(logits[keep].masked_fill(seen, -1.0e4), batch.target[keep])
    torch.testing.assert_close(loss, expected)


def test_unknown_tower_option_names_the_key():
    with pytest.raises(ValueError, match="hiden_dim"):
        TwoTowerModule(16, ["<UNK>"], ["<UNK>"], item_tower={"hiden_dim": 3})


def test_text_retention_through_the_module(monkeypatch):
    import twotower.model.module as module_file

    module = _module()
    module.eval()
    monkeypatch.setattr(module_file, "default_noise", lambda: lambda text, rng: text.upper())
    result = module.text_retention()
    assert result is not None and result.num_queries == 12 and module.last_text_retention is result
    assert 0.0 <= result.ratio <= 12.0 and result.raw_recall > 0


def test_text_retention_is_skipped_without_the_noise_module(monkeypatch, caplog):
    import twotower.model.module as module_file

    def missing():
        raise ImportError("no noise module")

    monkeypatch.setattr(module_file, "default_noise", missing)
    module = _module()
    assert module.text_retention() is None
    assert "text retention not measured" in caplog.text
    assert module.hparams["text_retention_queries"] == 1000  # the checkpoint keeps the setting


def test_text_alignment_loss_pulls_text_queries_to_their_items():
    torch.manual_seed(0)
    module = _module(full_softmax_max_items=100, text_alignment_weight=1.0, text_alignment_items=12)
    module.eval()
    torch.manual_seed(1)
    alignment = module._text_alignment_loss()
    torch.manual_seed(1)
    order = torch.randperm(12)
    text = module.item_tower.text_path(module.text_features[order])
    logits = text @ module.embed_items(order).T / module.hparams.temperature
    torch.testing.assert_close(alignment, torch.nn.functional.cross_entropy(logits, torch.arange(12)))
    plain = _module(full_softmax_max_items=100)
    plain.load_state_dict(module.state_dict())
    plain.eval()
    batch = _sequence_batch()
    torch.manual_seed(2)
    with_alignment = module.training_step(batch, 0)
    torch.manual_seed(2)
    expected = plain.training_step(batch, 0) + module._text_alignment_loss()
    torch.testing.assert_close(with_alignment, expected)


def test_explore_metric_ranks_new_targets_with_the_buyers_items_excluded():
    torch.manual_seed(0)
    module = _module(k_values=(1, 3))
    module.eval()
    batch = HistoryBatch.from_arrays(
        [[0, 1, 2], [3, 4, 0], [6, 0, 0]],
        np.ones((3, 3)),
        [[True, True, True], [True, True, False], [True, False, False]],
        [1, 5, 7],  # row 0 buys item 1 again: not an explore target
    )
    with torch.no_grad():
        module._start_eval("val")
        vectors = module._item_embeddings
        buyers = module.embed_buyers(batch.history_items, batch.history_weights, batch.history_mask, vectors)
        module._eval_step(batch)
        values = module._end_eval()
    scores = buyers @ vectors.T
    ranks = []
    for row, seen in ((1, [3, 4]), (2, [6])):
        allowed = scores[row].clone()
        allowed[seen] = -torch.inf
        ranks.append(int((allowed > allowed[batch.target[row]]).sum()))
    for k in (1, 3):
        expected = sum(rank < k for rank in ranks) / 2  # two explore targets
        assert float(values[f"val/new/recall@{k}"]) == pytest.approx(expected)
