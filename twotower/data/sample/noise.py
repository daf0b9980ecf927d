"""Realistic mess: how often the sample's files are messy, and how text gets spelled differently.

The Arabic variations are the rules of `twotower.data.arabic` applied in reverse, so `normalize_key` folds
every variant back to the original. The functions draw from the generator in a fixed order: changing them
changes the generated sample for every seed.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from twotower.data import arabic

# Messy fractions (documented in the package docstring and asserted roughly by the tests).
DUPLICATE_FRACTION = 0.03
EMPTY_DESCRIPTION_FRACTION = 0.10
MALFORMED_METADATA_FRACTION = 0.02
MISSING_BRAND_FRACTION = 0.04
PHOTO_FRACTION = 0.90
UNKNOWN_EVENT_FRACTION = 0.005
BAD_TIMESTAMP_FRACTION = 0.003
EMPTY_PRODUCT_ID_FRACTION = 0.001
DUPLICATE_EVENT_SHARE = 0.3  # share of events on a duplicated product that name the duplicate id

# Alef forms a word may start with, and the letters that take no harakah in everyday vocalized text.
_ALEF_STARTS = (arabic.ALEF, arabic.ALEF_HAMZA_ABOVE, arabic.ALEF_HAMZA_BELOW, arabic.ALEF_MADDA)
_UNMARKED = frozenset((*_ALEF_STARTS, arabic.ALEF_MAKSURA, arabic.TEH_MARBUTA))


def add_tashkeel(text: str, rng: np.random.Generator) -> str:
    """Harakat on about a third of the Arabic letters, as in partly vocalized text."""
    coin = rng.random(len(text)) < 0.35
    marks = rng.integers(0, len(arabic.COMMON_TASHKEEL), len(text))
    out = []
    for ch, c, m in zip(text, coin.tolist(), marks.tolist(), strict=True):
        out.append(ch)
        if c and ch in arabic.LETTERS and ch not in _UNMARKED:
            out.append(arabic.COMMON_TASHKEEL[m])
    return "".join(out)


def add_tatweel(text: str, rng: np.random.Generator) -> str:
    """One or two tatweels inside one word, after a letter that joins the next."""
    spots = [
        i
        for i in range(len(text) - 1)
        if text[i] in arabic.LETTERS and text[i] not in arabic.NON_JOINING and text[i + 1] in arabic.LETTERS
    ]
    if not spots:
        return text
    i = spots[rng.integers(len(spots))]
    return text[: i + 1] + arabic.TATWEEL * int(rng.integers(1, 3)) + text[i + 1 :]


def swap_alef(text: str, rng: np.random.Generator) -> str:
    """One word's initial alef written the other way: a bare ا gains a hamza (أ), a hamzated one loses it."""
    words = text.split(" ")
    spots = [i for i, w in enumerate(words) if w[:1] in _ALEF_STARTS]
    if not spots:
        return text
    i = spots[rng.integers(len(spots))]
    w = words[i]
    words[i] = (arabic.ALEF_HAMZA_ABOVE if w[0] == arabic.ALEF else arabic.ALEF) + w[1:]
    return " ".join(words)


def swap_yeh(text: str, rng: np.random.Generator) -> str:
    """One word's final ي written ى, or the other way round."""
    words = text.split(" ")
    spots = [i for i, w in enumerate(words) if len(w) > 1 and w[-1] in (arabic.YEH, arabic.ALEF_MAKSURA)]
    if not spots:
        return text
    i = spots[rng.integers(len(spots))]
    words[i] = words[i][:-1] + (arabic.ALEF_MAKSURA if words[i][-1] == arabic.YEH else arabic.YEH)
    return " ".join(words)


def swap_teh_marbuta(text: str, rng: np.random.Generator) -> str:
    """One word's final ة written ه (the common slip; the other direction is a rare one)."""
    words = text.split(" ")
    spots = [i for i, w in enumerate(words) if len(w) > 1 and w[-1] == arabic.TEH_MARBUTA]
    if not spots:
        return text
    i = spots[rng.integers(len(spots))]
    words[i] = words[i][:-1] + arabic.HEH
    return " ".join(words)


def indic_digits(text: str, rng: np.random.Generator) -> str:
    """Digits written in Arabic-Indic form (١٢٣); draws nothing from `rng`."""
    return arabic.to_indic_digits(text)


