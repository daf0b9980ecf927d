"""Tests for the vector index layer (twotower.retrieval.index)."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest

from twotower.retrieval.index import KINDS, IndexBuilder, VectorIndex

DIM = 384


def _normalize(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="module")
def clustered() -> tuple[np.ndarray, np.ndarray]:
    """2000 items in 40 clusters + 100 held-out queries from the same clusters (like buyer vectors)."""
    rng = np.random.default_rng(0)
    centers = _normalize(rng.standard_normal((40, DIM)))
    items = centers[rng.integers(0, 40, 2000)] + 0.8 * rng.standard_normal((2000, DIM)) / np.sqrt(DIM)
    queries = centers[rng.integers(0, 40, 100)] + 0.8 * rng.standard_normal((100, DIM)) / np.sqrt(DIM)
    return _normalize(items), _normalize(queries)


def _brute_force(items: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    scores = queries @ items.T
    ids = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(scores, ids, axis=1), ids


@pytest.mark.parametrize("kind", ["flat", "torch_exact"])
def test_exact_kinds_equal_numpy_brute_force(clustered, kind):
    items, queries = clustered
    index = IndexBuilder(kind).build(items)
    scores, ids = index.search(queries, 10)
    want_scores, want_ids = _brute_force(items, queries, 10)
    assert scores.dtype == np.float32 and ids.dtype == np.int64 and ids.shape == (100, 10)
    np.testing.assert_array_equal(ids, want_ids)
    np.testing.assert_allclose(scores, want_scores, atol=1e-5)
    assert index.info["metric"] == "inner_product"


def test_build_renormalizes_vectors(clustered):
    items, queries = clustered
    index = IndexBuilder("flat").build(items * 7.0)
    scores, ids = index.search(queries, 5)
    want_scores, want_ids = _brute_force(items, queries, 5)
    np.testing.assert_array_equal(ids, want_ids)
    np.testing.assert_allclose(scores, want_scores, atol=1e-5)
    assert scores.max() <= 1.0 + 1e-5


@pytest.mark.parametrize("kind", KINDS)
def test_every_kind_builds_searches_and_round_trips(clustered, kind, tmp_path):
    items, queries = clustered
    index = IndexBuilder(kind, pq_m=48).build(items)
    assert (index.kind, index.ntotal, index.dim) == (kind, 2000, DIM)
    scores, ids = index.search(queries, 10)
    assert ids.shape == scores.shape == (100, 10)
    assert ((ids >= -1) & (ids < 2000)).all()
    assert (np.diff(scores, axis=1) <= 1e-6).all(), "scores must be sorted descending"
    recall = index.measure_recall(queries)
    assert index.info["recall@10_vs_exact"] == pytest.approx(recall, abs=1e-6)

    index.save(tmp_path)
    meta = json.loads((tmp_path / "index.json").read_text())
    assert meta["kind"] == kind and meta["metric"] == "inner_product"
    assert meta["ntotal"] == 2000 and meta["dim"] == DIM and "factory" in meta and "params" in meta
    assert meta["recall@10_vs_exact"] == pytest.approx(recall, abs=1e-6)
    loaded = VectorIndex.load(tmp_path)
    loaded_scores, loaded_ids = loaded.search(queries, 10)
    np.testing.assert_array_equal(loaded_ids, ids)
    np.testing.assert_allclose(loaded_scores, scores, atol=1e-6)


@pytest.mark.parametrize(
    ("kind", "params"),
    [("ivf", {"nprobe": 8}), ("hnsw", {"hnsw_m": 16, "ef_construction": 100, "ef_search": 64})],
)
def test_ann_recall_at_10_on_clustered_data(clustered, kind, params):
    items, queries = clustered
    index = IndexBuilder(kind, **params).build(items)
    assert index.measure_recall(queries, exact=IndexBuilder("flat").build(items)) >= 0.9


def test_ann_search_is_mostly_exact_for_single_queries(clustered):
    items, queries = clustered
    index = IndexBuilder("hnsw").build(items)
    _, want = _brute_force(items, queries[:1], 10)
    _, got = index.search(queries[0], 10)  # a 1-D query is one query
    assert got.shape == (1, 10) and len(set(got[0]) & set(want[0])) >= 9


def test_low_recall_logs_a_warning(clustered, caplog):
    items, queries = clustered
    index = IndexBuilder("ivf", nlist=50, nprobe=1, recall_warn_below=0.999).build(items)
    with caplog.at_level(logging.WARNING, logger="twotower.retrieval.index"):
        recall = index.measure_recall(queries)
    assert recall < 0.999
    assert any("recall@10" in r.getMessage() and "nprobe" in r.getMessage() for r in caplog.records)


def test_recall_counts_tied_duplicates_as_hits():
    rng = np.random.default_rng(1)
    base = _normalize(rng.standard_normal((50, 16)))
    items = np.concatenate([base, base])  # every vector twice: exact top-k has ties
    index = IndexBuilder("hnsw", hnsw_m=8).build(items)
    assert index.measure_recall(base[:20], k=10) == pytest.approx(1.0)


@pytest.mark.parametrize("kind", ["flat", "torch_exact", "hnsw", "ivf"])
def test_k_larger_than_ntotal_is_clamped(kind):
    items = _normalize(np.random.default_rng(2).standard_normal((7, 32)))
    index = IndexBuilder(kind, nprobe=1).build(items)
    scores, ids = index.search(items[:3], 50)
    assert ids.shape == scores.shape == (3, 7)
    assert sorted(ids[0].tolist()) == list(range(7))
    assert ids[0, 0] == 0


def test_wrong_query_dim_is_a_clear_error(clustered):
    items, _ = clustered
    index = IndexBuilder("flat").build(items)
    with pytest.raises(ValueError, match=r"shape \[n, 384\]"):
        index.search(np.zeros((2, 128), np.float32), 5)
    with pytest.raises(ValueError, match="k must be >= 1"):
        index.search(items[:1], 0)


def test_bad_embeddings_are_clear_errors():
    with pytest.raises(ValueError, match="2-D"):
        IndexBuilder().build(np.zeros(10, np.float32))
    bad = np.ones((4, 8), np.float32)
    bad[2, 3] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        IndexBuilder().build(bad)
    with pytest.raises(ValueError, match="must divide"):
        IndexBuilder("ivfpq", pq_m=7).build(np.ones((100, 16), np.float32))


def test_bad_kind_names_valid_kinds():
    with pytest.raises(ValueError, match="valid kinds: auto, flat, ivf, hnsw, sq8, ivfpq, torch_exact"):
        IndexBuilder("annoy")


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"nprobe": 0}, "nprobe"),
        ({"nlist": -3}, "nlist"),
        ({"device": "tpu"}, "device"),
        ({"recall_warn_below": 2.0}, "recall_warn_below"),
        ({"hnsw_m": 1}, "hnsw_m"),
    ],
)
def test_bad_values_name_the_key(kwargs, needle):
    with pytest.raises(ValueError, match=needle):
        IndexBuilder("ivf", **kwargs)


def test_nlist_follows_sqrt_rule_and_caps_for_small_catalogs():
    builder = IndexBuilder("ivf")
    assert builder.resolve_nlist(100_000) == round(4 * 100_000**0.5)
    assert builder.resolve_nlist(2000) == 2000 // 39
    assert builder.resolve_nlist(10) == 1
    assert builder.factory_string(100_000, DIM) == "IVF1265,Flat"
    assert IndexBuilder("sq8").factory_string(1_000_000, DIM) == "IVF4000,SQ8"


def test_mismatched_index_json_is_a_clear_error(clustered, tmp_path):
    items, _ = clustered
    IndexBuilder("flat").build(items).save(tmp_path)
    meta = json.loads((tmp_path / "index.json").read_text())
    meta["ntotal"] = 1999
    (tmp_path / "index.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=r"index\.faiss does not match .*index\.json: ntotal 2000 != 1999"):
        VectorIndex.load(tmp_path)
    meta["ntotal"], meta["metric"] = 2000, "l2"
    (tmp_path / "index.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="metric"):
        VectorIndex.load(tmp_path)


def test_torch_index_shape_mismatch_and_missing_files(clustered, tmp_path):
    items, _ = clustered
    IndexBuilder("torch_exact").build(items).save(tmp_path / "t")
    np.save(tmp_path / "t" / "index.npy", items[:, :100])
    with pytest.raises(ValueError, match=r"index\.npy holds an array of shape \(2000, 100\)"):
        VectorIndex.load(tmp_path / "t")
    with pytest.raises(FileNotFoundError, match="index.json"):
        VectorIndex.load(tmp_path / "nothing")
    IndexBuilder("flat").build(items).save(tmp_path / "f")
    (tmp_path / "f" / "index.faiss").unlink()
    with pytest.raises(FileNotFoundError, match="index.faiss"):
        VectorIndex.load(tmp_path / "f")


def test_cuda_request_without_gpu_falls_back_to_cpu(clustered, caplog):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    items, queries = clustered
    with caplog.at_level(logging.INFO, logger="twotower.retrieval.index"):
        faiss_index = IndexBuilder("flat", device="cuda").build(items)
        torch_index = IndexBuilder("torch_exact", device="cuda").build(items)
    assert faiss_index.info["device"] == "cpu" and torch_index.info["device"] == "cpu"
    np.testing.assert_array_equal(faiss_index.search(queries, 5)[1], torch_index.search(queries, 5)[1])


def test_loaded_ann_index_needs_exact_for_recall(clustered, tmp_path):
    items, queries = clustered
    IndexBuilder("hnsw").build(items).save(tmp_path)
    loaded = VectorIndex.load(tmp_path)
    with pytest.raises(ValueError, match="needs exact="):
        loaded.measure_recall(queries)
    exact = IndexBuilder("flat").build(items)
    exact.save(tmp_path / "exact")
    assert loaded.measure_recall(queries, exact=VectorIndex.load(tmp_path / "exact")) >= 0.9
