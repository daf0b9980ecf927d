import json
from pathlib import Path

import pandas as pd
import pytest


def write_products(path: Path, rows: list[dict]) -> Path:
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


@pytest.fixture
def tiny_data(tmp_path: Path) -> dict[str, Path]:
    meta = lambda brand, cat: json.dumps({"brand": brand, "catalog_id": cat}, ensure_ascii=False)  # noqa: E731
    products = [
        {
            "id": "p1",
            "title": "خاتم ذهب",
            "description": "خاتم عيار 21",
            "metadata": meta("لازوردي", "jewelry"),
        },
        # duplicate of p1: tashkeel, other alef, Arabic-Indic digits
        {
            "id": "p1-dup",
            "title": "خَاتَم ذهب",
            "description": "خاتم عيار ٢١",
            "metadata": meta("لازوردى", "jewelry"),
        },
        {"id": "p2", "title": "هاتف ذكي", "description": "", "metadata": meta("Samsung", "electronics")},
        {
            "id": "p3",
            "title": "NA",
            "description": "null",
            "metadata": '{"brand": "X", "catalog_id',
        },  # malformed JSON
        {"id": "p4", "title": "عطر", "description": "عطر فاخر", "metadata": ""},
        {"id": "", "title": "no id", "description": "", "metadata": ""},
    ]
    events = [
        ("u1", "p1", "View", "2024-01-01T00:00:00Z"),
        ("u1", "p2", "Add To Cart", "2024-01-02 00:00:00"),
        ("u1", "p1-dup", "order_completed", "1704326400"),  # epoch seconds: 2024-01-04
        ("u1", "p4", "purchase", "1704412800000"),  # epoch ms: 2024-01-05
        ("u2", "p4", "View", "2024-01-01T00:00:00+00:00"),
        ("u2", "p999", "View", "2024-01-01T00:00:00Z"),  # unknown product
        ("u2", "p2", "page_scroll", "2024-01-01T00:00:00Z"),  # unknown event
        ("u2", "p2", "view", "not-a-date"),  # bad timestamp
        ("", "p2", "view", "2024-01-01T00:00:00Z"),  # missing buyer
        ("u2", "", "view", "2024-01-01T00:00:00Z"),  # missing product
        ("u2", "p1", "view", "2024-01-05T00:00:00Z"),
        ("u2", "p1", "view", "2024-01-05T00:00:00Z"),  # exact duplicate
        ("u2", "p2", "purchase", "2024-01-06T00:00:00Z"),
    ]
    products_path = write_products(tmp_path / "products.csv", products)
    events_path = tmp_path / "events.csv"
    pd.DataFrame(events, columns=["distinct_id", "product_id", "event_name", "created_at"]).to_csv(
        events_path, index=False
    )
    photos_path = tmp_path / "photos.csv"
    pd.DataFrame({"id": ["p1-dup", "p2", "zzz"], "thumbnail": ["a.jpg", "b.jpg", "c.jpg"]}).to_csv(
        photos_path, index=False
    )
    return {"products": products_path, "events": events_path, "photos": photos_path}
