"""The bundled sample dataset: raw shape, deliberate mess, determinism, CLI, and learnable structure."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from twotower.data.sample import arabic_variant, ensure_sample, generate_sample, main, noise
from twotower.data.schema import normalize_key

ARABIC = re.compile("[\u0600-\u06ff]")
# Event spellings the generator promises, mapped by hand (independently of the loaders' alias table).
SPELLINGS = {
    "View": 0,
    "view": 0,
    "product_viewed": 0,
    "Product Viewed": 0,
    "AddToCart": 1,
    "add_to_cart": 1,
    "Add To Cart": 1,
    "added_to_cart": 1,
    "Purchase": 2,
    "purchase": 2,
    "order_completed": 2,
    "Order Completed": 2,
}


def _read(paths: dict[str, Path]) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    kw = {"dtype": str, "keep_default_na": False}
    return (
        pd.read_csv(paths["events"], **kw),
        pd.read_csv(paths["products"], **kw),
        pd.read_csv(paths["photos"], **kw),
    )


def _meta(raw: str) -> dict | None:
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None


def _seconds(created: pd.Series) -> np.ndarray:
    """Epoch seconds (float) for ISO (with or without Z), epoch-seconds and epoch-ms strings; NaN if bad."""
    digits = created.str.fullmatch(r"\d+").to_numpy(dtype=bool)
    num = pd.to_numeric(created.where(digits), errors="coerce").to_numpy(dtype=float)
    iso = pd.to_datetime(created.where(~digits), utc=True, format="ISO8601", errors="coerce")
    # via a Timedelta, not astype(int64): pandas 3 may keep seconds or microseconds, not nanoseconds
    iso_s = ((iso - pd.Timestamp(0, tz="UTC")) / pd.Timedelta(seconds=1)).to_numpy(
        dtype=float, na_value=np.nan
    )
    return np.where(digits, np.where(num > 1e11, num / 1000.0, num), iso_s)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return generate_sample(tmp_path_factory.mktemp("sample"), products=400, buyers=200, seed=0)


@pytest.fixture(scope="module")
def frames(data: dict[str, Path]) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    return _read(data)


def test_files_and_columns(data: dict[str, Path], frames) -> None:
    assert set(data) == {"events", "products", "photos"}
    events, products, photos = frames
    assert list(events.columns) == ["distinct_id", "product_id", "event_name", "created_at"]
    assert list(products.columns) == ["id", "title", "description", "metadata"]
    assert list(photos.columns) == ["id", "thumbnail"]
    assert len(products) == 400 and products["id"].is_unique
    assert products["id"].str.fullmatch(r"p\d{6}").all()
    assert 200 * 30 * 0.7 < len(events) < 200 * 30 * 1.3
    assert events["distinct_id"].str.fullmatch(r"u\d{5}").all()
    known = set(products["id"])
    assert set(events["product_id"]) - {""} <= known
    # photos for ~90% of products, URLs built from the id
    assert set(photos["id"]) <= known and 0.8 < len(photos) / len(products) < 0.97
    assert (photos["thumbnail"] == "https://cdn.example.com/p/" + photos["id"] + ".jpg").all()
    assert not list(data["events"].parent.glob("*.tmp")), "temporary files left behind"


def test_arabic_text_categories_and_brands(frames) -> None:
    _, products, _ = frames
    assert products["title"].map(lambda t: bool(ARABIC.search(t))).all()
    described = products["description"] != ""
    assert products.loc[described, "description"].map(lambda t: bool(ARABIC.search(t))).all()
    # the price band is visible in the title, so a text model can learn it
    assert products["title"].map(normalize_key).str.contains("اقتصادي|عملي|فاخر").all()
    metas = products["metadata"].map(_meta).dropna()
    brands = {m["brand"] for m in metas if "brand" in m}
    assert len({m["catalog_id"] for m in metas}) >= 8
    assert len(brands) >= 30
    assert any(ARABIC.search(b) for b in brands) and any(re.fullmatch(r"[A-Za-z' &.\-é]+", b) for b in brands)
    assert all(isinstance(m["price"], float) and m["price"] > 0 for m in metas)


def test_jewellery_vocabulary_is_present(frames) -> None:
    _, products, _ = frames
    titles = " ".join(products["title"])
    for word in ("خاتم", "سلسال", "قلادة", "أساور", "ذهب", "فضة"):
        assert word in titles


def test_messy_rows_present(frames) -> None:
    events, products, _ = frames
    names = events["event_name"]
    unknown = ~names.isin(list(SPELLINGS))
    assert set(SPELLINGS) <= set(names), "every real-world spelling should appear"
    assert 0.001 < unknown.mean() < 0.015
    bad_time = np.isnan(_seconds(events["created_at"]))
    assert 0.0005 < bad_time.mean() < 0.01
    assert (events["product_id"] == "").sum() >= 1
    # timestamps come as ISO with zone, ISO without zone, epoch seconds and epoch milliseconds
    created = events["created_at"]
    assert created.str.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ").mean() > 0.6
    assert created.str.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d").any()
    assert created.str.fullmatch(r"\d{10}").any() and created.str.fullmatch(r"\d{13}").any()
    # products: empty descriptions (~10%), malformed metadata (~2%), metadata without a brand
    assert 0.04 < (products["description"] == "").mean() < 0.2
    metas = products["metadata"].map(_meta)
    assert 1 <= metas.isna().sum() <= 0.06 * len(products)
    assert metas.dropna().map(lambda m: "brand" not in m).any()
    assert products["description"].str.contains("\n").any(), "multi-line descriptions exercise CSV quoting"


def test_timestamps_span_90_days_and_increase_per_buyer(frames) -> None:
    events, _, _ = frames
    t = _seconds(events["created_at"])
    ok = ~np.isnan(t)
    assert 80 < (np.nanmax(t) - np.nanmin(t)) / 86400 <= 91
    buyers = events["distinct_id"].to_numpy()[ok]
    tt = t[ok]
    # file order within a buyer is time order (ms epochs may fall anywhere inside their second)
    for buyer in np.unique(buyers)[:50]:
        assert np.all(np.diff(np.floor(tt[buyers == buyer])) >= -1)


def test_funnel_rates(frames) -> None:
    events, _, _ = frames
    counts = events["event_name"].map(SPELLINGS).value_counts()
    assert 0.12 < counts[1] / counts[0] < 0.3  # ~20% of views are carted
    assert 0.25 < counts[2] / counts[1] < 0.55  # ~40% of carts are bought


def test_duplicates_are_normalization_variants_and_referenced(frames) -> None:
    events, products, _ = frames
    brand = products["metadata"].map(lambda m: (_meta(m) or {}).get("brand", ""))
    key = (
        products["title"].map(normalize_key) + "|" + products["description"].map(normalize_key) + "|" + brand
    )
    groups = products.assign(key=key).groupby("key")["id"].agg(list)
    dup_groups = groups[groups.map(len) > 1]
    assert 0.015 * len(products) <= len(dup_groups) <= 0.05 * len(products)
    for ids in dup_groups:
        titles = products.set_index("id").loc[ids, "title"]
        assert titles.nunique() == len(ids), "a duplicate must differ from its original before normalization"
    referenced = set(events["product_id"])
    assert sum(all(i in referenced for i in ids) for ids in dup_groups) >= 1, "events must name duplicate ids"


@pytest.mark.parametrize("fn", noise.VARIANTS, ids=lambda f: f.__name__)
def test_each_variant_collapses_under_normalization(fn) -> None:
    rng = np.random.default_rng(0)
    text = "قلادة ذهب عيار 21 فاخرة من الفردان موديل 1042، هدية مثالية للمناسبات بتصميم عصري"
    changed = 0
    for _ in range(20):
        out = fn(text, rng)
        assert normalize_key(out) == normalize_key(text)
        changed += out != text
    assert changed == 20


def test_arabic_variant_always_differs() -> None:
    rng = np.random.default_rng(1)
    for text in ("عطر بالعنبر فاخر من أجمل موديل 2001", "لابتوب لون فضي عملي من Apple موديل 1500", "سيروم"):
        for _ in range(30):
            out = arabic_variant(text, rng)
            assert out != text and normalize_key(out) == normalize_key(text)


def test_deterministic_per_seed(tmp_path: Path) -> None:
    kw = {"products": 120, "buyers": 40}
    a = generate_sample(tmp_path / "a", seed=7, **kw)
    b = generate_sample(tmp_path / "b", seed=7, **kw)
    c = generate_sample(tmp_path / "c", seed=8, **kw)
    for name in ("events", "products", "photos"):
        assert a[name].read_bytes() == b[name].read_bytes()
        assert a[name].read_bytes() != c[name].read_bytes()


def test_events_per_buyer_scales_events(tmp_path: Path) -> None:
    few = _read(generate_sample(tmp_path / "few", products=100, buyers=50, events_per_buyer=5))[0]
    many = _read(generate_sample(tmp_path / "many", products=100, buyers=50, events_per_buyer=40))[0]
    assert 3 < len(many) / len(few) < 12


def test_cli_writes_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "cli"
    paths = main(
        ["--out", str(out), "--products", "80", "--buyers", "20", "--seed", "3", "--events-per-buyer", "10"]
    )
    assert all(p.is_file() and p.parent == out for p in paths.values())
    summary = capsys.readouterr().out.strip()
    assert summary.count("\n") == 0 and "80 products" in summary and "20 buyers" in summary
    assert len(pd.read_csv(paths["products"])) == 80


def test_cli_rejects_bad_sizes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["--out", str(tmp_path / "x"), "--products", "10"])
    assert "products must be at least" in capsys.readouterr().err
    with pytest.raises(ValueError, match="buyers"):
        generate_sample(tmp_path / "y", products=100, buyers=0)


def test_ensure_sample_generates_only_when_missing(tmp_path: Path) -> None:
    out = tmp_path / "data" / "sample"
    paths = ensure_sample(out, products=100, buyers=20, seed=1)
    assert all(p.is_file() for p in paths.values())
    paths["events"].write_text("marker\n", encoding="utf-8")
    ensure_sample(out, products=100, buyers=20, seed=1)
    assert paths["events"].read_text(encoding="utf-8") == "marker\n", "complete data must be left alone"
    paths["photos"].unlink()
    ensure_sample(out, products=100, buyers=20, seed=1)
    assert paths["photos"].is_file() and paths["events"].read_text(encoding="utf-8").startswith(
        "distinct_id,"
    )


def _recall_at_10(events: pd.DataFrame, products: pd.DataFrame) -> tuple[float, float, int]:
    """Recall@10 on events after the 90% time quantile: most-popular vs a category+brand taste ranker."""
    t = _seconds(events["created_at"])
    kind = events["event_name"].map(SPELLINGS)
    ok = kind.notna().to_numpy() & (events["product_id"] != "").to_numpy() & ~np.isnan(t)
    item = pd.Index(products["id"]).get_indexer(events["product_id"][ok])
    buyer, _ = pd.factorize(events["distinct_id"][ok])
    t = t[ok]
    train = t < np.quantile(t, 0.9)
    n_items = len(products)
    metas = products["metadata"].map(lambda m: _meta(m) or {})
    cat = pd.factorize(metas.map(lambda m: m.get("catalog_id", "?")))[0]
    brand = pd.factorize(metas.map(lambda m: m.get("brand", "?")))[0]

    pop = np.bincount(item[train], minlength=n_items).astype(float)
    # taste profile from training history: share of each buyer's events per category and per brand
    n_buyers = buyer.max() + 1
    cat_share = np.zeros((n_buyers, cat.max() + 1))
    brand_share = np.zeros((n_buyers, brand.max() + 1))
    np.add.at(cat_share, (buyer[train], cat[item[train]]), 1.0)
    np.add.at(brand_share, (buyer[train], brand[item[train]]), 1.0)
    seen = cat_share.sum(1)
    cat_share /= np.maximum(seen, 1)[:, None]
    brand_share /= np.maximum(seen, 1)[:, None]

    test = ~train & (seen[buyer] > 0)  # held-out events of buyers with a history
    tb, ti = buyer[test], item[test]
    top_pop = np.argsort(-pop, kind="stable")[:10]
    scores = cat_share[tb][:, cat] + brand_share[tb][:, brand] + 1e-3 * pop / pop.max()  # [n_test, n_items]
    top_taste = np.argpartition(-scores, 10, axis=1)[:, :10]  # [n_test, 10]
    return (
        float(np.isin(ti, top_pop).mean()),
        float((top_taste == ti[:, None]).any(1).mean()),
        int(test.sum()),
    )


def test_taste_beats_popularity(frames) -> None:
    """The learnable structure: a ranker using only each buyer's category/brand history gets >= 2x
    the recall@10 of most-popular on the last 10% of time, while most-popular stays non-trivial."""
    events, products, _ = frames
    pop, taste, n_test = _recall_at_10(events, products)
    assert n_test > 300
    assert pop > 0.02, f"popularity should remain a real baseline, recall@10={pop:.3f}"
    assert taste >= 2 * pop, f"taste recall@10={taste:.3f} vs popularity {pop:.3f}"


def test_ensure_sample_regenerates_when_settings_change(tmp_path):
    from twotower.data.sample import ensure_sample

    first = ensure_sample(tmp_path, products=60, buyers=20, seed=1)
    size_small = first["products"].stat().st_size
    again = ensure_sample(tmp_path, products=60, buyers=20, seed=1)
    assert again["products"].stat().st_mtime_ns == first["products"].stat().st_mtime_ns  # reused
    bigger = ensure_sample(tmp_path, products=120, buyers=20, seed=1)
    assert bigger["products"].stat().st_size > size_small
