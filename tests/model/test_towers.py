import pytest
import torch
import torch.nn.functional as F

from twotower.model.buyer_tower import AGGREGATIONS, BuyerTower
from twotower.model.item_tower import ItemTower


def test_item_tower_shape_norm_and_unk():
    tower = ItemTower(text_dim=512, num_brands=5, num_categories=3).eval()
    out = tower(torch.randn(7, 512), torch.tensor([0, 1, 2, 3, 4, 0, 1]), torch.tensor([0, 1, 2, 0, 1, 2, 0]))
    assert out.shape == (7, 384)
    torch.testing.assert_close(out.norm(dim=1), torch.ones(7))
    with pytest.raises(ValueError, match="dropout"):
        ItemTower(8, 2, 2, dropout=1.5)


def _history(batch=4, length=6, dim=384, seed=0):
    g = torch.Generator().manual_seed(seed)
    vectors = F.normalize(torch.randn(batch, length, dim, generator=g), dim=-1)
    weights = torch.tensor([1.0, 5.0, 10.0])[torch.randint(0, 3, (batch, length), generator=g)]
    mask = torch.ones(batch, length, dtype=torch.bool)
    mask[0, :3] = False  # left padding, as the data layer right-aligns histories
    return vectors, weights, mask


@pytest.mark.parametrize("method", sorted(AGGREGATIONS))
def test_buyer_tower_shape_norm_and_padding_invariance(method):
    torch.manual_seed(0)
    tower = BuyerTower(method, 384).eval()
    vectors, weights, mask = _history()
    out = tower(vectors, weights, mask)
    assert out.shape == (4, 384)
    torch.testing.assert_close(out.norm(dim=1), torch.ones(4))
    # whatever sits in padded positions (vectors or weights), the output is the same
    noisy_vectors, noisy_weights = vectors.clone(), weights.clone()
    noisy_vectors[0, :3] = torch.randn(3, 384) * 100
    noisy_weights[0, :3] = 1000.0
    torch.testing.assert_close(tower(noisy_vectors, noisy_weights, mask), out)
    # and the same as the unpadded history alone
    torch.testing.assert_close(tower(vectors[:1, 3:], weights[:1, 3:], mask[:1, 3:]), out[:1])


@pytest.mark.parametrize("method", sorted(AGGREGATIONS))
def test_pool_equals_gathered_forward(method):
    torch.manual_seed(0)
    tower = BuyerTower(method, 16).eval()  # dropout off: the two paths must agree exactly
    unique = F.normalize(torch.randn(10, 16), dim=-1)
    index = torch.tensor([[0, 3, 3, 9], [1, 1, 1, 2], [5, 6, 7, 8]])  # repeated items add up
    weights = torch.tensor([[1.0, 5.0, 5.0, 10.0], [1.0, 1.0, 10.0, 5.0], [1.0, 1.0, 1.0, 1.0]])
    mask = torch.tensor([[False, True, True, True], [True, True, True, True], [True, True, True, True]])
    torch.testing.assert_close(tower.pool(unique, index, weights, mask), tower(unique[index], weights, mask))


def test_weighted_average_is_the_weighted_mean():
    tower = BuyerTower("weighted_avg", 2)
    vectors = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])
    out = tower(vectors, torch.tensor([[1.0, 10.0]]), torch.ones(1, 2, dtype=torch.bool))
    torch.testing.assert_close(out, F.normalize(torch.tensor([[1.0, 10.0]]), dim=-1))


def test_attention_responds_to_event_weights():
    torch.manual_seed(0)
    tower = BuyerTower("attention", 8).eval()
    vectors = F.normalize(torch.randn(1, 2, 8), dim=-1)
    mask = torch.ones(1, 2, dtype=torch.bool)
    as_view = tower(vectors, torch.tensor([[1.0, 1.0]]), mask)
    purchase_first = tower(vectors, torch.tensor([[10.0, 1.0]]), mask)
    # a purchase pulls the buyer vector towards that item
    assert (purchase_first @ vectors[0, 0]) > (as_view @ vectors[0, 0])


