"""A tiny, self-made bundle for serving tests (no training needed); reusable via the `make_bundle` fixture."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from twotower.data.catalog import Catalog
from twotower.model.buyer_tower import BuyerTower
from twotower.model.checkpoint import write_checkpoint
from twotower.retrieval.bundle import write_bundle
from twotower.retrieval.index import IndexBuilder

DIM = 16
CATEGORIES = ("jewellery", "electronics", "perfume")
BRANDS = ("لازوردي", "Samsung", "العربية للعود")


def tiny_catalog(n: int = 60) -> Catalog:
    """n products with Arabic titles, 3 categories x 3 brands, a duplicate id 'dup-p0' for p0, Zipf popularity."""
    frame = pd.DataFrame(
        {
            "product_id": [f"p{i}" for i in range(n)],
            "title": [f"منتج رقم {i}" for i in range(n)],
            "description": [f"وصف المنتج {i}" for i in range(n)],
            "brand": [BRANDS[i % 3] for i in range(n)],
            "category": [CATEGORIES[(i // 3) % 3] for i in range(n)],
            "photo_url": [f"https://example.com/{i}.jpg" for i in range(n)],
            "popularity": np.array([1000.0 / (i + 1) for i in range(n)], dtype=np.float32),
            "aliases": [["dup-p0"] if i == 0 else [] for i in range(n)],
        }
    )
    return Catalog.from_frame(frame)


def build_test_bundle(
    directory: Path,
    n: int = 60,
    dim: int = DIM,
    aggregation: str = "weighted_avg",
    seed: int = 0,
    index_kind: str = "flat",
    options: dict | None = None,
    time_gaps: bool = False,
) -> Path:
    """Write a complete bundle: tiny catalog, random normalized embeddings, an index and a buyer-tower checkpoint."""
    rng = np.random.default_rng(seed)
    embeddings = rng.standard_normal((n, dim)).astype(np.float32)
    embeddings /= np.linalg.norm(embeddings, axis=1, keepdims=True)
    catalog = tiny_catalog(n)
    index = IndexBuilder(index_kind).build(embeddings)
    state = {}
    if aggregation in ("attention", "transformer"):
        torch.manual_seed(seed)
        tower = BuyerTower(aggregation, dim, options, time_gaps)
        if aggregation == "transformer":  # a trained-looking tower: its output projection starts at zero
            for parameter in tower.parameters():
                torch.nn.init.normal_(parameter, std=0.3)
        state = {f"buyer_tower.{k}": v for k, v in tower.state_dict().items()}
    ckpt = write_checkpoint(
        directory.parent / f"{directory.name}.ckpt",
        state,
        {
            "item_tower": {"output_dim": dim},
            "buyer_tower": {
                "aggregation_method": aggregation,
                "options": dict(options or {}),
                "time_gaps": time_gaps,
            },
        },
    )
    return write_bundle(
        directory,
        embeddings=embeddings,
        catalog=catalog,
        index=index,
        checkpoint_path=ckpt,
        config={
            "data": {
                "event_weights": {"view": 1.0, "add_to_cart": 5.0, "purchase": 10.0},
                "event_aliases": {"purchase": ["checkout_success"]},
                "max_history": 100,
            }
        },
        metrics={},
        counts={"buyers": 0},
        text_encoder_id="test",
    )


@pytest.fixture(scope="session")
def make_bundle(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Path]:
    """make_bundle(name, **kwargs) -> bundle directory (built once per name per session)."""
    root = tmp_path_factory.mktemp("bundles")
    built: dict[str, Path] = {}

    def make(name: str = "tiny", **kwargs: object) -> Path:
        if name not in built:
            built[name] = build_test_bundle(root / name, **kwargs)  # type: ignore[arg-type]
        return built[name]

    return make


@pytest.fixture(scope="session")
def tiny_bundle(make_bundle: Callable[..., Path]) -> Path:
    return make_bundle("tiny")


class _Payload:
    """Unpickling this calls open(marker, "w"): the marker file exists iff the pickle's code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (open, (str(self.marker), "w"))


def crafted_checkpoint(path: Path, marker: Path) -> Path:
    """A model.ckpt whose pickle would create `marker` if it were unpickled with weights_only=False."""
    torch.save({"state_dict": {}, "hyper_parameters": {"evil": _Payload(marker)}}, path)
    return path


def _resign(directory: Path) -> None:
    import hashlib
    import json

    manifest = json.loads((directory / "manifest.json").read_text())
    for name in manifest["files"]:
        if (directory / name).is_file() and "/" not in name:
            manifest["files"][name] = hashlib.sha256((directory / name).read_bytes()).hexdigest()
    (directory / "manifest.json").write_text(json.dumps(manifest))


def make_broken_bundles(source: Path, root: Path, marker: Path) -> dict[str, tuple[Path, str]]:
    """Bundles under `root` that must be refused, each with a fragment of the expected error:
    a crafted checkpoint (would create `marker`), NaN embeddings, a manifest naming ../../etc/passwd,
    a manifest without `files`. Checksums are re-signed so that only the planted problem remains."""
    import json
    import shutil

    out: dict[str, tuple[Path, str]] = {}

    def copy(name: str) -> Path:
        target = root / name
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(source, target)
        return target

    crafted = copy("broken-crafted-ckpt")
    crafted_checkpoint(crafted / "model.ckpt", marker)
    _resign(crafted)
    out["crafted"] = (crafted, "refusing to load model.ckpt")
    nan = copy("broken-nan")
    embeddings = np.load(nan / "embeddings.npy")
    embeddings[3] = np.nan
    np.save(nan / "embeddings.npy", embeddings)
    _resign(nan)
    out["nan"] = (nan, "non-finite values")
    traversal = copy("broken-traversal")
    manifest = json.loads((traversal / "manifest.json").read_text())
    manifest["files"]["../../../../etc/passwd"] = "0" * 64
    (traversal / "manifest.json").write_text(json.dumps(manifest))
    out["traversal"] = (traversal, "plain names")
    unlisted = copy("broken-no-files")
    manifest = json.loads((unlisted / "manifest.json").read_text())
    manifest.pop("files")
    (unlisted / "manifest.json").write_text(json.dumps(manifest))
    out["no-files"] = (unlisted, "lists no files")
    return out
