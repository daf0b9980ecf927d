"""The index backends behind one interface: no FAISS needed for torch search, no global state at import,
and ``index=auto`` choosing flat or hnsw from the catalog size."""

from __future__ import annotations

import inspect
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from twotower.retrieval.index import IndexBuilder, VectorIndex

ROOT = Path(__file__).resolve().parents[2]


def run_python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300, check=False
    )


def test_training_entry_point_buyer_tower_and_torch_search_work_without_faiss(tmp_path):
    # sys.modules["faiss"] = None makes every `import faiss` fail, as on a machine without FAISS.
    code = f"""
import sys
sys.modules["faiss"] = None
import numpy as np
import twotower.train, twotower.model.buyer_tower, twotower.retrieval.index.torch_backend
from twotower.retrieval.index import IndexBuilder, VectorIndex
x = np.random.default_rng(0).standard_normal((50, 8)).astype(np.float32)
index = IndexBuilder("torch_exact", device="cpu").build(x)
assert index.search(x[:3], 1)[1][:, 0].tolist() == [0, 1, 2]
index.save({str(tmp_path)!r})
assert VectorIndex.load({str(tmp_path)!r}).search(x[:1], 1)[1][0, 0] == 0
print("ok")
"""
    result = run_python(code)
    assert result.returncode == 0 and "ok" in result.stdout, result.stderr[-3000:]


def test_importing_twotower_changes_no_faiss_global():
    # twotower.serving needs pydantic, which an image without the serving stack lacks (gpu_check.sh)
    pytest.importorskip("pydantic", reason="twotower.serving.recommender needs pydantic")
    code = """
import faiss
before = faiss.cvar.distance_compute_blas_threshold
import twotower.retrieval.index.faiss_backend, twotower.retrieval.bundle, twotower.serving.recommender
assert faiss.cvar.distance_compute_blas_threshold == before, faiss.cvar.distance_compute_blas_threshold
print("ok")
"""
    result = run_python(code)
    assert result.returncode == 0 and "ok" in result.stdout, result.stderr[-3000:]


def test_build_takes_only_the_embeddings():
    assert list(inspect.signature(IndexBuilder.build).parameters) == ["self", "embeddings"]


@pytest.mark.parametrize(("n", "kind"), [(99, "flat"), (100, "hnsw"), (400, "hnsw")])
def test_auto_chooses_flat_below_the_threshold_and_hnsw_from_it(n, kind, tmp_path):
    x = np.random.default_rng(1).standard_normal((n, 16)).astype(np.float32)
    index = IndexBuilder("auto", auto_threshold=100, hnsw_m=8).build(x)
    assert index.kind == kind
    index.save(tmp_path)
    meta = json.loads((tmp_path / "index.json").read_text())
    assert (meta["kind"], meta["chosen_by"], meta["auto_threshold"]) == (kind, "auto", 100)
    loaded = VectorIndex.load(tmp_path)
    assert loaded.kind == kind and loaded.search(x[:2], 1)[1][:, 0].tolist() == [0, 1]


def test_auto_threshold_must_be_a_positive_integer():
    with pytest.raises(ValueError, match="auto_threshold"):
        IndexBuilder("auto", auto_threshold=0)
