"""The sample's events: buyers with latent tastes browse in sessions, then cart and buy; written as CSV lines."""

from __future__ import annotations

import numpy as np

from twotower.data.sample.noise import (
    BAD_TIMESTAMP_FRACTION,
    DUPLICATE_EVENT_SHARE,
    EMPTY_PRODUCT_ID_FRACTION,
    UNKNOWN_EVENT_FRACTION,
)
from twotower.data.sample.products import SampleItems
from twotower.data.sample.vocabulary import (
    BAD_TIMESTAMPS,
    CATEGORIES,
    CELLS,
    DAYS,
    EVENT_SPELLINGS,
    HOURS,
    N_BAND,
    N_BRAND,
    N_CAT,
    N_VAR,
    T0,
    UNKNOWN_EVENTS,
)

# Behaviour knobs: a taste cell's log-weight = log(cell popularity) + these bonuses (see events_chunk).
BRAND_BONUS = 2.5
VARIANT_BONUS = 1.5
BAND_BONUS = 1.2  # per band of distance, subtracted
EXPLORE = 0.15
SESSION_LEN = 4.0
FUNNEL_VIEWS = 1.0 / (1.0 + 0.2 + 0.08)  # views per event when ~20% of views cart and ~40% of carts buy


def _sample_in_ranges(cum: np.ndarray, lo: np.ndarray, mass: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Positions in `cum` (a cumulative sum) drawn within mass ranges [lo, lo + mass) at fractions u."""
    pos = np.searchsorted(cum, lo + u * mass, side="right")
    return np.minimum(pos, len(cum) - 1)


def events_chunk(
    items: SampleItems, b0: int, nb: int, events_per_buyer: float, rng: np.random.Generator
) -> list[str]:
    """CSV lines of the events of buyers b0..b0+nb-1, sorted by time."""
    # --- latent tastes [nb, 2 slots] ---
    cat_w = np.array([c["weight"] for c in CATEGORIES])
    fav = np.empty((nb, 2), dtype=np.int64)
    fav[:, 0] = rng.choice(N_CAT, size=nb, p=cat_w / cat_w.sum())
    fav[:, 1] = (fav[:, 0] + rng.integers(1, N_CAT, nb)) % N_CAT
    two_cats = rng.random(nb) < 0.4
    pref_var = rng.integers(0, N_VAR, (nb, 2))
    pref_band = rng.choice(N_BAND, size=nb, p=[0.35, 0.4, 0.25])
    # favourite brands: 2 in the main category (3 for some one-category buyers), 1 in the second
    brand_rank = np.argsort(rng.random((nb, 2, N_BRAND)), axis=2)
    n_fav = np.stack([np.where(~two_cats & (rng.random(nb) < 0.4), 3, 2), np.where(two_cats, 1, 0)], axis=1)
    fav_brand = brand_rank < n_fav[:, :, None]  # bool [nb, 2, 4]

    # --- per (buyer, slot) distribution over the slot category's taste cells: [nb, 2, CELLS] ---
    k = np.arange(CELLS)
    k_brand, k_var, k_band = k // (N_VAR * N_BAND), (k // N_BAND) % N_VAR, k % N_BAND
    mass = items.cell_mass.reshape(N_CAT, CELLS)[fav]  # [nb, 2, C]
    logit = (
        BRAND_BONUS * fav_brand[:, :, k_brand]
        + VARIANT_BONUS * (k_var[None, None, :] == pref_var[:, :, None])
        - BAND_BONUS * np.abs(k_band[None, None, :] - pref_band[:, None, None])
    )
    w = mass * np.exp(logit)
    cdf = np.cumsum(w, axis=2)
    cdf /= cdf[:, :, -1:]
    flat_cdf = (cdf + np.arange(nb * 2).reshape(nb, 2, 1)).ravel()  # row r's cdf lives in (r, r+1]

    # --- sessions and views ---
    n_events = np.maximum(2, np.round(rng.lognormal(np.log(events_per_buyer) - 0.32, 0.8, nb))).astype(
        np.int64
    )
    n_views = np.maximum(1, np.round(n_events * FUNNEL_VIEWS)).astype(np.int64)
    n_sess = np.maximum(1, np.round(n_views / SESSION_LEN)).astype(np.int64)
    sess_buyer = np.repeat(np.arange(nb), n_sess)
    ns = len(sess_buyer)
    sess_kind = np.where(
        rng.random(ns) < EXPLORE, 2, np.where(two_cats[sess_buyer] & (rng.random(ns) < 0.35), 1, 0)
    )
    sess_cat = np.where(sess_kind == 2, rng.choice(N_CAT, size=ns, p=cat_w / cat_w.sum()), 0)
    sess_cat = np.where(sess_kind < 2, fav[sess_buyer, np.minimum(sess_kind, 1)], sess_cat)
    day = rng.integers(0, DAYS, ns)
    sec = rng.choice(24, size=ns, p=HOURS / HOURS.sum()) * 3600 + rng.integers(0, 3600, ns)
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
    cell_local = np.searchsorted(flat_cdf, row + u1, side="left") - row * CELLS
    cell_local = np.clip(cell_local, 0, CELLS - 1)
    vcat = sess_cat[view_sess]
    g_cell = vcat * CELLS + cell_local
    in_cell = items.by_cell[
        _sample_in_ranges(items.cum_q, items.cell_lo[g_cell], items.cell_mass[g_cell], u2)
    ]
    # exploration: any item of the session's category, by popularity (cells of a category are contiguous)
    cat_lo = items.cell_lo[vcat * CELLS]
    explore = items.by_cell[_sample_in_ranges(items.cum_q, cat_lo, items.cat_mass[vcat], u2)]
    item = np.where(taste, in_cell, explore)

    # view times: session start + increasing gaps within the session
    gaps = 5 + rng.exponential(70.0, nv)
    cum = np.cumsum(gaps)
    sess_first_view = np.searchsorted(view_sess, view_sess, side="left")
    view_t = sess_t[view_sess] + (cum - cum[sess_first_view] + gaps[sess_first_view]).astype(np.int64)

    # --- funnel: carting and buying are likelier the better the item matches the buyer's taste ---
    slot = np.where(
        items.cat[item] == fav[view_buyer, 0], 0, np.where(items.cat[item] == fav[view_buyer, 1], 1, -1)
    )
    slot = np.where((slot == 1) & ~two_cats[view_buyer], -1, slot)
    s = np.maximum(slot, 0)
    match = (slot >= 0) * (
        fav_brand[view_buyer, s, items.brand[item]].astype(np.int64)
        + (pref_var[view_buyer, s] == items.var[item])
        + (pref_band[view_buyer] == items.band[item])
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
    product = items.id_of[e_item]
    dup = items.dup_id_of[e_item]
    use_dup = (dup != "") & (rng.random(n) < DUPLICATE_EVENT_SHARE)
    product = np.where(use_dup, dup, product)
    product[rng.random(n) < EMPTY_PRODUCT_ID_FRACTION] = ""

    source = np.where(
        rng.random(n) < 0.85, rng.integers(0, len(EVENT_SPELLINGS), nb)[e_buyer], rng.integers(0, 4, n)
    )
    spellings = np.array(EVENT_SPELLINGS)  # [source, type]
    names = spellings[source, np.maximum(e_type, 0)].astype(object)
    unknown = e_type < 0
    names[unknown] = np.array(UNKNOWN_EVENTS, dtype=object)[
        rng.integers(0, len(UNKNOWN_EVENTS), unknown.sum())
    ]

    created = format_times(e_t, rng)
    bad_t = rng.random(n) < BAD_TIMESTAMP_FRACTION
    created[bad_t] = np.array(BAD_TIMESTAMPS, dtype=object)[rng.integers(0, len(BAD_TIMESTAMPS), bad_t.sum())]
    # no field can hold a comma, quote or newline, so plain joining is valid CSV (and 5x faster than pandas)
    columns = (buyer_ids[e_buyer].tolist(), product.tolist(), names.tolist(), created.tolist())
    return [f"{b},{p},{e},{t}\n" for b, p, e, t in zip(*columns, strict=True)]


def format_times(t: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Seconds since T0 -> strings: ISO with Z (~80%), ISO without zone (~8%), epoch s (~6%) and ms (~6%)."""
    stamps = T0 + t.astype("timedelta64[s]")
    iso = np.datetime_as_string(stamps, unit="s")
    epoch = stamps.astype(np.int64)
    fmt = rng.choice(4, size=len(t), p=[0.80, 0.08, 0.06, 0.06])
    out = np.char.add(iso, "Z").astype(object)  # np.char, not np.strings: numpy 1.x has only np.char
    m = fmt == 1
    out[m] = np.char.replace(iso[m], "T", " ")
    m = fmt == 2
    out[m] = epoch[m].astype(str)
    m = fmt == 3
    out[m] = (epoch[m] * 1000 + rng.integers(0, 1000, m.sum())).astype(str)
    return out
