"""The artifact bundle: one self-describing directory per trained model, loadable with no other input.

manifest.json     format version, created_at, git commit, config, text encoder id, dims, metrics,
                  counts, sha256 of every file
model.ckpt        the Lightning checkpoint (towers, vocabularies, hyperparameters)
embeddings.npy    float32 [n, D], L2-normalized, row i = product_ids[i]
product_ids.json  canonical product ids
index.faiss/...   the vector index + index.json (factory string, metric, ntotal, search params, recall)
catalog.parquet   id, title, description, brand, category, photo_url, aliases, and training-period counts:
                  popularity, repeats, recent_popularity (the learned repeat score's item features)

(Over ~300 lines: writing, validating and reading a bundle must agree on one layout, so they stay together.)
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import os
import shutil
import subprocess
import uuid
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from twotower.data.catalog import Catalog
from twotower.data.schema import EventSchema
from twotower.retrieval.index import VectorIndex
from twotower.scoring import MANIFEST_KEY as SCORING_KEY
from twotower.scoring import OTHER_EXCLUSION_KEY, ScoringSettings

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
MANIFEST, CHECKPOINT, EMBEDDINGS, PRODUCT_IDS, CATALOG = (
    "manifest.json",
    "model.ckpt",
    "embeddings.npy",
    "product_ids.json",
    "catalog.parquet",
)


class BundleError(ValueError):
    """A bundle is missing a file or its parts disagree; the message names the file and the mismatch."""


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, check=True
        )
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if hasattr(value, "item") and getattr(value, "ndim", 1) == 0:
        return value.item()  # numpy / torch scalars
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    return str(value)


@dataclass
class Bundle:
    """A loaded bundle. Read the manifest through the accessors below, not by key chains.

    Example:
        >>> bundle = load_bundle("outputs/latest")  # doctest: +SKIP
        >>> bundle.index.search(bundle.embeddings[:1], 10)  # doctest: +SKIP
        >>> bundle.event_schema.weights, bundle.data_config.get("max_history")  # doctest: +SKIP
    """

    path: Path
    manifest: dict
    embeddings: np.ndarray  # float32 [n, D]
    product_ids: list[str]
    catalog: Catalog
    index: VectorIndex | None

    @property
    def checkpoint_path(self) -> Path:
        return self.path / CHECKPOINT

    @property
    def version(self) -> str:
        return str(self.manifest.get("model_version", self.path.name))

    @property
    def config(self) -> dict[str, Any]:
        """The run config the bundle was written with (``{}`` when the manifest records none)."""
        config = self.manifest.get("config", {})
        return config if isinstance(config, dict) else {}

    @property
    def data_config(self) -> dict[str, Any]:
        """The data config (``_target_``, paths, event weights and aliases, max_history ...); ``{}`` if none."""
        data = self.config.get("data")
        return dict(data) if isinstance(data, dict) else {}

    @property
    def model_config(self) -> dict[str, Any]:
        """The model config (``_target_``, towers, ``text_encoder`` node ...); ``{}`` if none."""
        model = self.config.get("model")
        return dict(model) if isinstance(model, dict) else {}

    @property
    def text_encoder_config(self) -> dict[str, Any] | None:
        """The text encoder's config node (with ``_target_``), or None when the manifest records none.

        Bundles written by ``python -m twotower.export`` before one manifest shape recorded the checkpoint's
        hyperparameters as the model config, where the node is called ``text_encoder_config``.
        """
        model = self.model_config
        for key in ("text_encoder", "text_encoder_config"):
            node = model.get(key)
            if isinstance(node, dict) and "_target_" in node:
                return dict(node)
        return None

    @property
    def event_schema(self) -> EventSchema:
        """The event names and weights the model was trained with (the defaults where none are recorded)."""
        data = self.data_config
        return EventSchema(
            weights=dict(data.get("event_weights") or {}), aliases=dict(data.get("event_aliases") or {})
        )

    @property
    def text_encoder_id(self) -> str | None:
        return self.manifest.get("text_encoder_id")

    @property
    def scoring(self) -> ScoringSettings:
        """The served scoring settings recorded at export (the defaults for bundles that record none)."""
        return self._recorded_scoring(SCORING_KEY) or ScoringSettings()

    def scoring_for(self, exclude_seen: bool) -> ScoringSettings:
        """The settings to serve a request with that sets ``exclude_seen``: the served ones when they agree,
        else those recorded for the other exclusion setting (chosen on val for it at export). Bundles that
        record none get the served ones with the exclusion switched, less the learned coefficients and the
        history similarity (both were fitted for the served exclusion)."""
        served = self.scoring
        if exclude_seen == served.exclude_seen:
            return served
        other = self._recorded_scoring(OTHER_EXCLUSION_KEY)
        if other is None:
            return replace(
                served, exclude_seen=exclude_seen, repeat_coefficients=None, history_similarity=0.0
            )
        if other.exclude_seen != exclude_seen:  # a hand-edited manifest: serving it would hide the edit
            raise BundleError(
                f"{self.path}: the manifest's '{OTHER_EXCLUSION_KEY}' has exclude_seen={other.exclude_seen}, the "
                f"same as '{SCORING_KEY}'; it must hold the other setting's; fix it or re-export the bundle"
            )
        return other

    def _recorded_scoring(self, key: str) -> ScoringSettings | None:
        recorded = self.manifest.get(key)
        if not isinstance(recorded, dict):
            return None
        try:
            return ScoringSettings.from_dict(recorded)
        except (TypeError, ValueError) as error:
            raise BundleError(
                f"{self.path}: the manifest's '{key}' entry is invalid ({error}); re-export the bundle"
            ) from error


def write_bundle(
    directory: str | Path,
    *,
    embeddings: np.ndarray,
    catalog: Catalog,
    index: VectorIndex,
    checkpoint_path: str | Path,
    config: dict | None = None,
    metrics: dict | None = None,
    counts: dict | None = None,
    text_encoder_id: str | None = None,
    scoring: dict | None = None,
) -> Path:
    """Write a complete bundle atomically: built in a sibling temp dir, then renamed into place.

    ``scoring``: manifest entries of the served scoring settings (``twotower.retrieval.export`` writes
    ``scoring`` and ``scoring_choice``), read back by :attr:`Bundle.scoring`.
    """
    directory = Path(directory)
    embeddings = np.ascontiguousarray(embeddings, dtype=np.float32)
    if embeddings.ndim != 2 or len(embeddings) != len(catalog):
        raise BundleError(
            f"embeddings shape {embeddings.shape} does not match the catalog's {len(catalog)} products"
        )
    if index.ntotal != len(catalog):
        raise BundleError(f"index holds {index.ntotal} vectors but the catalog has {len(catalog)} products")
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = directory.parent / f".{directory.name}.tmp-{uuid.uuid4().hex[:8]}"
    staging.mkdir()
    try:
        shutil.copyfile(checkpoint_path, staging / CHECKPOINT)
        np.save(staging / EMBEDDINGS, embeddings)
        (staging / PRODUCT_IDS).write_text(
            json.dumps(catalog.product_ids, ensure_ascii=False), encoding="utf-8"
        )
        catalog.to_frame().to_parquet(staging / CATALOG, index=False)
        index.save(staging)
        files = sorted(p.name for p in staging.iterdir() if p.is_file())
        created = dt.datetime.now(dt.timezone.utc)
        manifest = {
            "format_version": FORMAT_VERSION,
            "model_version": f"{created:%Y%m%dT%H%M%SZ}-{_sha256(staging / EMBEDDINGS)[:8]}",
            "created_at": created.isoformat(),
            "git_commit": _git_commit(),
            "text_encoder_id": text_encoder_id,
            "embedding_dim": int(embeddings.shape[1]),
            "num_products": len(catalog),
            "index": index.info,
            "metrics": _jsonable(metrics or {}),
            "counts": _jsonable(counts or {}),
            "config": _jsonable(config or {}),
            **_jsonable(scoring or {}),
            "files": {name: _sha256(staging / name) for name in files},
        }
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=2, ensure_ascii=False), encoding="utf-8")
        if directory.exists():
            shutil.rmtree(directory)
        os.replace(staging, directory)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    log.info("wrote bundle %s (%d products, %s index)", directory, len(catalog), index.kind)
    return directory


REQUIRED_FILES = (CHECKPOINT, EMBEDDINGS, PRODUCT_IDS, CATALOG)


def _check_listed_files(directory: Path, manifest: dict, verify_checksums: bool) -> None:
    """Every required file is listed in the manifest's `files` under a plain name, exists inside the bundle
    (no symlink out of it) and, when asked, matches its checksum. Nothing outside the bundle is ever read."""
    files = manifest.get("files")
    if not isinstance(files, dict) or not files:
        raise BundleError(
            f"{MANIFEST} of bundle {directory} lists no files (its 'files' checksums): re-export the bundle"
        )
    unlisted = [name for name in REQUIRED_FILES if name not in files]
    if unlisted:
        raise BundleError(f"{MANIFEST} of bundle {directory} does not list {', '.join(unlisted)} in 'files'")
    base = directory.resolve()
    for name, digest in files.items():
        if (
            not isinstance(name, str)
            or name in ("", ".", "..")
            or "/" in name
            or "\\" in name
            or "\x00" in name
        ):
            raise BundleError(
                f"{MANIFEST} of bundle {directory} lists {name!r}: file names must be plain names"
            )
        path = directory / name
        if not path.is_file():
            raise BundleError(f"bundle {directory} is missing {name} (listed in {MANIFEST})")
        if path.resolve().parent != base:
            raise BundleError(f"{name} in bundle {directory} is a link out of the bundle; copy the file in")
        if verify_checksums and _sha256(path) != digest:
            raise BundleError(
                f"{path} does not match the checksum in {MANIFEST}: the file was changed or corrupted"
            )


def _check_contents(directory: Path, embeddings: np.ndarray, product_ids: list) -> None:
    """A servable catalog: not empty, unique ids, finite vectors (NaN rows would answer empty results)."""
    if len(product_ids) == 0:
        raise BundleError(f"bundle {directory} has an empty catalog: nothing to recommend")
    if len(set(product_ids)) != len(product_ids):
        seen: set = set()
        duplicates = sorted({p for p in product_ids if p in seen or seen.add(p)})
        raise BundleError(
            f"{PRODUCT_IDS} of bundle {directory} repeats {len(duplicates)} product ids "
            f"(e.g. {', '.join(map(repr, duplicates[:3]))}); ids must be unique"
        )
    finite = np.isfinite(embeddings).all(axis=1)
    if not finite.all():
        rows = np.flatnonzero(~finite)
        raise BundleError(
            f"{EMBEDDINGS} of bundle {directory} has non-finite values (NaN/inf) in {len(rows)} rows "
            f"(e.g. product {product_ids[int(rows[0])]!r}); re-export the bundle"
        )


def load_bundle(
    directory: str | Path, load_index: bool = True, device: str = "cpu", verify_checksums: bool = True
) -> Bundle:
    """Load a bundle and check that its parts agree (files, checksums, ids, rows, dims, index size)."""
    directory = Path(directory)
    if not directory.is_dir():
        raise BundleError(f"bundle {directory} does not exist (train one with `python -m twotower.train`)")
    manifest_path = directory / MANIFEST
    if not manifest_path.is_file():
        raise BundleError(f"bundle {directory} has no {MANIFEST}; is this a bundle directory?")
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except ValueError as error:
        raise BundleError(f"{manifest_path} is not valid JSON: {error}") from error
    if manifest.get("format_version") != FORMAT_VERSION:
        raise BundleError(
            f"{manifest_path}: format_version {manifest.get('format_version')} != supported {FORMAT_VERSION}"
        )
    _check_listed_files(directory, manifest, verify_checksums)
    embeddings = np.load(directory / EMBEDDINGS, mmap_mode=None).astype(np.float32, copy=False)
    product_ids = json.loads((directory / PRODUCT_IDS).read_text(encoding="utf-8"))
    frame = pd.read_parquet(directory / CATALOG)
    catalog = Catalog.from_frame(frame)
    dim = manifest.get("embedding_dim")
    if embeddings.ndim != 2 or embeddings.shape[1] != dim:
        raise BundleError(
            f"{directory / EMBEDDINGS}: shape {embeddings.shape}, but {MANIFEST} says dim {dim}"
        )
    if len(product_ids) != len(embeddings):
        raise BundleError(
            f"{PRODUCT_IDS} has {len(product_ids)} ids but {EMBEDDINGS} has {len(embeddings)} rows"
        )
    if catalog.product_ids != product_ids:
        raise BundleError(f"{CATALOG} product ids differ from {PRODUCT_IDS} (order or content)")
    _check_contents(directory, embeddings, product_ids)
    index = None
    if load_index:
        index = VectorIndex.load(directory, device=device)
        if index.ntotal != len(product_ids):
            raise BundleError(
                f"index holds {index.ntotal} vectors but the bundle has {len(product_ids)} products"
            )
        if index.dim != embeddings.shape[1]:
            raise BundleError(f"index dim {index.dim} != embedding dim {embeddings.shape[1]}")
        metric = index.info.get("metric", "inner_product")
        if metric != "inner_product":
            raise BundleError(f"index metric is {metric!r}; bundles use inner_product on normalized vectors")
    return Bundle(directory, manifest, embeddings, product_ids, catalog, index)


def point_latest(link: str | Path, target: str | Path) -> None:
    """Switch the `latest` symlink to target atomically (new link beside it, then rename over)."""
    link, target = Path(link), Path(target).resolve()
    link.parent.mkdir(parents=True, exist_ok=True)
    staging = link.parent / f".{link.name}.tmp-{uuid.uuid4().hex[:8]}"
    os.symlink(target, staging, target_is_directory=True)
    if link.is_dir() and not link.is_symlink():
        shutil.rmtree(link)
    os.replace(staging, link)