def test_unknown_aggregation_names_the_registered_ones():
    with pytest.raises(ValueError, match=r"attention.*weighted_avg"):
        BuyerTower("mean_max", 8)
    with pytest.raises(ValueError, match="options"):
        BuyerTower("weighted_avg", 8, options={"hidden_dim": 3})


@pytest.mark.parametrize("method", sorted(AGGREGATIONS))
def test_forward_all_is_causal_and_equals_each_prefix(method):
    torch.manual_seed(0)
    tower = BuyerTower(method, 32).eval()
    vectors, weights, mask = _history(batch=3, length=7, dim=32)
    out = tower.forward_all(vectors, weights, mask)
    assert out.shape == (3, 7, 32)
    # a future position never changes an earlier output
    changed_vectors, changed_weights = vectors.clone(), weights.clone()
    changed_vectors[:, 5:] = torch.randn(3, 2, 32)
    changed_weights[:, 5:] = 7.0
    torch.testing.assert_close(tower.forward_all(changed_vectors, changed_weights, mask)[:, :5], out[:, :5])
    # position l holds what serving's forward() returns for the history up to l
    for length in range(4, 8):
        expected = tower(vectors[:, :length], weights[:, :length], mask[:, :length])
        torch.testing.assert_close(out[:, length - 1], expected, atol=1e-5, rtol=1e-4)


def test_transformer_uses_order_and_event_weights():
    torch.manual_seed(0)
    tower = BuyerTower("transformer", 16).eval()
    vectors, weights, mask = _history(batch=1, length=5, dim=16)
    out = tower(vectors, weights, mask)
    assert not torch.allclose(tower(vectors.flip(1), weights.flip(1), mask), out)
    assert not torch.allclose(tower(vectors, weights * 0 + 1.0, mask), out)
    # an empty history gives a zero vector, not NaN
    empty = tower(vectors, weights, torch.zeros_like(mask))
    assert torch.equal(empty, torch.zeros_like(empty))


def test_transformer_options_are_checked():
    with pytest.raises(ValueError, match="multiple of heads"):
        BuyerTower("transformer", 16, options={"width": 10, "heads": 3})
    with pytest.raises(ValueError, match="options"):
        BuyerTower("transformer", 16, options={"widht": 64})


def test_reserved_id_is_the_text_path_and_unseen_items_get_text_only():
    torch.manual_seed(0)
    tower = ItemTower(
        8, 2, 2, num_ids=5, output_dim=8, id_embedding=4, id_dropout=0.0, text_residual=True
    ).eval()
    text = torch.randn(3, 8)
    zeros = torch.zeros(3, dtype=torch.long)
    with torch.no_grad():
        tower.id_embedding.weight[1:].normal_()
    reserved = tower(text, zeros, zeros, zeros)
    torch.testing.assert_close(tower.text_path(text), reserved)
    with_ids = tower(text, zeros, zeros, torch.tensor([1, 2, 0]))
    assert not torch.allclose(with_ids[:2], reserved[:2])
    torch.testing.assert_close(with_ids[2], reserved[2])  # index 0: no ID contribution at all
    assert torch.equal(tower.id_embedding.weight[0], torch.zeros(4))


def test_id_dropout_only_in_training():
    torch.manual_seed(0)
    tower = ItemTower(8, 2, 2, num_ids=5, output_dim=8, id_embedding=4, id_dropout=1.0, dropout=0.0)
    with torch.no_grad():
        tower.id_embedding.weight[1:].normal_()
    text, zeros, ids = torch.randn(4, 8), torch.zeros(4, dtype=torch.long), torch.tensor([1, 2, 3, 4])
    torch.testing.assert_close(
        tower(text, zeros, zeros, ids), tower(text, zeros, zeros, zeros)
    )  # all dropped
    tower.eval()
    assert not torch.allclose(tower(text, zeros, zeros, ids), tower(text, zeros, zeros, zeros))


def test_text_residual_starts_near_the_text_neighbourhoods():
    torch.manual_seed(0)
    text = F.normalize(torch.randn(50, 32), dim=-1)
    residual = ItemTower(32, 1, 1, output_dim=32, text_residual=True).eval()
    unknown = torch.zeros(50, dtype=torch.long)
    out = residual(text, unknown, unknown)
    # cosines between items barely move from the encoder's
    assert (out @ out.T - text @ text.T).abs().max() < 0.35


