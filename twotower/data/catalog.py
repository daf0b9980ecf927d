"""The product catalog: text, brand/category vocabularies, photos, de-duplication with aliases."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from twotower.data.io import DEFAULT_CHUNKSIZE, DEFAULT_ENCODING, read_table
from twotower.data.report import DataReport
from twotower.data.schema import (
    PHOTO_COLUMNS,
    PRODUCT_COLUMNS,
    PRODUCT_OPTIONAL_COLUMNS,
    DataValidationError,
    normalize_id,
    normalize_key,
    normalize_text,
    strip_format_chars,
)

log = logging.getLogger(__name__)
UNK = "<UNK>"


@dataclass
class Vocabulary:
    """Normalized keys -> index; index 0 is <UNK> (unknown or missing values)."""

    tokens: list[str] = field(default_factory=lambda: [UNK])

    def __post_init__(self) -> None:
        if not self.tokens or self.tokens[0] != UNK:
            self.tokens = [UNK, *[t for t in self.tokens if t != UNK]]
        self._index = {t: i for i, t in enumerate(self.tokens)}

    @classmethod
    def build(cls, values: Iterable[str]) -> Vocabulary:
        keys = sorted({normalize_key(v) for v in values if normalize_key(v)})
        return cls([UNK, *keys])

    def __len__(self) -> int:
        return len(self.tokens)

    def lookup(self, values: Iterable[str]) -> np.ndarray:
        """int64 [n] indices; values not in the vocabulary map to 0 (<UNK>)."""
        return np.array([self._index.get(normalize_key(v), 0) for v in values], dtype=np.int64)


def _parse_metadata(raw: object) -> tuple[str, str, bool]:
    """(brand, category, malformed) from a metadata JSON string; missing metadata is not malformed."""
    if raw is None or (isinstance(raw, float) and np.isnan(raw)) or raw == "":
        return "", "", False
    if isinstance(raw, dict):
        meta = raw
    else:
        try:  # NUL and bidi marks are invalid inside JSON strings and would be stripped from the values anyway
            meta = json.loads(strip_format_chars(str(raw)))
        except (TypeError, ValueError, RecursionError):  # deeply nested JSON overflows the parser's stack
            return "", "", True
        if not isinstance(meta, dict):
            return "", "", True
    brand = normalize_text(meta.get("brand"))
    category = normalize_text(meta.get("catalog_id", meta.get("category")))
    return brand, category, False


def _dedup_key(row: int, title: str, description: str, brand: str, category: str) -> str:
    """Products with equal keys are one product. Without any text nothing says so: a key of its own."""
    text = (normalize_key(title), normalize_key(description))
    if not any(text):
        return f"\x00{row}"  # NUL never survives normalize_key, so this cannot collide with a real key
    return "\x1f".join((*text, normalize_key(brand), normalize_key(category)))


# the per-item counts a datamodule fills from the training period (Catalog fields and catalog.parquet columns)
TRAINING_STATISTICS = ("popularity", "repeats", "recent_popularity")


@dataclass
class Catalog:
    """Canonical products (item index = row), their aliases, and the vocabularies the item tower uses."""

    product_ids: list[str]
    titles: list[str]
    descriptions: list[str]
    brands: list[str]
    categories: list[str]
    photo_urls: list[str]
    aliases: dict[str, int]  # every known id, canonical or duplicate -> item index
    brand_vocab: Vocabulary
    category_vocab: Vocabulary
    # training-period statistics (zeros until a datamodule fills them): interactions per item, those whose buyer
    # had the item before (repeats), and those of the period's last 30 days; the learned repeat score reads them
    popularity: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.float32))
    repeats: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.float32))
    recent_popularity: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.float32))

    def __post_init__(self) -> None:
        for name in TRAINING_STATISTICS:
            if len(getattr(self, name)) != len(self.product_ids):
                setattr(self, name, np.zeros(len(self.product_ids), dtype=np.float32))

    def __len__(self) -> int:
        return len(self.product_ids)

    @property
    def texts(self) -> list[str]:
        """What the text encoder sees: title + ' ' + description (original script, whitespace-normalized)."""
        return [normalize_text(f"{t} {d}") for t, d in zip(self.titles, self.descriptions, strict=True)]

    def brand_indices(self, vocab: Vocabulary | None = None) -> np.ndarray:
        return (vocab or self.brand_vocab).lookup(self.brands)

    def category_indices(self, vocab: Vocabulary | None = None) -> np.ndarray:
        return (vocab or self.category_vocab).lookup(self.categories)

    def resolve(self, product_ids: Sequence[object]) -> np.ndarray:
        """Item indices for raw ids (duplicates resolve to their canonical product); -1 when unknown.

        Ids are matched in `normalize_id` form, as the catalog stores them (RLM, zero-width, full-width...).
        """
        return np.array([self.aliases.get(normalize_id(p), -1) for p in product_ids], dtype=np.int64)

    def duplicate_ids(self) -> list[list[str]]:
        """For each item, the non-canonical ids that resolve to it."""
        out: list[list[str]] = [[] for _ in self.product_ids]
        for alias, index in self.aliases.items():
            if alias != self.product_ids[index]:
                out[index].append(alias)
        return out

    def to_frame(self) -> pd.DataFrame:
        return pd.DataFrame(
            {
                "product_id": self.product_ids,
                "title": self.titles,
                "description": self.descriptions,
                "brand": self.brands,
                "category": self.categories,
                "photo_url": self.photo_urls,
                **{name: getattr(self, name).astype(np.float32) for name in TRAINING_STATISTICS},
                "aliases": self.duplicate_ids(),
            }
        )

    @classmethod
    def from_frame(
        cls,
        frame: pd.DataFrame,
        brand_vocab: Vocabulary | None = None,
        category_vocab: Vocabulary | None = None,
    ) -> Catalog:
        # normalize_id again: bundles written before ids were NFKC-normalized still match requests
        ids = [normalize_id(p) for p in frame["product_id"]]
        aliases = {pid: i for i, pid in enumerate(ids)}
        if "aliases" in frame:
            for i, dups in enumerate(frame["aliases"]):
                for dup in [] if dups is None else list(dups):
                    aliases.setdefault(normalize_id(dup), i)
        brands = frame["brand"].fillna("").astype(str).tolist()
        categories = frame["category"].fillna("").astype(str).tolist()
        return cls(
            product_ids=ids,
            titles=frame["title"].fillna("").astype(str).tolist(),
            descriptions=frame["description"].fillna("").astype(str).tolist(),
            brands=brands,
            categories=categories,
            photo_urls=frame["photo_url"].fillna("").astype(str).tolist(),
            aliases=aliases,
            brand_vocab=brand_vocab or Vocabulary.build(brands),
            category_vocab=category_vocab or Vocabulary.build(categories),
            # bundles written before a statistic existed lack its column: zeros (see __post_init__)
            **{
                name: frame[name].to_numpy(np.float32) if name in frame else np.zeros(0, np.float32)
                for name in TRAINING_STATISTICS
            },
        )


def load_catalog(
    products_path: str | Path,
    photos_path: str | Path | None = None,
    report: DataReport | None = None,
    chunksize: int = DEFAULT_CHUNKSIZE,
    *,
    encoding: str = DEFAULT_ENCODING,
) -> Catalog:
    """Read products (and optional photos), parse metadata, collapse duplicates into canonical products.

    Duplicates share the same normalized title + description + brand + category; the first one seen is
    canonical and the others stay resolvable through `Catalog.aliases`. Products without any text are never
    merged (nothing says they are the same product). Ids are keyed in `normalize_id` form.
    `encoding` is the CSV files' text encoding (data.encoding).

    Example:
        >>> catalog = load_catalog("data/sample/products.csv", "data/sample/photos.csv")
        >>> catalog.resolve(["p000042", "\u200fp000042", "unknown"])  # -> [i, i, -1]
    """
    report = report if report is not None else DataReport()
    frames = list(
        read_table(
            products_path, PRODUCT_COLUMNS, PRODUCT_OPTIONAL_COLUMNS, chunksize=chunksize, encoding=encoding
        )
    )
    products = pd.concat(frames, ignore_index=True)
    report.rows_read["products"] += len(products)
    for column in ("description", "metadata"):
        if column not in products:
            log.warning(
                "%s has no '%s' column; treating it as empty for every product", products_path, column
            )
            products[column] = None

    ids = products["product_id"].map(normalize_id)
    missing_id = ids == ""
    report.drop("products.missing_id", int(missing_id.sum()))
    repeated_id = ids.duplicated() & ~missing_id
    report.drop("products.repeated_id", int(repeated_id.sum()))
    keep = ~(missing_id | repeated_id)
    products, ids = products[keep].reset_index(drop=True), ids[keep].reset_index(drop=True)
    if products.empty:
        raise DataValidationError(f"{products_path}: no usable product rows (all rows lack a product id)")

    parsed = [_parse_metadata(m) for m in products["metadata"]]
    brands = [p[0] for p in parsed]
    categories = [p[1] for p in parsed]
    # Malformed metadata keeps the product (its text is still good) with brand/category <UNK>.
    report.flag("products.malformed_metadata", sum(p[2] for p in parsed))
    titles = products["title"].map(normalize_text).tolist()
    descriptions = products["description"].map(normalize_text).tolist()

    rows = enumerate(zip(titles, descriptions, brands, categories, strict=True))
    dedup_keys = [_dedup_key(row, *fields) for row, fields in rows]
    report.flag("products.empty_text", sum(k.startswith("\x00") for k in dedup_keys))
    canonical_row_of_key: dict[str, int] = {}
    canonical_rows: list[int] = []
    row_to_item = np.empty(len(ids), dtype=np.int64)
    for row, key in enumerate(dedup_keys):
        item = canonical_row_of_key.get(key)
        if item is None:
            item = canonical_row_of_key[key] = len(canonical_rows)
            canonical_rows.append(row)
        row_to_item[row] = item
    report.duplicates_collapsed = len(ids) - len(canonical_rows)
    aliases = dict(zip(ids.tolist(), row_to_item.tolist(), strict=True))

    pick = lambda values: [values[r] for r in canonical_rows]  # noqa: E731
    photo_urls = [""] * len(canonical_rows)
    if photos_path is not None:
        photo_frames = read_table(photos_path, PHOTO_COLUMNS, chunksize=chunksize, encoding=encoding)
        photos = pd.concat(list(photo_frames), ignore_index=True)
        report.rows_read["photos"] += len(photos)
        items = [aliases.get(normalize_id(p), -1) for p in photos["product_id"]]
        urls = photos["photo_url"].map(normalize_text).tolist()
        unknown = 0
        for item, url in zip(items, urls, strict=True):
            if item < 0:
                unknown += 1
            elif url and not photo_urls[item]:
                photo_urls[item] = url
        report.drop("photos.unknown_product_id", unknown)

    catalog_brands, catalog_categories = pick(brands), pick(categories)
    catalog = Catalog(
        product_ids=pick(ids.tolist()),
        titles=pick(titles),
        descriptions=pick(descriptions),
        brands=catalog_brands,
        categories=catalog_categories,
        photo_urls=photo_urls,
        aliases=aliases,
        brand_vocab=Vocabulary.build(catalog_brands),
        category_vocab=Vocabulary.build(catalog_categories),
    )
    report.products = len(catalog)
    return catalog