Variant = Callable[[str, np.random.Generator], str]
VARIANTS: tuple[Variant, ...] = (
    add_tashkeel,
    add_tatweel,
    swap_alef,
    swap_yeh,
    swap_teh_marbuta,
    indic_digits,
)
# What people mistype in a title: the letter variations, without the digit form (a search box rarely sees it).
SPELLING_VARIANTS: tuple[Variant, ...] = (add_tashkeel, add_tatweel, swap_alef, swap_yeh, swap_teh_marbuta)


def _vary(text: str, rng: np.random.Generator, variants: tuple[Variant, ...]) -> str:
    out = text
    for k in rng.choice(len(variants), size=int(rng.integers(1, 3)), replace=False):
        out = variants[int(k)](out, rng)
    if out == text:  # none applied (e.g. no final ة): diacritics always apply to Arabic text
        for _ in range(10):
            out = add_tashkeel(text, rng)
            if out != text:
                break
    return out


def arabic_variant(text: str, rng: np.random.Generator) -> str:
    """The same text written differently: 1-2 of tashkeel, tatweel, alef form, ى/ي, ة/ه, Arabic-Indic digits.

    Every change is one that Arabic-aware normalization undoes, so the result is a duplicate after
    normalization but a different string before it. Always differs from `text` when it has Arabic letters.
    """
    return _vary(text, rng, VARIANTS)


def _is_latin(ch: str) -> bool:
    return ch.isalpha() and ord(ch) < 0x250  # Basic Latin .. Latin Extended-B (é in L'Oréal included)


def _latin_case(words: list[str], latin: list[int], rng: np.random.Generator) -> None:
    mode = int(rng.integers(3))  # 0: all lower, 1: all upper, 2: first letter's case flipped
    for i in latin:
        w = words[i]
        words[i] = w.lower() if mode == 0 else w.upper() if mode == 1 else w[:1].swapcase() + w[1:]


def _latin_typo(word: str, rng: np.random.Generator) -> str:
    letters = [i for i, ch in enumerate(word) if _is_latin(ch)]
    kind = int(rng.integers(3))  # 0: swap two neighbours, 1: drop a letter, 2: double a letter
    if kind == 0:
        pairs = [i for i in letters if i + 1 < len(word) and _is_latin(word[i + 1])]
        pairs = [i for i in pairs if word[i].lower() != word[i + 1].lower()]
        if pairs:
            i = pairs[rng.integers(len(pairs))]
            return word[:i] + word[i + 1] + word[i] + word[i + 2 :]
    if kind == 1 and len(letters) >= 3:  # short words stay recognisable
        i = letters[rng.integers(len(letters))]
        return word[:i] + word[i + 1 :]
    i = letters[rng.integers(len(letters))]
    return word[: i + 1] + word[i] + word[i + 1 :]


def noisy_spelling(text: str, rng: np.random.Generator) -> str:
    """A realistic noisy spelling of a product title, as shoppers and sellers type it.

    Arabic text gets 1-2 of: tashkeel, tatweel, another alef form (ا/أ), ي/ى, ة -> ه (all undone by
    `normalize_key`). Latin words get a case change (all lower, all upper or the first letter flipped) and,
    in one word, one typo: two neighbouring letters swapped, a letter dropped, or a letter doubled (in a
    mostly Arabic title, the typo comes half of the time). Digits and punctuation are kept. The result
    differs from `text` whenever `text` has a Latin letter or an Arabic letter that takes a harakah (all but
    ا أ إ آ ى ة); the same generator state gives the same result.

    Example:
        >>> rng = np.random.default_rng(0)
        >>> noisy = noisy_spelling("ساعة ذكية من Samsung", rng)  # e.g. "ساعه ذكية من samsnug"
    """
    out = _vary(text, rng, SPELLING_VARIANTS) if arabic.has_arabic(text) else text
    if out == text:  # a short word where no variant applied (rare): one harakah on one letter
        spots = [i for i, ch in enumerate(text) if ch in arabic.LETTERS and ch not in _UNMARKED]
        if spots:
            i = spots[rng.integers(len(spots))]
            mark = arabic.COMMON_TASHKEEL[rng.integers(len(arabic.COMMON_TASHKEEL))]
            out = text[: i + 1] + mark + text[i + 1 :]
    words = out.split(" ")
    latin = [i for i, w in enumerate(words) if any(_is_latin(ch) for ch in w)]
    if latin:
        _latin_case(words, latin, rng)
        if out == text or rng.random() < 0.5:
            longest = max(len(words[i]) for i in latin)
            candidates = [i for i in latin if len(words[i]) >= min(3, longest)]
            i = candidates[rng.integers(len(candidates))]
            words[i] = _latin_typo(words[i], rng)
    return " ".join(words)
