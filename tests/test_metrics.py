"""Tests for twotower.evaluation.metrics: chunked top-k and the retrieval metrics."""

from __future__ import annotations

import math

import pytest
import torch

from twotower.evaluation.metrics import RetrievalMetrics, topk_scores_chunked

# ----------------------------------------------------------------------------- topk_scores_chunked


@pytest.mark.parametrize("chunk_size", [1, 7, 10, 64, 65536])
@pytest.mark.parametrize("k", [1, 5, 10, 64])
def test_chunked_topk_equals_full_topk(chunk_size, k):
    gen = torch.Generator().manual_seed(0)
    queries = torch.randn(5, 8, generator=gen)
    items = torch.randn(50, 8, generator=gen)  # 50 = 7 * 7 + 1: a one-row last chunk for chunk_size 7
    scores, indices = topk_scores_chunked(queries, items, k, chunk_size=chunk_size)
    ref_scores, ref_indices = torch.topk(queries @ items.T, min(k, 50), dim=1)
    assert scores.shape == (5, min(k, 50))  # k > N is clamped to N
    torch.testing.assert_close(scores, ref_scores)
    assert torch.equal(indices, ref_indices)


def test_chunked_topk_excludes_items():
    gen = torch.Generator().manual_seed(1)
    queries = torch.randn(3, 4, generator=gen)
    items = torch.randn(20, 4, generator=gen)
    full = queries @ items.T
    exclude = torch.tensor([[0, 5, -1], [19, -1, -1], [1, 2, 3]])
    mask = torch.zeros(3, 20, dtype=torch.bool)
    for row, excluded in enumerate(exclude.tolist()):
        for item in excluded:
            if item >= 0:
                mask[row, item] = True
    ref_scores, ref_indices = torch.topk(full.masked_fill(mask, float("-inf")), 6, dim=1)
    for given in (exclude, mask):
        scores, indices = topk_scores_chunked(queries, items, 6, chunk_size=4, exclude=given)
        torch.testing.assert_close(scores, ref_scores)
        assert torch.equal(indices, ref_indices)
    # A 1-D exclude applies to every query.
    _, indices = topk_scores_chunked(queries, items, 20, chunk_size=3, exclude=torch.tensor([4, 7]))
    assert not ((indices == 4) | (indices == 7)).any()
    assert (indices[:, -2:] == -1).all()  # 18 items remain: the last two slots are empty


def test_chunked_topk_rejects_bad_input():
    with pytest.raises(ValueError, match="same D"):
        topk_scores_chunked(torch.randn(2, 3), torch.randn(4, 5), 2)
    with pytest.raises(ValueError, match="k must be"):
        topk_scores_chunked(torch.randn(2, 3), torch.randn(4, 3), 0)


# ----------------------------------------------------------------------------- RetrievalMetrics


def _example() -> tuple[torch.Tensor, torch.Tensor]:
    # Catalog of 10 items, lists of 4. Target ranks (0-based): 0, 2, absent, 3, ignored (-1).
    topk = torch.tensor(
        [
            [3, 1, 2, 0],
            [4, 5, 6, 7],
            [0, 1, 2, 3],
            [1, 2, 3, 8],
            [9, 9, 9, 9],
        ]
    )
    targets = torch.tensor([3, 6, 9, 8, -1])
    return topk, targets


def test_hand_computed_metrics():
    topk, targets = _example()
    metric = RetrievalMetrics(k_values=(1, 3, 4), num_items=10)
    metric.update(topk, targets)
    out = metric.compute()
    n = 4  # the -1 target is ignored
    assert out["recall@1"].item() == pytest.approx(1 / n)
    assert out["recall@3"].item() == pytest.approx(2 / n)
    assert out["recall@4"].item() == pytest.approx(3 / n)
    for k in (1, 3, 4):
        assert out[f"hit_rate@{k}"].item() == out[f"recall@{k}"].item()
    assert out["ndcg@1"].item() == pytest.approx(1.0 / n)
    assert out["ndcg@3"].item() == pytest.approx((1.0 + 1 / math.log2(4)) / n)
    assert out["ndcg@4"].item() == pytest.approx((1.0 + 1 / math.log2(4) + 1 / math.log2(5)) / n)
    assert out["mrr"].item() == pytest.approx((1.0 + 1 / 3 + 0.0 + 1 / 4) / n)


def test_coverage():
    topk, targets = _example()
    metric = RetrievalMetrics(k_values=(1, 3, 4), num_items=10)
    metric.update(topk, targets)
    out = metric.compute()
    # Top-1 items: 3, 4, 0, 1, 9 -> 5 of 10. Top-3 adds 2, 5, 6 -> 8. Top-4 adds 7, 8 -> 10.
    assert out["coverage@1"].item() == pytest.approx(0.5)
    assert out["coverage@3"].item() == pytest.approx(0.8)
    assert out["coverage@4"].item() == pytest.approx(1.0)
    # Without num_items there is no coverage.
    no_cov = RetrievalMetrics(k_values=(1,))
    no_cov.update(topk, targets)
    assert not any(key.startswith("coverage") for key in no_cov.compute())


