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
    tower = BuyerTower(method, 16)
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
