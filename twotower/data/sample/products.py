"""The sample's products: integer attributes drawn per product, then written out as messy raw text."""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import pandas as pd

from twotower.data.sample.noise import (
    DUPLICATE_FRACTION,
    EMPTY_DESCRIPTION_FRACTION,
    MALFORMED_METADATA_FRACTION,
    MISSING_BRAND_FRACTION,
    PHOTO_FRACTION,
    arabic_variant,
)
from twotower.data.sample.vocabulary import (
    BAND_ADJ,
    BAND_PHRASE,
    BAND_PRICE,
    CATEGORIES,
    CELLS,
    DESC_TEMPLATES,
    N_BAND,
    N_BRAND,
    N_CAT,
    N_TYPE,
    N_VAR,
    STYLES,
)

ZIPF = 1.0  # popularity exponent within a (category, brand) pool


@dataclass
class SampleItems:
    """Base (non-duplicate) products as integer attributes, plus the sampling tables for events."""

    cat: np.ndarray  # int [n_base]
    brand: np.ndarray  # int [n_base], local to the category (0..3)
    var: np.ndarray  # int [n_base]
    band: np.ndarray  # int [n_base]
    cell: np.ndarray  # int [n_base], global taste cell cat * CELLS + local cell
    q: np.ndarray  # float [n_base], Zipf popularity within its (category, brand) pool
    by_cell: np.ndarray  # base item indices sorted by cell
    cum_q: np.ndarray  # cumulative q in by_cell order
    cell_lo: np.ndarray  # float [n_cells], cum_q mass before the cell
    cell_mass: np.ndarray  # float [n_cells]
    cat_mass: np.ndarray  # float [N_CAT]
    id_of: np.ndarray  # product id string for each base item
    dup_id_of: np.ndarray  # duplicate's id string for each base item ("" when none)


def local_cell(brand: np.ndarray, var: np.ndarray, band: np.ndarray) -> np.ndarray:
    return (brand * N_VAR + var) * N_BAND + band


def make_products(
    n_products: int, rng: np.random.Generator
) -> tuple[SampleItems, pd.DataFrame, pd.DataFrame]:
    n_dup = max(1, int(round(DUPLICATE_FRACTION * n_products)))
    n_base = n_products - n_dup
    cat_w = np.array([c["weight"] for c in CATEGORIES])
    # every category gets items, the rest by category share
    cat = np.concatenate([np.arange(N_CAT), rng.choice(N_CAT, size=n_base - N_CAT, p=cat_w / cat_w.sum())])
    rng.shuffle(cat)
    typ = rng.integers(0, N_TYPE, n_base)
    var = rng.integers(0, N_VAR, n_base)
    brand = rng.integers(0, N_BRAND, n_base)
    tier = np.array([[b[1] for b in c["brands"]] for c in CATEGORIES])[cat, brand]
    band = np.where(rng.random(n_base) < 0.6, tier, rng.integers(0, N_BAND, n_base))
    cell = cat * CELLS + local_cell(brand, var, band)

    # Zipf-like popularity within candidate pools (category x brand): q = 1 / rank^s, ranks a random
    # permutation. Pools rather than whole categories keep the global top-10 from dominating every buyer.
    pool = cat * N_BRAND + brand
    order = np.lexsort((rng.random(n_base), pool))
    rank = np.empty(n_base, dtype=np.int64)
    sp = pool[order]
    first = np.searchsorted(sp, sp, side="left")
    rank[order] = np.arange(n_base) - first
    q = 1.0 / (rank + 1.0) ** ZIPF

    by_cell = np.argsort(cell, kind="stable")
    cum_q = np.cumsum(q[by_cell])
    n_cells = N_CAT * CELLS
    cell_mass = np.bincount(cell, weights=q, minlength=n_cells)
    cell_lo = np.concatenate([[0.0], np.cumsum(cell_mass)[:-1]])
    cat_mass = np.bincount(cat, weights=q, minlength=N_CAT)

    # ids: a random permutation so that duplicates are spread among the originals
    width = max(6, len(str(n_products - 1)))
    ids = np.array([f"p{i:0{width}d}" for i in rng.permutation(n_products)])
    id_of, dup_ids = ids[:n_base], ids[n_base:]
    dup_src = np.sort(rng.choice(n_base, size=n_dup, replace=False))
    dup_id_of = np.full(n_base, "", dtype=ids.dtype)
    dup_id_of[dup_src] = dup_ids

    # text and metadata
    model_code = rng.permutation(n_base) + 1000  # unique per product, so only real duplicates collide
    style = rng.integers(0, len(STYLES), n_base)
    templ = rng.integers(0, len(DESC_TEMPLATES), n_base)
    use = rng.integers(0, 3, n_base)
    empty_desc = rng.random(n_base) < EMPTY_DESCRIPTION_FRACTION
    newline_desc = rng.random(n_base) < 0.02  # multi-line descriptions: CSV quoting must cope
    price = np.round(
        np.array([c["price"] for c in CATEGORIES])[cat]
        * np.array(BAND_PRICE)[band]
        * rng.lognormal(0.0, 0.3, n_base),
        2,
    )
    bad_meta = rng.random(n_base) < MALFORMED_METADATA_FRACTION
    no_brand = ~bad_meta & (rng.random(n_base) < MISSING_BRAND_FRACTION)
    bad_meta[dup_src] = no_brand[dup_src] = False  # duplicates must be matchable by brand
    price = price.tolist()
    slug_json = [json.dumps(c["slug"]) for c in CATEGORIES]
    brand_json = [[json.dumps(b[0], ensure_ascii=False) for b in c["brands"]] for c in CATEGORIES]
    cut_kind = rng.random(n_base) < 0.7
    cut_at = rng.integers(0, 1 << 30, n_base)
    titles, descs, metas = [], [], []
    for i in range(n_base):
        c = CATEGORIES[cat[i]]
        noun, gender = c["types"][typ[i]]
        b = c["brands"][brand[i]][0]
        v = c["variants"][var[i]]
        titles.append(f"{noun} {v} {BAND_ADJ[band[i]][gender]} من {b} موديل {model_code[i]}")
        if empty_desc[i]:
            descs.append("")
        else:
            d = DESC_TEMPLATES[templ[i]].format(
                type=noun,
                variant=v,
                brand=b,
                band=BAND_PHRASE[band[i]],
                use=c["uses"][use[i]],
                style=STYLES[style[i]],
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
    items = SampleItems(
        cat, brand, var, band, cell, q, by_cell, cum_q, cell_lo, cell_mass, cat_mass, id_of, dup_id_of
    )
    return items, products, photos