def test_empty_slots_and_short_lists():
    # -1 slots (exclusion left too few items) never match and never count for coverage; lists shorter than K.
    metric = RetrievalMetrics(k_values=(2, 10), num_items=5)
    metric.update(torch.tensor([[2, -1], [-1, -1]]), torch.tensor([2, 4]))
    out = metric.compute()
    assert out["recall@2"].item() == pytest.approx(0.5)
    assert out["recall@10"].item() == pytest.approx(0.5)
    assert out["coverage@10"].item() == pytest.approx(0.2)


def test_prefixed_names():
    metric = RetrievalMetrics(k_values=(10, 50), num_items=100, prefix="val/")
    metric.update(torch.arange(50).repeat(2, 1), torch.tensor([0, 99]))
    keys = set(metric.compute())
    assert keys == {
        "val/recall@10",
        "val/recall@50",
        "val/ndcg@10",
        "val/ndcg@50",
        "val/hit_rate@10",
        "val/hit_rate@50",
        "val/coverage@10",
        "val/coverage@50",
        "val/mrr",
    }


def test_compute_without_data_is_zero_and_bad_index_is_reported():
    metric = RetrievalMetrics(k_values=(5,), num_items=3)
    with pytest.warns(UserWarning):  # torchmetrics warns about compute before update
        assert metric.compute()["recall@5"].item() == 0.0
    with pytest.raises(ValueError, match="num_items=3"):
        metric.update(torch.tensor([[0, 7]]), torch.tensor([0]))


def test_merge_of_halves_equals_whole():
    gen = torch.Generator().manual_seed(3)
    num_items, batch = 300, 64
    topk = torch.stack([torch.randperm(num_items, generator=gen)[:100] for _ in range(batch)])
    targets = torch.randint(0, num_items, (batch,), generator=gen)
    targets[::7] = -1
    targets[1::5] = topk[1::5, 4]  # some hits at known ranks

    whole = RetrievalMetrics(num_items=num_items)
    whole.update(topk, targets)
    first, second = RetrievalMetrics(num_items=num_items), RetrievalMetrics(num_items=num_items)
    first.update(topk[:30], targets[:30])
    second.update(topk[30:], targets[30:])
    first.merge_state(second)  # what the DDP sync does with the same reductions (sum / min)
    expected, merged = whole.compute(), first.compute()
    assert expected.keys() == merged.keys()
    for key in expected:
        torch.testing.assert_close(merged[key], expected[key], msg=key)
    assert expected["recall@10"].item() > 0


def test_large_k_uses_wide_rank_state():
    metric = RetrievalMetrics(k_values=(10, 300), num_items=400)
    assert metric.best_rank.dtype == torch.int32
    metric.update(torch.arange(300).unsqueeze(0), torch.tensor([299]))
    out = metric.compute()
    assert out["coverage@300"].item() == pytest.approx(0.75)
    assert out["recall@300"].item() == 1.0 and out["recall@10"].item() == 0.0


def test_end_to_end_with_chunked_topk():
    gen = torch.Generator().manual_seed(4)
    items = torch.nn.functional.normalize(torch.randn(200, 16, generator=gen), dim=1)
    targets = torch.arange(0, 200, 20)
    queries = items[targets] + 0.01 * torch.randn(
        len(targets), 16, generator=gen
    )  # each query near its target
    _, indices = topk_scores_chunked(queries, items, 10, chunk_size=32)
    metric = RetrievalMetrics(k_values=(1, 10), num_items=200, prefix="test/")
    metric.update(indices, targets)
    out = metric.compute()
    assert out["test/recall@1"].item() == 1.0 and out["test/mrr"].item() == 1.0


# ----------------------------------------------------------------------------- real DDP sync (gloo)


def _sync_worker(rank: int, port: int, out_dir: str) -> None:
    import os

    import torch.distributed as dist

    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        topk, targets = _example()
        rows = slice(0, 2) if rank == 0 else slice(2, 5)  # unequal shards
        metric = RetrievalMetrics(k_values=(1, 3, 4), num_items=10)
        metric.update(topk[rows], targets[rows])
        torch.save(metric.compute(), os.path.join(out_dir, f"rank{rank}.pt"))  # compute() syncs across ranks
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_ddp_sync_equals_single_process(tmp_path):
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_sync_worker, args=(port, str(tmp_path)), nprocs=2, join=True)
    topk, targets = _example()
    single = RetrievalMetrics(k_values=(1, 3, 4), num_items=10)
    single.update(topk, targets)
    expected = single.compute()
    for rank in range(2):
        synced = torch.load(tmp_path / f"rank{rank}.pt")
        for key in expected:
            torch.testing.assert_close(synced[key], expected[key], msg=key)