def test_id_only_tower_ignores_text_and_needs_ids():
    tower = ItemTower(8, 2, 2, num_ids=4, output_dim=8, id_embedding=4, use_text=False).eval()
    zeros, ids = torch.zeros(3, dtype=torch.long), torch.tensor([1, 2, 3])
    torch.testing.assert_close(
        tower(torch.randn(3, 8), zeros, zeros, ids), tower(torch.randn(3, 8), zeros, zeros, ids)
    )
    with pytest.raises(ValueError, match="ID-only"):
        ItemTower(8, 2, 2, use_text=False)


@pytest.mark.parametrize("method", sorted(AGGREGATIONS))
def test_forward_at_equals_forward_all_at_the_queried_positions(method):
    torch.manual_seed(0)
    tower = BuyerTower(method, 16).eval()
    vectors, weights, mask = _history(batch=3, length=6, dim=16)
    rows, cols = torch.tensor([0, 1, 1, 2]), torch.tensor([5, 0, 3, 4])
    expected = tower.forward_all(vectors, weights, mask)[rows, cols]
    torch.testing.assert_close(tower.forward_at(vectors, weights, mask, rows, cols), expected)


@pytest.mark.parametrize("residual", ["mean", "last"])
def test_transformer_residuals_keep_prefix_equality(residual):
    torch.manual_seed(0)
    tower = BuyerTower("transformer", 16, options={"residual": residual}).eval()
    vectors, weights, mask = _history(batch=2, length=5, dim=16)
    out = tower.forward_all(vectors, weights, mask)
    for length in (4, 5):
        expected = tower(vectors[:, :length], weights[:, :length], mask[:, :length])
        torch.testing.assert_close(out[:, length - 1], expected, atol=1e-5, rtol=1e-4)
    with pytest.raises(ValueError, match="residual"):
        BuyerTower("transformer", 16, options={"residual": "first"})


def test_transformer_time_gaps_are_causal_used_and_zero_when_unknown():
    torch.manual_seed(0)
    tower = BuyerTower("transformer", 16, time_gaps=True).eval()
    with torch.no_grad():
        tower.aggregate.gap.weight.normal_()  # a trained-looking gap embedding
    vectors, weights, mask = _history(batch=2, length=6, dim=16)
    gaps = torch.tensor([[0, 0, 0, 0, 6, 2], [0, 2, 5, 1, 1, 4]])  # row 0: three positions of padding
    out = tower.forward_all(vectors, weights, mask, gaps)
    # a future gap never changes an earlier output; forward() of each prefix is the same
    changed = gaps.clone()
    changed[:, 4:] = 0
    torch.testing.assert_close(tower.forward_all(vectors, weights, mask, changed)[:, :4], out[:, :4])
    for length in (4, 6):
        expected = tower(vectors[:, :length], weights[:, :length], mask[:, :length], gaps[:, :length])
        torch.testing.assert_close(out[:, length - 1], expected, atol=1e-5, rtol=1e-4)
    # the gaps matter, and no gaps means "unknown" (bucket 0) everywhere
    assert not torch.allclose(tower(vectors, weights, mask, gaps), tower(vectors, weights, mask, changed))
    torch.testing.assert_close(
        tower(vectors, weights, mask), tower(vectors, weights, mask, torch.zeros_like(gaps))
    )
    # towers without time gaps ignore them
    plain = BuyerTower("transformer", 16).eval()
    torch.testing.assert_close(plain(vectors, weights, mask, gaps), plain(vectors, weights, mask))
    average = BuyerTower(
        "weighted_avg", 16, time_gaps=True
    )  # as after switching aggregation_method on the CLI
    torch.testing.assert_close(average(vectors, weights, mask, gaps), average(vectors, weights, mask))
    with pytest.raises(ValueError, match=r"set model\.buyer_tower\.time_gaps=true\|false instead"):
        BuyerTower("transformer", 16, options={"time_gaps": True})
