"""Hostile and messy data files (issue 9, item 8): encodings, nested JSON, NUL bytes, de-dup keys, ids."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from twotower.data.catalog import Catalog, Vocabulary, load_catalog
from twotower.data.io import read_table
from twotower.data.report import DataReport
from twotower.data.schema import DataValidationError
from twotower.data.sequences import load_events

PRODUCTS = pd.DataFrame(
    {
        "id": ["p1", "p2"],
        "title": ["خاتم ذهب عيار 21", "عطر بالعنبر"],
        "description": ["هدية مثالية", ""],
        "metadata": [json.dumps({"brand": "لازوردي", "catalog_id": "jewellery"}, ensure_ascii=False), ""],
    }
)


def _meta(brand: str, category: str) -> str:
    return json.dumps({"brand": brand, "catalog_id": category}, ensure_ascii=False)


@pytest.mark.parametrize("encoding", ["cp1256", "utf-16"])
def test_non_utf8_csv_names_the_file_and_the_option(tmp_path: Path, encoding: str) -> None:
    path = tmp_path / "products.csv"
    PRODUCTS.to_csv(path, index=False, encoding=encoding)
    with pytest.raises(DataValidationError) as info:
        load_catalog(path)
    message = str(info.value)
    assert str(path) in message and f"data.encoding={encoding}" in message
    catalog = load_catalog(path, encoding=encoding)  # the suggested setting works
    assert catalog.titles == PRODUCTS["title"].tolist()


@pytest.mark.parametrize("encoding", ["utf-16-le", "utf-16-be"])
def test_utf16_without_byte_order_mark_is_named(tmp_path: Path, encoding: str) -> None:
    path = tmp_path / "products.csv"
    PRODUCTS.to_csv(path, index=False, encoding=encoding)
    for asked in ("utf-8", "utf-16"):  # read as UTF-8 it "decodes" (NULs are valid); utf-16 wants a BOM
        with pytest.raises(DataValidationError, match=f"data.encoding={encoding}"):
            load_catalog(path, encoding=asked)
    assert load_catalog(path, encoding=encoding).titles == PRODUCTS["title"].tolist()


def test_utf8_with_byte_order_mark_reads_as_utf8(tmp_path: Path) -> None:
    path = tmp_path / "products.csv"
    PRODUCTS.to_csv(path, index=False, encoding="utf-8-sig")  # Excel's "CSV UTF-8"
    assert load_catalog(path).product_ids == ["p1", "p2"]


def test_bad_bytes_below_a_clean_header_and_unknown_encoding(tmp_path: Path) -> None:
    path = tmp_path / "events.csv"
    rows = "".join(f"u{i},p1,view,2024-01-01T00:00:00Z\n" for i in range(50))
    path.write_bytes(
        b"distinct_id,product_id,event_name,created_at\n" + rows.encode() + "u9,ع,view,1\n".encode("cp1256")
    )
    catalog = load_catalog(_write(tmp_path / "products.csv", PRODUCTS))
    with pytest.raises(DataValidationError, match=r"events\.csv.*data\.encoding=cp1256"):
        load_events(path, catalog, chunksize=10, show_progress=False)
    with pytest.raises(DataValidationError, match="unknown encoding 'latin-42'"):
        load_catalog(tmp_path / "products.csv", encoding="latin-42")


def test_deeply_nested_metadata_is_malformed_not_a_crash(tmp_path: Path) -> None:
    nested = "[" * 100_000 + "]" * 100_000
    frame = PRODUCTS.assign(metadata=[nested, '{"brand": ' * 50_000])
    report = DataReport()
    catalog = load_catalog(_write(tmp_path / "products.csv", frame), report=report)
    assert len(catalog) == 2 and report.flagged["products.malformed_metadata"] == 2


def test_nul_and_format_chars_are_stripped_from_text_ids_and_metadata(tmp_path: Path) -> None:
    frame = pd.DataFrame(
        {
            "id": ["p\x001", "\u200fp2"],
            "title": ["خاتم\x00 ذهب", "عطر"],
            "description": ["هدية\x00", ""],
            # raw NUL/RLM inside the JSON text (json.dumps would escape them): strict JSON rejects a raw NUL
            "metadata": [
                '{"brand": "لازو\x00ردي", "catalog_id": "jewellery"}',
                _meta("\u200fأجمل", "perfumes"),
            ],
        }
    )
    report = DataReport()
    catalog = load_catalog(_write(tmp_path / "products.csv", frame), report=report)
    assert catalog.product_ids == ["p1", "p2"]
    assert catalog.titles == ["خاتم ذهب", "عطر"] and catalog.descriptions == ["هدية", ""]
    assert catalog.brands == ["لازوردي", "أجمل"] and not report.flagged
    assert "\x00" not in "".join(catalog.texts)


def test_nul_runs_longer_than_a_read_and_raw_line_ends(tmp_path: Path) -> None:
    """NULs are dropped from the decoded text before pandas parses it (its C parser ended a field at a NUL
    before pandas 3.1): a run of NULs longer than one read (256 KiB) is not the end of the file, a NUL in
    the header is dropped too, and CRLF and newlines inside quoted fields reach pandas as they are."""
    path = tmp_path / "products.csv"
    nuls = b"\x00" * 600_000
    path.write_bytes(
        b"i\x00d,title\r\n" + b'p\x001,"a%sb"\r\n' % nuls + 'p2,"سطر\r\nثان"\r\np3,c\r\n'.encode()
    )
    chunks = list(read_table(path, {"product_id": ("id",), "title": ("title",)}, chunksize=2))
    frame = pd.concat(chunks, ignore_index=True)
    assert frame["product_id"].tolist() == ["p1", "p2", "p3"]
    assert frame["title"].tolist() == ["ab", "سطر\r\nثان", "c"]


def test_dedup_key_includes_category(tmp_path: Path) -> None:
    frame = pd.DataFrame(
        {
            "id": ["a", "b", "c"],
            "title": ["طقم", "طقم", "طَقم"],
            "description": ["", "", ""],
            "metadata": [_meta("X", "jewellery"), _meta("X", "home"), _meta("X", "jewellery")],
        }
    )
    catalog = load_catalog(_write(tmp_path / "products.csv", frame))
    assert catalog.product_ids == ["a", "b"]  # same title and brand, other category: two products
    assert catalog.resolve(["a", "b", "c"]).tolist() == [0, 1, 0]


def test_products_without_text_are_not_merged(tmp_path: Path) -> None:
    frame = pd.DataFrame(
        {
            "id": ["a", "b", "c", "d"],
            "title": ["", "", "\u200f", "عطر"],
            "description": ["", "", "", ""],
            "metadata": ["", "", "", ""],
        }
    )
    report = DataReport()
    catalog = load_catalog(_write(tmp_path / "products.csv", frame), report=report)
    assert catalog.product_ids == ["a", "b", "c", "d"] and report.duplicates_collapsed == 0
    assert report.flagged["products.empty_text"] == 3


def test_ids_are_keyed_in_normalize_id_form(tmp_path: Path) -> None:
    frame = PRODUCTS.assign(id=["Ａ1\u200b", "p\u200e2"])  # full-width A, zero-width space, LRM
    products = _write(tmp_path / "products.csv", frame)
    photos = _write(tmp_path / "photos.csv", pd.DataFrame({"id": ["A1"], "thumbnail": ["a.jpg"]}))
    catalog = load_catalog(products, photos)
    assert catalog.product_ids == ["A1", "p2"] and catalog.photo_urls == ["a.jpg", ""]
    # the request side of the same rule: any spelling that normalizes alike finds the product
    assert catalog.resolve(["A1", "\u200fＡ1", "p2", " p2 ", "p3"]).tolist() == [0, 0, 1, 1, -1]
    events = pd.DataFrame(
        {
            "distinct_id": ["u\u200f1", "u1"],
            "product_id": ["Ａ1", "\u2066p2\u2069"],
            "event_name": ["view", "view"],
            "created_at": ["2024-01-01T00:00:00Z", "2024-01-02T00:00:00Z"],
        }
    )
    log = load_events(_write(tmp_path / "events.csv", events), catalog, show_progress=False)
    assert log.buyer_ids == ["u1"] and log.item.tolist() == [0, 1]
    old_bundle = catalog.to_frame().assign(product_id=["Ａ1", "p2"])  # written before NFKC
    assert Catalog.from_frame(old_bundle).resolve(["A1"]).tolist() == [0]


def test_brand_and_category_keys_ignore_format_chars() -> None:
    vocab = Vocabulary.build(["لمسة حرير", "\u200fلمسة حرير", "لمسة\u200b حرير"])
    assert len(vocab) == 2
    assert vocab.lookup(["\u202bلمسه حرير\u202c", "لمسة حرير"]).tolist() == [1, 1]
    assert np.all(vocab.lookup(["other"]) == 0)


def _write(path: Path, frame: pd.DataFrame) -> Path:
    frame.to_csv(path, index=False)
    return path
