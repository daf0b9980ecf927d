"""The bundled Arabic e-commerce sample dataset: a deterministic, vectorized generator.

Writes ``events.csv`` (distinct_id, product_id, event_name, created_at), ``products.csv``
(id, title, description, metadata) and ``photos.csv`` (id, thumbnail) in the raw shape of real exports,
mess included on purpose so that the loaders' cleaning rules are exercised:

- event names in several real spellings; ~0.5% extra rows with unknown names, ~0.3% bad timestamps,
  ~0.1% empty product ids; timestamps as ISO with/without zone, epoch seconds and epoch milliseconds;
- ~3% of products duplicated under a new id, written with variants that Arabic-aware normalization
  collapses (tashkeel, tatweel, alef forms, ى/ي, ة/ه, Arabic-Indic digits); events use the duplicate ids too;
- ~10% empty descriptions, ~2% malformed metadata JSON, ~4% metadata without a brand; photos for ~90%.

Behaviour: each buyer has latent tastes (1-2 favourite categories, a preferred material/colour per category,
2-3 favourite brands, a price band) that drive sessions of views, then add_to_cart and purchase. Item
popularity is Zipf-like within each category, so a most-popular ranking is a real but beatable baseline;
everything a buyer's taste depends on (category, brand, material/colour, price band) is visible in the text.

Run ``python -m twotower.data.sample --out data/sample --products 2000 --buyers 1000 --seed 0``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

log = logging.getLogger(__name__)

FILES: tuple[str, ...] = ("events", "products", "photos")
MIN_PRODUCTS = 50

# --- catalogue vocabulary ----------------------------------------------------------------------------
# Each category: slug (metadata catalog_id), share of the catalogue and of buyers' attention, product type
# nouns (with grammatical gender, for adjective agreement), six materials/colours, four brands (name, tier)
# and phrases for descriptions. Brand tier biases a product's price band (real brands sit in a band).
_M, _F = 0, 1
_CATEGORIES: tuple[dict, ...] = (
    {
        "slug": "jewellery",
        "weight": 1.3,
        "types": (("خاتم", _M), ("سلسال", _M), ("قلادة", _F), ("أساور", _F), ("حلق", _M), ("طقم", _M)),
        "variants": ("ذهب عيار 21", "ذهب عيار 18", "ذهب أبيض", "فضة عيار 925", "مرصع بالألماس", "باللؤلؤ"),
        "brands": (("لازوردي", 2), ("داماس", 2), ("الفردان", 1), ("Swarovski", 1)),
        "uses": ("هدية مثالية للمناسبات والأعراس", "يأتي في علبة هدايا أنيقة", "مع شهادة ضمان للمعدن"),
        "price": 900.0,
    },
    {
        "slug": "women_fashion",
        "weight": 1.4,
        "types": (
            ("فستان", _M),
            ("عباية", _F),
            ("بلوزة", _F),
            ("تنورة", _F),
            ("جاكيت", _M),
            ("حقيبة يد", _F),
        ),
        "variants": ("لون أسود", "لون أبيض", "لون كحلي", "لون بيج", "لون وردي", "لون أحمر"),
        "brands": (("Zara", 1), ("Mango", 1), ("أناقة", 0), ("لمسة حرير", 2)),
        "uses": ("قماش ناعم ومريح طوال اليوم", "مناسب للسهرات والمناسبات", "متوفر بجميع المقاسات"),
        "price": 220.0,
    },
    {
        "slug": "men_fashion",
        "weight": 1.0,
        "types": (("ثوب", _M), ("شماغ", _M), ("قميص", _M), ("بنطال", _M), ("معطف", _M), ("حزام جلد", _M)),
        "variants": ("لون أبيض", "لون أسود", "لون رمادي", "لون كحلي", "لون بني", "لون زيتي"),
        "brands": (("الدفة", 1), ("لومار", 2), ("Levi's", 1), ("ستايل", 0)),
        "uses": ("تفصيل دقيق وخامة عالية", "مناسب للعمل والمناسبات", "سهل العناية والغسيل"),
        "price": 250.0,
    },
    {
        "slug": "electronics",
        "weight": 1.2,
        "types": (
            ("جوال ذكي", _M),
            ("سماعات لاسلكية", _F),
            ("شاحن سريع", _M),
            ("ساعة ذكية", _F),
            ("لابتوب", _M),
            ("شاشة تلفزيون", _F),
        ),
        "variants": ("لون أسود", "لون فضي", "لون أزرق", "لون ذهبي", "لون أبيض", "لون رمادي"),
        "brands": (("Samsung", 1), ("Apple", 2), ("Xiaomi", 0), ("هواوي", 1)),
        "uses": ("ضمان سنتين من الوكيل", "بطارية تدوم طويلا", "يدعم الشحن السريع والاتصال اللاسلكي"),
        "price": 1500.0,
    },
    {
        "slug": "beauty",
        "weight": 1.1,
        "types": (
            ("أحمر شفاه", _M),
            ("كريم مرطب", _M),
            ("ماسكارا", _F),
            ("كريم أساس", _M),
            ("غسول وجه", _M),
            ("سيروم", _M),
        ),
        "variants": (
            "للبشرة الجافة",
            "للبشرة الدهنية",
            "للبشرة الحساسة",
            "بدرجة نود",
            "بدرجة وردية",
            "بخلاصة الورد",
        ),
        "brands": (("هدى بيوتي", 2), ("L'Oréal", 1), ("Nivea", 0), ("جمالك", 0)),
        "uses": ("مناسب للاستخدام اليومي", "خال من البارابين", "ثبات يدوم طوال اليوم"),
        "price": 120.0,
    },
    {
        "slug": "perfumes",
        "weight": 1.0,
        "types": (
            ("عطر", _M),
            ("دهن عود", _M),
            ("بخور", _M),
            ("معطر شعر", _M),
            ("مسك", _M),
            ("طقم عطور", _M),
        ),
        "variants": ("برائحة العود", "بالورد الطائفي", "بالمسك الأبيض", "بالعنبر", "بالزعفران", "بالفانيلا"),
        "brands": (("العربية للعود", 2), ("عبدالصمد القرشي", 2), ("أجمل", 1), ("Rasasi", 1)),
        "uses": ("ثبات عال وفوحان مميز", "مناسب للرجال والنساء", "هدية راقية في علبة فاخرة"),
        "price": 350.0,
    },
    {
        "slug": "home",
        "weight": 0.9,
        "types": (
            ("طقم أواني", _M),
            ("مفرش سرير", _M),
            ("سجادة", _F),
            ("مصباح", _M),
            ("دلة قهوة", _F),
            ("طقم فناجين", _M),
        ),
        "variants": ("ستانلس ستيل", "من الخشب", "من السيراميك", "من القطن", "من النحاس", "من الزجاج"),
        "brands": (("IKEA", 0), ("هوم سنتر", 1), ("Tefal", 1), ("بيت الزين", 2)),
        "uses": ("يضفي لمسة دافئة على منزلك", "سهل التنظيف", "مناسب للضيافة والمناسبات"),
        "price": 300.0,
    },
    {
        "slug": "kids",
        "weight": 0.8,
        "types": (
            ("لعبة تركيب", _F),
            ("دمية", _F),
            ("عربة أطفال", _F),
            ("طقم ملابس أطفال", _M),
            ("حقيبة مدرسية", _F),
            ("سيارة تحكم", _F),
        ),
        "variants": ("للأولاد", "للبنات", "للرضع", "من عمر 3 سنوات", "من عمر 6 سنوات", "بألوان زاهية"),
        "brands": (("LEGO", 2), ("Fisher-Price", 1), ("Mothercare", 1), ("دنيا الأطفال", 0)),
        "uses": ("آمن ومطابق لمعايير السلامة", "ينمي مهارات الطفل", "هدية مثالية للأطفال"),
        "price": 180.0,
    },
    {
        "slug": "sports",
        "weight": 0.8,
        "types": (
            ("حذاء جري", _M),
            ("كرة قدم", _F),
            ("دمبل", _M),
            ("سجادة يوغا", _F),
            ("بدلة رياضية", _F),
            ("دراجة هوائية", _F),
        ),
        "variants": ("لون أسود", "لون أزرق", "لون أحمر", "لون أبيض", "لون أخضر", "لون رمادي"),
        "brands": (("Nike", 2), ("Adidas", 1), ("Puma", 1), ("سن آند ساند", 0)),
        "uses": ("مناسب للتمارين اليومية", "خامة تسمح بالتهوية", "تصميم يناسب المحترفين والمبتدئين"),
        "price": 260.0,
    },
    {
        "slug": "food",
        "weight": 0.9,
        "types": (
            ("تمر", _M),
            ("قهوة عربية", _F),
            ("عسل", _M),
            ("شاي", _M),
            ("مكسرات", _F),
            ("شوكولاتة", _F),
        ),
        "variants": ("سكري", "خلاص", "عجوة المدينة", "سدر", "بالهيل", "بالزعفران"),
        "brands": (("بتيل", 2), ("الرفاعي", 1), ("Patchi", 2), ("خيرات المزرعة", 0)),
        "uses": ("طازج ومن أجود الأنواع", "مثالي للضيافة في رمضان والأعياد", "معبأ بعناية للحفاظ على الجودة"),
        "price": 90.0,
    },
)
_N_CAT = len(_CATEGORIES)
_N_TYPE = 6
_N_VAR = 6
_N_BRAND = 4  # per category
_N_BAND = 3
_CELLS = _N_BRAND * _N_VAR * _N_BAND  # taste cells per category: brand x material/colour x price band
# Price band words, by noun gender; the band must be visible in the text so a text model can learn it.
_BAND_ADJ = (("اقتصادي", "اقتصادية"), ("عملي", "عملية"), ("فاخر", "فاخرة"))
_BAND_PHRASE = ("بسعر اقتصادي يناسب الجميع", "جودة ممتازة بسعر معقول", "تشطيب فاخر وجودة استثنائية")
_BAND_PRICE = (0.4, 1.0, 3.0)
_STYLES = ("عصري", "كلاسيكي", "أنيق", "عملي", "جديد")
_DESC_TEMPLATES = (
    "{type} {variant} من {brand}. {band}. {use}.",
    "منتج أصلي من {brand}: {type} {variant}، {band}. {use}.",
    "{use}. {type} {variant} بتصميم {style} من {brand}، {band}.",
)

# --- event vocabulary --------------------------------------------------------------------------------
# One spelling set per tracking source; a buyer mostly uses one source (web, app, ...), sometimes another.
_EVENT_SPELLINGS = (
    ("View", "AddToCart", "Purchase"),
    ("view", "add_to_cart", "purchase"),
    ("product_viewed", "added_to_cart", "order_completed"),
    ("Product Viewed", "Add To Cart", "Order Completed"),
)
_UNKNOWN_EVENTS = ("page_scroll", "wishlist_share", "banner_click", "session_start", "search_submitted")
_BAD_TIMESTAMPS = ("not-a-date", "", "2024-13-45T99:99:99Z", "N/A", "null")
_T0 = np.datetime64("2024-01-01T00:00:00", "s")
_DAYS = 90
# Hour-of-day weights (UTC): quiet nights, evening peak.
_HOURS = np.array(
    [2, 1, 1, 1, 1, 2, 3, 4, 5, 6, 6, 6, 7, 7, 6, 6, 7, 8, 10, 12, 13, 12, 8, 4], dtype=np.float64
)

# Messy fractions (documented in the module docstring and asserted roughly by the tests).
DUPLICATE_FRACTION = 0.03
EMPTY_DESCRIPTION_FRACTION = 0.10
MALFORMED_METADATA_FRACTION = 0.02
MISSING_BRAND_FRACTION = 0.04
PHOTO_FRACTION = 0.90
UNKNOWN_EVENT_FRACTION = 0.005
BAD_TIMESTAMP_FRACTION = 0.003
EMPTY_PRODUCT_ID_FRACTION = 0.001
DUPLICATE_EVENT_SHARE = 0.3  # share of events on a duplicated product that name the duplicate id

# Behaviour knobs: a taste cell's log-weight = log(cell popularity) + these bonuses (see _events_chunk).
_BRAND_BONUS = 2.5
_VARIANT_BONUS = 1.5
_BAND_BONUS = 1.2  # per band of distance, subtracted
_EXPLORE = 0.15
_ZIPF = 1.0
_SESSION_LEN = 4.0
_FUNNEL_VIEWS = 1.0 / (1.0 + 0.2 + 0.08)  # views per event when ~20% of views cart and ~40% of carts buy
_BUYER_CHUNK = 8192


@dataclass
class _Catalog:
    """Base (non-duplicate) products as integer attributes, plus the sampling tables for events."""

    cat: np.ndarray  # int [n_base]
    brand: np.ndarray  # int [n_base], local to the category (0..3)
    var: np.ndarray  # int [n_base]
    band: np.ndarray  # int [n_base]
    cell: np.ndarray  # int [n_base], global taste cell cat * _CELLS + local cell
    q: np.ndarray  # float [n_base], Zipf popularity within its (category, brand) pool
    by_cell: np.ndarray  # base item indices sorted by cell
    cum_q: np.ndarray  # cumulative q in by_cell order
    cell_lo: np.ndarray  # float [n_cells], cum_q mass before the cell
    cell_mass: np.ndarray  # float [n_cells]
    cat_mass: np.ndarray  # float [_N_CAT]
    id_of: np.ndarray  # product id string for each base item
    dup_id_of: np.ndarray  # duplicate's id string for each base item ("" when none)


def _local_cell(brand: np.ndarray, var: np.ndarray, band: np.ndarray) -> np.ndarray:
    return (brand * _N_VAR + var) * _N_BAND + band


# --- products ----------------------------------------------------------------------------------------
_TASHKEEL_MARKS = ("\u064e", "\u064f", "\u0650", "\u0651", "\u0652", "\u064b")
_NON_JOINING = set("اأإآدذرزوةىء")  # letters that do not join to the next one: no tatweel after them
_AR_LETTERS = {chr(c) for c in range(0x0621, 0x064B)}


def _add_tashkeel(text: str, rng: np.random.Generator) -> str:
    coin = rng.random(len(text)) < 0.35
    marks = rng.integers(0, len(_TASHKEEL_MARKS), len(text))
    out = []
    for ch, c, m in zip(text, coin.tolist(), marks.tolist(), strict=True):
        out.append(ch)
        if c and ch in _AR_LETTERS and ch not in "اأإآىة":
            out.append(_TASHKEEL_MARKS[m])
    return "".join(out)


def _add_tatweel(text: str, rng: np.random.Generator) -> str:
    spots = [
        i
        for i in range(len(text) - 1)
        if text[i] in _AR_LETTERS and text[i] not in _NON_JOINING and text[i + 1] in _AR_LETTERS
    ]
    if not spots:
        return text
    i = spots[rng.integers(len(spots))]
    return text[: i + 1] + "\u0640" * int(rng.integers(1, 3)) + text[i + 1 :]


def _swap_alef(text: str, rng: np.random.Generator) -> str:
    words = text.split(" ")
    spots = [i for i, w in enumerate(words) if w[:1] in ("ا", "أ", "إ", "آ")]
    if not spots:
        return text
    i = spots[rng.integers(len(spots))]
    w = words[i]
    words[i] = ("أ" if w[0] == "ا" else "ا") + w[1:]
    return " ".join(words)


def _swap_yeh(text: str, rng: np.random.Generator) -> str:
    words = text.split(" ")
    spots = [i for i, w in enumerate(words) if len(w) > 1 and w[-1] in ("ي", "ى")]
    if not spots:
        return text
    i = spots[rng.integers(len(spots))]
    words[i] = words[i][:-1] + ("ى" if words[i][-1] == "ي" else "ي")
    return " ".join(words)


def _swap_teh_marbuta(text: str, rng: np.random.Generator) -> str:
    words = text.split(" ")
    spots = [i for i, w in enumerate(words) if len(w) > 1 and w[-1] == "ة"]
    if not spots:
        return text
    i = spots[rng.integers(len(spots))]
    words[i] = words[i][:-1] + "ه"
    return " ".join(words)


def _indic_digits(text: str, rng: np.random.Generator) -> str:
    return text.translate({ord(str(d)): chr(0x0660 + d) for d in range(10)})


_VARIANTS = (_add_tashkeel, _add_tatweel, _swap_alef, _swap_yeh, _swap_teh_marbuta, _indic_digits)


def arabic_variant(text: str, rng: np.random.Generator) -> str:
    """The same text written differently: 1-2 of tashkeel, tatweel, alef form, ى/ي, ة/ه, Arabic-Indic digits.

    Every change is one that Arabic-aware normalization undoes, so the result is a duplicate after
    normalization but a different string before it. Always differs from `text` when it has Arabic letters.
    """
    out = text
    for k in rng.choice(len(_VARIANTS), size=int(rng.integers(1, 3)), replace=False):
        out = _VARIANTS[int(k)](out, rng)
    if out == text:  # none applied (e.g. no final ة): diacritics always apply to Arabic text
        for _ in range(10):
            out = _add_tashkeel(text, rng)
            if out != text:
                break
    return out


def _make_products(n_products: int, rng: np.random.Generator) -> tuple[_Catalog, pd.DataFrame, pd.DataFrame]:
    n_dup = max(1, int(round(DUPLICATE_FRACTION * n_products)))
    n_base = n_products - n_dup
    cat_w = np.array([c["weight"] for c in _CATEGORIES])
    # every category gets items, the rest by category share
    cat = np.concatenate([np.arange(_N_CAT), rng.choice(_N_CAT, size=n_base - _N_CAT, p=cat_w / cat_w.sum())])
    rng.shuffle(cat)
    typ = rng.integers(0, _N_TYPE, n_base)
    var = rng.integers(0, _N_VAR, n_base)
    brand = rng.integers(0, _N_BRAND, n_base)
    tier = np.array([[b[1] for b in c["brands"]] for c in _CATEGORIES])[cat, brand]
    band = np.where(rng.random(n_base) < 0.6, tier, rng.integers(0, _N_BAND, n_base))
    cell = cat * _CELLS + _local_cell(brand, var, band)

    # Zipf-like popularity within candidate pools (category x brand): q = 1 / rank^s, ranks a random
    # permutation. Pools rather than whole categories keep the global top-10 from dominating every buyer.
    pool = cat * _N_BRAND + brand
    order = np.lexsort((rng.random(n_base), pool))
    rank = np.empty(n_base, dtype=np.int64)
    sp = pool[order]
    first = np.searchsorted(sp, sp, side="left")
    rank[order] = np.arange(n_base) - first
    q = 1.0 / (rank + 1.0) ** _ZIPF

    by_cell = np.argsort(cell, kind="stable")
    cum_q = np.cumsum(q[by_cell])
    n_cells = _N_CAT * _CELLS
    cell_mass = np.bincount(cell, weights=q, minlength=n_cells)
    cell_lo = np.concatenate([[0.0], np.cumsum(cell_mass)[:-1]])
    cat_mass = np.bincount(cat, weights=q, minlength=_N_CAT)

    # ids: a random permutation so that duplicates are spread among the originals
    width = max(6, len(str(n_products - 1)))
    ids = np.array([f"p{i:0{width}d}" for i in rng.permutation(n_products)])
    id_of, dup_ids = ids[:n_base], ids[n_base:]
    dup_src = np.sort(rng.choice(n_base, size=n_dup, replace=False))
    dup_id_of = np.full(n_base, "", dtype=ids.dtype)
    dup_id_of[dup_src] = dup_ids

    # text and metadata
    model_code = rng.permutation(n_base) + 1000  # unique per product, so only real duplicates collide
    style = rng.integers(0, len(_STYLES), n_base)
    templ = rng.integers(0, len(_DESC_TEMPLATES), n_base)
    use = rng.integers(0, 3, n_base)
    empty_desc = rng.random(n_base) < EMPTY_DESCRIPTION_FRACTION
    newline_desc = rng.random(n_base) < 0.02  # multi-line descriptions: CSV quoting must cope
    price = np.round(
        np.array([c["price"] for c in _CATEGORIES])[cat]
        * np.array(_BAND_PRICE)[band]
        * rng.lognormal(0.0, 0.3, n_base),
        2,
    )
    bad_meta = rng.random(n_base) < MALFORMED_METADATA_FRACTION
    no_brand = ~bad_meta & (rng.random(n_base) < MISSING_BRAND_FRACTION)
    bad_meta[dup_src] = no_brand[dup_src] = False  # duplicates must be matchable by brand
    price = price.tolist()
    slug_json = [json.dumps(c["slug"]) for c in _CATEGORIES]
    brand_json = [[json.dumps(b[0], ensure_ascii=False) for b in c["brands"]] for c in _CATEGORIES]
    cut_kind = rng.random(n_base) < 0.7
    cut_at = rng.integers(0, 1 << 30, n_base)
    titles, descs, metas = [], [], []
    for i in range(n_base):
        c = _CATEGORIES[cat[i]]
        noun, gender = c["types"][typ[i]]
        b = c["brands"][brand[i]][0]
        v = c["variants"][var[i]]
        titles.append(f"{noun} {v} {_BAND_ADJ[band[i]][gender]} من {b} موديل {model_code[i]}")
        if empty_desc[i]:
            descs.append("")
        else:
            d = _DESC_TEMPLATES[templ[i]].format(
                type=noun,
                variant=v,
                brand=b,
                band=_BAND_PHRASE[band[i]],
                use=c["uses"][use[i]],
                style=_STYLES[style[i]],
            )
            descs.append(d.replace(". ", ".\n", 1) if newline_desc[i] else d)
        # formatted by hand (json.dumps per row is the slowest part at 100K products); same output
        text = f'"catalog_id": {slug_json[cat[i]]}, "price": {price[i]!r}}}'
        text = "{" + text if no_brand[i] else f'{{"brand": {brand_json[cat[i]][brand[i]]}, ' + text
        if bad_meta[i]:  # truncated export or a Python repr instead of JSON
            if cut_kind[i]:
                text = text[: cut_at[i] % (len(text) - 6) + 5]
            else:
                text = repr({"brand": b, "catalog_id": c["slug"], "price": price[i]})
        metas.append(text)
    dup_titles = [arabic_variant(titles[i], rng) for i in dup_src]
    dup_descs = [
        arabic_variant(descs[i], rng) if descs[i] and rng.random() < 0.5 else descs[i] for i in dup_src
    ]
    dup_metas = []
    for i in dup_src:  # same brand and category, a slightly different listed price
        meta = json.loads(metas[i])
        meta["price"] = round(meta["price"] * float(rng.uniform(0.9, 1.1)), 2)
        dup_metas.append(json.dumps(meta, ensure_ascii=False))

    products = pd.DataFrame(
        {
            "id": ids,
            "title": titles + dup_titles,
            "description": descs + dup_descs,
            "metadata": metas + dup_metas,
        }
    ).sort_values("id", ignore_index=True)
    has_photo = rng.random(n_products) < PHOTO_FRACTION
    photo_ids = products["id"].to_numpy()[has_photo]
    photos = pd.DataFrame(
        {"id": photo_ids, "thumbnail": [f"https://cdn.example.com/p/{p}.jpg" for p in photo_ids]}
    )
    catalog = _Catalog(
        cat, brand, var, band, cell, q, by_cell, cum_q, cell_lo, cell_mass, cat_mass, id_of, dup_id_of
    )
    return catalog, products, photos


# --- events ------------------------------------------------------------------------------------------
def _sample_in_ranges(cum: np.ndarray, lo: np.ndarray, mass: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Positions in `cum` (a cumulative sum) drawn within mass ranges [lo, lo + mass) at fractions u."""
    pos = np.searchsorted(cum, lo + u * mass, side="right")
    return np.minimum(pos, len(cum) - 1)


