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

Run ``python -m twotower.data.sample --out data/sample --products 2000 --buyers 1000 --seed 0`` (the defaults: `DEFAULTS`).

Layout: `vocabulary` (tables), `noise` (messy fractions, spelling variants, `noisy_spelling`), `products`,
`events`, `generate` (settings with THE defaults, writing files), `cli`. The Arabic rules the noise inverts
live in `twotower.data.arabic`.
"""

from twotower.data.sample.cli import main
from twotower.data.sample.generate import (
    DEFAULTS,
    FILES,
    MIN_PRODUCTS,
    SampleSettings,
    ensure_sample,
    generate_sample,
)
from twotower.data.sample.noise import arabic_variant, noisy_spelling

__all__ = [
    "DEFAULTS",
    "FILES",
    "MIN_PRODUCTS",
    "SampleSettings",
    "arabic_variant",
    "ensure_sample",
    "generate_sample",
    "main",
    "noisy_spelling",
]
