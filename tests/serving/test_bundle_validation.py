"""Issue 9 item 6: load_bundle refuses bundles that cannot be served, naming the problem."""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from tests.serving.conftest import tiny_catalog
from twotower.data.catalog import Catalog
from twotower.retrieval.bundle import BundleError, load_bundle, write_bundle
from twotower.retrieval.index import IndexBuilder


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture()
def copy_bundle(tiny_bundle: Path, tmp_path: Path) -> Callable[..., Path]:
    """A copy of the tiny bundle; `edit(manifest, directory)` changes it, then checksums are re-signed so
    that only the problem under test remains."""

    def make(edit: Callable[[dict, Path], None], resign: bool = True) -> Path:
        directory = tmp_path / "bundle"
        shutil.copytree(tiny_bundle, directory)
        manifest = json.loads((directory / "manifest.json").read_text())
        edit(manifest, directory)
        if resign and isinstance(manifest.get("files"), dict):
            for name in manifest["files"]:
                if (directory / name).is_file() and "/" not in name and name != "..":
                    manifest["files"][name] = _sha(directory / name)
        (directory / "manifest.json").write_text(json.dumps(manifest))
        return directory

    return make


def test_a_good_bundle_loads(tiny_bundle: Path) -> None:
    assert len(load_bundle(tiny_bundle).product_ids) == 60


def test_manifest_without_files_is_refused(copy_bundle) -> None:
    bundle = copy_bundle(lambda m, d: m.pop("files"))
    with pytest.raises(BundleError, match="lists no files"):
        load_bundle(bundle)


def test_a_required_file_missing_from_files_is_refused(copy_bundle) -> None:
    bundle = copy_bundle(lambda m, d: m["files"].pop("model.ckpt"))
    with pytest.raises(BundleError, match=r"does not list model.ckpt in 'files'"):
        load_bundle(bundle)


@pytest.mark.parametrize("name", ["../../../../etc/passwd", "/etc/passwd", "..", "sub/model.ckpt"])
def test_file_names_must_be_plain(copy_bundle, name: str) -> None:
    bundle = copy_bundle(lambda m, d: m["files"].update({name: "0" * 64}))
    with pytest.raises(BundleError, match="file names must be plain names"):
        load_bundle(bundle)


def test_a_symlink_out_of_the_bundle_is_refused(copy_bundle, tmp_path: Path) -> None:
    outside = tmp_path / "outside.bin"
    outside.write_bytes(b"secret")

    def link(manifest: dict, directory: Path) -> None:
        (directory / "extra.bin").symlink_to(outside)
        manifest["files"]["extra.bin"] = "0" * 64

    with pytest.raises(BundleError, match="link out of the bundle"):
        load_bundle(copy_bundle(link))


def test_nan_embeddings_are_refused(copy_bundle) -> None:
    def poison(manifest: dict, directory: Path) -> None:
        embeddings = np.load(directory / "embeddings.npy")
        embeddings[7, 3] = np.nan
        np.save(directory / "embeddings.npy", embeddings)

    with pytest.raises(BundleError, match=r"non-finite values \(NaN/inf\) in 1 rows \(e.g. product 'p7'\)"):
        load_bundle(copy_bundle(poison))


def test_duplicate_product_ids_are_refused(tiny_bundle: Path, tmp_path: Path) -> None:
    # write_bundle checks nothing of the kind, so build the duplicate through the catalog itself
    source = load_bundle(tiny_bundle)
    frame = tiny_catalog(60).to_frame()
    frame.loc[5, "product_id"] = "p4"
    catalog = Catalog.from_frame(frame)
    bundle = write_bundle(
        tmp_path / "dups",
        embeddings=source.embeddings,
        catalog=catalog,
        index=IndexBuilder("flat").build(source.embeddings),
        checkpoint_path=source.checkpoint_path,
    )
    with pytest.raises(BundleError, match=r"repeats 1 product ids \(e.g. 'p4'\)"):
        load_bundle(bundle)


def test_an_empty_catalog_is_refused(copy_bundle) -> None:
    import pandas as pd

    def empty(manifest: dict, directory: Path) -> None:
        np.save(directory / "embeddings.npy", np.zeros((0, 16), dtype=np.float32))
        (directory / "product_ids.json").write_text("[]")
        frame = pd.read_parquet(directory / "catalog.parquet")
        frame.iloc[:0].to_parquet(directory / "catalog.parquet", index=False)

    with pytest.raises(BundleError, match="has an empty catalog: nothing to recommend"):
        load_bundle(copy_bundle(empty), load_index=False)