def _events_chunk(
    cat: _Catalog, b0: int, nb: int, events_per_buyer: float, rng: np.random.Generator
) -> list[str]:
    """CSV lines of the events of buyers b0..b0+nb-1, sorted by time."""
    # --- latent tastes [nb, 2 slots] ---
    cat_w = np.array([c["weight"] for c in _CATEGORIES])
    fav = np.empty((nb, 2), dtype=np.int64)
    fav[:, 0] = rng.choice(_N_CAT, size=nb, p=cat_w / cat_w.sum())
    fav[:, 1] = (fav[:, 0] + rng.integers(1, _N_CAT, nb)) % _N_CAT
    two_cats = rng.random(nb) < 0.4
    pref_var = rng.integers(0, _N_VAR, (nb, 2))
    pref_band = rng.choice(_N_BAND, size=nb, p=[0.35, 0.4, 0.25])
    # favourite brands: 2 in the main category (3 for some one-category buyers), 1 in the second
    brand_rank = np.argsort(rng.random((nb, 2, _N_BRAND)), axis=2)
    n_fav = np.stack([np.where(~two_cats & (rng.random(nb) < 0.4), 3, 2), np.where(two_cats, 1, 0)], axis=1)
    fav_brand = brand_rank < n_fav[:, :, None]  # bool [nb, 2, 4]

    # --- per (buyer, slot) distribution over the slot category's taste cells: [nb, 2, _CELLS] ---
    k = np.arange(_CELLS)
    k_brand, k_var, k_band = k // (_N_VAR * _N_BAND), (k // _N_BAND) % _N_VAR, k % _N_BAND
    mass = cat.cell_mass.reshape(_N_CAT, _CELLS)[fav]  # [nb, 2, C]
    logit = (
        _BRAND_BONUS * fav_brand[:, :, k_brand]
        + _VARIANT_BONUS * (k_var[None, None, :] == pref_var[:, :, None])
        - _BAND_BONUS * np.abs(k_band[None, None, :] - pref_band[:, None, None])
    )
    w = mass * np.exp(logit)
    cdf = np.cumsum(w, axis=2)
    cdf /= cdf[:, :, -1:]
    flat_cdf = (cdf + np.arange(nb * 2).reshape(nb, 2, 1)).ravel()  # row r's cdf lives in (r, r+1]

    # --- sessions and views ---
    n_events = np.maximum(2, np.round(rng.lognormal(np.log(events_per_buyer) - 0.32, 0.8, nb))).astype(
        np.int64
    )
    n_views = np.maximum(1, np.round(n_events * _FUNNEL_VIEWS)).astype(np.int64)
    n_sess = np.maximum(1, np.round(n_views / _SESSION_LEN)).astype(np.int64)
    sess_buyer = np.repeat(np.arange(nb), n_sess)
    ns = len(sess_buyer)
    sess_kind = np.where(
        rng.random(ns) < _EXPLORE, 2, np.where(two_cats[sess_buyer] & (rng.random(ns) < 0.35), 1, 0)
    )
    sess_cat = np.where(sess_kind == 2, rng.choice(_N_CAT, size=ns, p=cat_w / cat_w.sum()), 0)
    sess_cat = np.where(sess_kind < 2, fav[sess_buyer, np.minimum(sess_kind, 1)], sess_cat)
    day = rng.integers(0, _DAYS, ns)
    sec = rng.choice(24, size=ns, p=_HOURS / _HOURS.sum()) * 3600 + rng.integers(0, 3600, ns)
    sess_t = day * 86400 + sec

    view_buyer = np.repeat(np.arange(nb), n_views)
    nv = len(view_buyer)
    # each view joins one of its buyer's sessions at random
    first_sess = np.concatenate([[0], np.cumsum(n_sess)[:-1]])
    view_sess = first_sess[view_buyer] + (rng.random(nv) * n_sess[view_buyer]).astype(np.int64)
    view_sess.sort()  # views are grouped per buyer already, so sorting keeps buyers and orders sessions
    kind = sess_kind[view_sess]
    u1, u2 = rng.random(nv), rng.random(nv)
    taste = kind < 2
    row = view_buyer * 2 + np.minimum(kind, 1)
    cell_local = np.searchsorted(flat_cdf, row + u1, side="left") - row * _CELLS
    cell_local = np.clip(cell_local, 0, _CELLS - 1)
    vcat = sess_cat[view_sess]
    g_cell = vcat * _CELLS + cell_local
    in_cell = cat.by_cell[_sample_in_ranges(cat.cum_q, cat.cell_lo[g_cell], cat.cell_mass[g_cell], u2)]
    # exploration: any item of the session's category, by popularity (cells of a category are contiguous)
    cat_lo = cat.cell_lo[vcat * _CELLS]
    explore = cat.by_cell[_sample_in_ranges(cat.cum_q, cat_lo, cat.cat_mass[vcat], u2)]
    item = np.where(taste, in_cell, explore)

    # view times: session start + increasing gaps within the session
    gaps = 5 + rng.exponential(70.0, nv)
    cum = np.cumsum(gaps)
    sess_first_view = np.searchsorted(view_sess, view_sess, side="left")
    view_t = sess_t[view_sess] + (cum - cum[sess_first_view] + gaps[sess_first_view]).astype(np.int64)

    # --- funnel: carting and buying are likelier the better the item matches the buyer's taste ---
    slot = np.where(
        cat.cat[item] == fav[view_buyer, 0], 0, np.where(cat.cat[item] == fav[view_buyer, 1], 1, -1)
    )
    slot = np.where((slot == 1) & ~two_cats[view_buyer], -1, slot)
    s = np.maximum(slot, 0)
    match = (slot >= 0) * (
        fav_brand[view_buyer, s, cat.brand[item]].astype(np.int64)
        + (pref_var[view_buyer, s] == cat.var[item])
        + (pref_band[view_buyer] == cat.band[item])
    )
    carted = rng.random(nv) < 0.06 + 0.07 * match
    bought = carted & (rng.random(nv) < 0.25 + 0.08 * match)
    cart_t = view_t + 10 + rng.exponential(120.0, nv).astype(np.int64)
    buy_t = cart_t + 30 + rng.exponential(400.0, nv).astype(np.int64)

    e_buyer = np.concatenate([view_buyer, view_buyer[carted], view_buyer[bought]])
    e_item = np.concatenate([item, item[carted], item[bought]])
    e_type = np.concatenate(
        [np.zeros(nv, np.int64), np.ones(carted.sum(), np.int64), np.full(bought.sum(), 2)]
    )
    e_t = np.concatenate([view_t, cart_t[carted], buy_t[bought]])

    # unknown event names: extra rows beside real ones (same buyer, product, a second later)
    extra = rng.random(len(e_t)) < UNKNOWN_EVENT_FRACTION
    e_buyer = np.concatenate([e_buyer, e_buyer[extra]])
    e_item = np.concatenate([e_item, e_item[extra]])
    e_type = np.concatenate([e_type, np.full(extra.sum(), -1)])
    e_t = np.concatenate([e_t, e_t[extra] + 1])

    order = np.lexsort((e_type, e_t))  # file order is by time within the chunk
    e_buyer, e_item, e_type, e_t = e_buyer[order], e_item[order], e_type[order], e_t[order]
    n = len(e_t)

    # --- strings ---
    width = max(5, len(str(b0 + nb - 1)))
    buyer_ids = np.array([f"u{b:0{width}d}" for b in range(b0, b0 + nb)])
    product = cat.id_of[e_item]
    dup = cat.dup_id_of[e_item]
    use_dup = (dup != "") & (rng.random(n) < DUPLICATE_EVENT_SHARE)
    product = np.where(use_dup, dup, product)
    product[rng.random(n) < EMPTY_PRODUCT_ID_FRACTION] = ""

    source = np.where(
        rng.random(n) < 0.85, rng.integers(0, len(_EVENT_SPELLINGS), nb)[e_buyer], rng.integers(0, 4, n)
    )
    spellings = np.array(_EVENT_SPELLINGS)  # [source, type]
    names = spellings[source, np.maximum(e_type, 0)].astype(object)
    unknown = e_type < 0
    names[unknown] = np.array(_UNKNOWN_EVENTS, dtype=object)[
        rng.integers(0, len(_UNKNOWN_EVENTS), unknown.sum())
    ]

    created = _format_times(e_t, rng)
    bad_t = rng.random(n) < BAD_TIMESTAMP_FRACTION
    created[bad_t] = np.array(_BAD_TIMESTAMPS, dtype=object)[
        rng.integers(0, len(_BAD_TIMESTAMPS), bad_t.sum())
    ]
    # no field can hold a comma, quote or newline, so plain joining is valid CSV (and 5x faster than pandas)
    columns = (buyer_ids[e_buyer].tolist(), product.tolist(), names.tolist(), created.tolist())
    return [f"{b},{p},{e},{t}\n" for b, p, e, t in zip(*columns, strict=True)]


