"""Column aliases, event-name normalization and Arabic-aware matching keys.

Everything here is pure Python/pandas so that the rules can be unit-tested one by one.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from twotower.data import arabic

# Canonical column -> accepted spellings, in order of preference.
EVENT_COLUMNS: dict[str, tuple[str, ...]] = {
    "buyer_id": ("buyer_id", "distinct_id", "user_id"),
    "product_id": ("product_id", "item_id"),
    "event_type": ("event_type", "event_name"),
    "timestamp": ("timestamp", "created_at", "event_time"),
}
PRODUCT_COLUMNS: dict[str, tuple[str, ...]] = {
    "product_id": ("product_id", "id"),
    "title": ("title",),
}
PRODUCT_OPTIONAL_COLUMNS: dict[str, tuple[str, ...]] = {
    "description": ("description",),
    "metadata": ("metadata",),
}
PHOTO_COLUMNS: dict[str, tuple[str, ...]] = {
    "product_id": ("product_id", "id"),
    "photo_url": ("thumbnail", "photo_link", "image_url"),
}

EVENT_TYPES: tuple[str, ...] = ("view", "add_to_cart", "purchase")
DEFAULT_EVENT_WEIGHTS: dict[str, float] = {"view": 1.0, "add_to_cart": 5.0, "purchase": 10.0}
# Spellings seen in analytics exports; matched after case-folding and removing separators,
# so "Add To Cart", "add-to-cart" and "AddToCart" are one alias.
DEFAULT_EVENT_ALIASES: dict[str, tuple[str, ...]] = {
    "view": (
        "view",
        "viewed",
        "product_viewed",
        "product_view",
        "view_item",
        "item_view",
        "page_view_product",
    ),
    "add_to_cart": ("add_to_cart", "added_to_cart", "product_added", "cart_add", "add_cart", "addtobasket"),
    "purchase": ("purchase", "purchased", "order_completed", "order_placed", "checkout_completed", "buy"),
}


class DataValidationError(ValueError):
    """Input data does not have the shape twotower needs; the message says what and where."""


def resolve_columns(
    found: Iterable[str],
    required: Mapping[str, Sequence[str]],
    source: str,
    optional: Mapping[str, Sequence[str]] | None = None,
) -> dict[str, str]:
    """Map canonical names to the columns present in a file (source column -> canonical name).

    Raises DataValidationError naming the file, the missing column with its accepted spellings,
    and the columns that were found.
    """
    found = [str(c) for c in found]
    by_folded = {c.strip().casefold(): c for c in found}
    rename: dict[str, str] = {}
    missing: list[str] = []
    for canonical, aliases in {**required, **(optional or {})}.items():
        match = next((by_folded[a.casefold()] for a in aliases if a.casefold() in by_folded), None)
        if match is not None:
            rename[match] = canonical
        elif canonical in required:
            missing.append(f"'{canonical}' (any of: {', '.join(aliases)})")
    if missing:
        raise DataValidationError(
            f"{source}: missing required column {' and '.join(missing)}; columns found: {found or 'none'}"
        )
    return rename


def _event_key(name: str) -> str:
    return re.sub(r"[^0-9a-z]", "", name.casefold())


@dataclass
class EventSchema:
    """Which raw event names mean what, and how much each event type weighs."""

    weights: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_EVENT_WEIGHTS))
    aliases: dict[str, Sequence[str]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        weights = {**DEFAULT_EVENT_WEIGHTS, **{str(k): float(v) for k, v in dict(self.weights).items()}}
        unknown = set(weights) - set(EVENT_TYPES)
        if unknown:
            raise DataValidationError(
                f"event weights name unknown event types {sorted(unknown)}; known types: {list(EVENT_TYPES)}"
            )
        if any(w <= 0 for w in weights.values()):
            raise DataValidationError(f"event weights must be positive, got {weights}")
        self.weights = weights
        self._lookup: dict[str, int] = {}
        for code, event_type in enumerate(EVENT_TYPES):
            extra = tuple(dict(self.aliases).get(event_type, ()))
            for alias in (event_type, *DEFAULT_EVENT_ALIASES[event_type], *extra):
                self._lookup[_event_key(alias)] = code
        bad = set(dict(self.aliases)) - set(EVENT_TYPES)
        if bad:
            raise DataValidationError(
                f"event aliases name unknown event types {sorted(bad)}; known: {list(EVENT_TYPES)}"
            )

    @property
    def weight_array(self) -> np.ndarray:
        """Weights indexed by event code: float32 [len(EVENT_TYPES)]."""
        return np.array([self.weights[t] for t in EVENT_TYPES], dtype=np.float32)

    def code(self, name: object) -> int:
        """Event code (index into EVENT_TYPES) for a raw name, or -1 when unknown."""
        if not isinstance(name, str):
            return -1
        return self._lookup.get(_event_key(name), -1)

    def codes(self, names: pd.Series) -> np.ndarray:
        """Vectorized `code` over a column: int8 [n], -1 for unknown or missing names."""
        uniques_codes, uniques = pd.factorize(names, use_na_sentinel=True)
        table = np.array([self.code(u) for u in uniques] + [-1], dtype=np.int8)
        return table[uniques_codes]  # sentinel -1 indexes the trailing -1

    def type_codes(self, types: Iterable[str]) -> list[int]:
        codes = [self.code(t) for t in types]
        if -1 in codes:
            raise DataValidationError(f"unknown event type in {list(types)}; known: {list(EVENT_TYPES)}")
        return codes


# --- Arabic-aware matching keys ---------------------------------------------------------------------
_SPACES = re.compile(r"\s+")
# Invisible format characters that copy-paste and RTL editors add: bidi marks and embeddings (U+200E/F,
# U+202A-E, U+2066-9, U+061C), zero-width space/joiners (U+200B-D), word joiner (U+2060), BOM (U+FEFF); and NUL.
_FORMAT_CHARS = re.compile("[\u0000\u061c\u200b-\u200f\u202a-\u202e\u2060\u2066-\u2069\ufeff]")


def strip_format_chars(text: str) -> str:
    """`text` without bidi marks, zero-width characters, BOM and NUL bytes."""
    return _FORMAT_CHARS.sub("", text)


def normalize_text(text: object) -> str:
    """Whitespace-normalized display text without invisible format characters; None/NaN become ''."""
    if text is None or (isinstance(text, float) and np.isnan(text)):
        return ""
    return _SPACES.sub(" ", strip_format_chars(str(text))).strip()


def normalize_id(value: object) -> str:
    """Matching form of a product or buyer id: format characters stripped, NFKC, outer whitespace trimmed.

    Applied on both sides (catalog and request), so `"\u200fA1"` and the full-width `"Ａ1"` find product `A1`.
    """
    return unicodedata.normalize("NFKC", normalize_text(value))


def normalize_key(text: object) -> str:
    """Matching key: strip tashkeel and tatweel, unify alef/yeh/teh-marbuta, ASCII digits, case-fold Latin.

    The Arabic rules live in `twotower.data.arabic`; the sample generator's noise inverts the same rules.

    Used only for matching (de-dup, vocabularies); encoders still see the original text.
    """
    return arabic.fold(unicodedata.normalize("NFKC", normalize_text(text))).casefold()
