import numpy as np
import pytest

from twotower.data.catalog import Catalog, Vocabulary, load_catalog
from twotower.data.report import DataReport
from twotower.data.schema import DataValidationError


def test_duplicates_collapse_and_stay_resolvable(tiny_data):
    report = DataReport()
    catalog = load_catalog(tiny_data["products"], tiny_data["photos"], report)
    assert catalog.product_ids == ["p1", "p2", "p3", "p4"]
    assert report.duplicates_collapsed == 1
    assert catalog.resolve(["p1-dup", "p1", "p2", "nope"]).tolist() == [0, 0, 1, -1]
    assert catalog.duplicate_ids()[0] == ["p1-dup"]


def test_text_metadata_photos_and_report(tiny_data):
    report = DataReport()
    catalog = load_catalog(tiny_data["products"], tiny_data["photos"], report)
    assert catalog.texts[0] == "خاتم ذهب خاتم عيار 21"  # encoder sees the original text
    assert catalog.texts[1] == "هاتف ذكي"  # empty description is still a product
    assert catalog.titles[2] == "NA" and catalog.descriptions[2] == "null"  # not parsed as missing
    assert catalog.brands[:3] == ["لازوردي", "Samsung", ""] and catalog.categories[2] == ""
    assert catalog.photo_urls[:2] == ["a.jpg", "b.jpg"]  # photo given for the duplicate id lands on p1
    assert report.flagged["products.malformed_metadata"] == 1
    assert report.dropped["products.missing_id"] == 1
    assert report.dropped["photos.unknown_product_id"] == 1


def test_vocabulary_uses_arabic_keys_and_unk():
    vocab = Vocabulary.build(["لازوردي", "لازوردى", "Samsung", ""])
    assert len(vocab) == 3  # <UNK> + two brands
    assert vocab.lookup(["لازوردى", "samsung", "unseen", ""]).tolist()[2:] == [0, 0]
    assert vocab.lookup(["لازوردى"])[0] == vocab.lookup(["لازوردي"])[0] != 0


def test_frame_round_trip(tiny_data):
    catalog = load_catalog(tiny_data["products"], tiny_data["photos"])
    n = len(catalog)
    catalog.popularity, catalog.repeats = np.arange(n, dtype=np.float32), np.arange(n, dtype=np.float32) / 2
    catalog.recent_popularity = np.ones(n, np.float32)
    back = Catalog.from_frame(catalog.to_frame())
    assert back.product_ids == catalog.product_ids and back.aliases == catalog.aliases
    assert back.texts == catalog.texts and back.photo_urls == catalog.photo_urls
    for name in ("popularity", "repeats", "recent_popularity"):
        np.testing.assert_array_equal(getattr(back, name), getattr(catalog, name))
    # a bundle written before the repeat statistics existed: zeros, one per product
    older = Catalog.from_frame(catalog.to_frame().drop(columns=["repeats", "recent_popularity"]))
    assert older.repeats.tolist() == [0.0] * n and older.recent_popularity.tolist() == [0.0] * n


def test_missing_title_column_is_a_clear_error(tmp_path):
    path = tmp_path / "products.csv"
    path.write_text("id,name\np1,x\n", encoding="utf-8")
    with pytest.raises(
        DataValidationError, match=r"products.csv: missing required column 'title'.*\['id', 'name'\]"
    ):
        load_catalog(path)


def test_empty_file_is_a_clear_error(tmp_path):
    path = tmp_path / "products.csv"
    path.write_text("", encoding="utf-8")
    with pytest.raises(DataValidationError, match="empty"):
        load_catalog(path)
    path.write_text("id,title\n", encoding="utf-8")
    with pytest.raises(DataValidationError, match="no data rows"):
        load_catalog(path)