def _format_times(t: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Seconds since _T0 -> strings: ISO with Z (~80%), ISO without zone (~8%), epoch s (~6%) and ms (~6%)."""
    stamps = _T0 + t.astype("timedelta64[s]")
    iso = np.datetime_as_string(stamps, unit="s")
    epoch = stamps.astype(np.int64)
    fmt = rng.choice(4, size=len(t), p=[0.80, 0.08, 0.06, 0.06])
    out = np.strings.add(iso, "Z").astype(object)
    m = fmt == 1
    out[m] = np.strings.replace(iso[m], "T", " ")
    m = fmt == 2
    out[m] = epoch[m].astype(str)
    m = fmt == 3
    out[m] = (epoch[m] * 1000 + rng.integers(0, 1000, m.sum())).astype(str)
    return out


# --- public API --------------------------------------------------------------------------------------
def _paths(out_dir: Path) -> dict[str, Path]:
    return {name: out_dir / f"{name}.csv" for name in FILES}


def _generate(
    out_dir: str | Path, products: int, buyers: int, seed: int, events_per_buyer: float
) -> tuple[dict[str, Path], dict[str, int]]:
    if products < MIN_PRODUCTS:
        raise ValueError(
            f"products must be at least {MIN_PRODUCTS} (one per category and then some), got {products}"
        )
    if buyers < 1:
        raise ValueError(f"buyers must be at least 1, got {buyers}")
    if not events_per_buyer > 0:
        raise ValueError(f"events_per_buyer must be positive, got {events_per_buyer}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = _paths(out)
    tmp = {name: p.with_name(f".{p.name}.{os.getpid()}.tmp") for name, p in paths.items()}
    csv_args = {"index": False, "lineterminator": "\n"}
    try:
        catalog, product_df, photo_df = _make_products(products, np.random.default_rng([seed, 0]))
        product_df.to_csv(tmp["products"], **csv_args)
        photo_df.to_csv(tmp["photos"], **csv_args)
        n_events = 0
        chunks = range(0, buyers, _BUYER_CHUNK)
        with open(tmp["events"], "w", encoding="utf-8", newline="") as f:
            f.write("distinct_id,product_id,event_name,created_at\n")
            for b0 in tqdm(
                chunks, desc="sample events", unit="chunk", disable=None if len(chunks) > 1 else True
            ):
                nb = min(_BUYER_CHUNK, buyers - b0)
                # one RNG stream per chunk: the output depends on the arguments only
                lines = _events_chunk(catalog, b0, nb, events_per_buyer, np.random.default_rng([seed, 1, b0]))
                f.writelines(lines)
                n_events += len(lines)
        for name in FILES:  # events last: a crash leaves the set incomplete, so it is regenerated
            os.replace(tmp[name], paths[name])
    finally:
        for p in tmp.values():
            p.unlink(missing_ok=True)
    stats = {
        "products": len(product_df),
        "duplicates": int((catalog.dup_id_of != "").sum()),
        "photos": len(photo_df),
        "buyers": buyers,
        "events": n_events,
    }
    return paths, stats


def generate_sample(
    out_dir: str | Path,
    products: int = 2000,
    buyers: int = 1000,
    seed: int = 0,
    events_per_buyer: float = 30.0,
) -> dict[str, Path]:
    """Write events.csv, products.csv and photos.csv under `out_dir`; same arguments give the same bytes.

    Returns {"events": path, "products": path, "photos": path}. `products` counts duplicate rows too;
    the number of events is about buyers * events_per_buyer (plus ~0.5% unknown-name rows).
    """
    paths, stats = _generate(out_dir, products, buyers, seed, events_per_buyer)
    log.info("sample dataset: %s", _summary(paths, stats, seed))
    return paths


def ensure_sample(out_dir: str | Path, **kwargs: Any) -> dict[str, Path]:
    """The sample dataset's paths under `out_dir`, generating it (with `generate_sample`'s kwargs) when missing.

    The generation arguments are recorded in `sample.json`; when they differ from `kwargs` (say a smaller
    sample was asked for), the dataset is generated again. Files without a `sample.json` are used as they are.
    """
    out_dir = Path(out_dir)
    paths = _paths(out_dir)
    record = out_dir / "sample.json"
    if all(p.is_file() for p in paths.values()):
        if not record.is_file():
            return paths
        if json.loads(record.read_text(encoding="utf-8")) == _canonical_kwargs(kwargs):
            return paths
        log.info("sample dataset under %s was generated with other settings; generating it again", out_dir)
    else:
        log.info("sample dataset missing under %s; generating it", out_dir)
    paths = generate_sample(out_dir, **kwargs)
    tmp = out_dir / f".sample.json.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(_canonical_kwargs(kwargs), sort_keys=True), encoding="utf-8")
    os.replace(tmp, record)
    return paths


def _canonical_kwargs(kwargs: dict[str, Any]) -> dict[str, Any]:
    defaults = {"products": 2000, "buyers": 1000, "seed": 0, "events_per_buyer": 30.0}
    return {k: float(v) if k == "events_per_buyer" else int(v) for k, v in {**defaults, **kwargs}.items()}


def _summary(paths: dict[str, Path], stats: dict[str, int], seed: int) -> str:
    return (
        f"wrote {stats['products']} products ({stats['duplicates']} duplicates), {stats['photos']} photos, "
        f"{stats['events']} events from {stats['buyers']} buyers (seed {seed}) to {paths['events'].parent}"
    )


def main(argv: Sequence[str] | None = None) -> dict[str, Path]:
    """CLI: ``python -m twotower.data.sample --out DIR --products N --buyers M --seed S``."""
    parser = argparse.ArgumentParser(
        prog="python -m twotower.data.sample", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--out", default="data/sample", help="output folder (default: data/sample)")
    parser.add_argument("--products", type=int, default=2000, help="product rows, duplicates included")
    parser.add_argument("--buyers", type=int, default=1000, help="number of buyers")
    parser.add_argument("--seed", type=int, default=0, help="random seed; same seed, same bytes")
    parser.add_argument("--events-per-buyer", type=float, default=30.0, help="mean events per buyer")
    args = parser.parse_args(argv)
    try:
        paths, stats = _generate(args.out, args.products, args.buyers, args.seed, args.events_per_buyer)
    except ValueError as e:
        parser.error(str(e))
    print(_summary(paths, stats, args.seed))
    return paths


if __name__ == "__main__":
    main()
