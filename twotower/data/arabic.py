"""The Arabic spelling rules in one place: which spellings of a word count as the same word.

`fold` applies them (it is the Arabic part of `schema.normalize_key`); the sample generator's noise
(`twotower.data.sample.noise`) applies them in reverse, so every variant it writes folds back to the original.

Example:
    >>> fold("إِسْوَارَة ذهـــب ٢١")
    'اسواره ذهب 21'
"""

from __future__ import annotations

import re

ALEF = "\u0627"  # ا
# Alef with hamza above/below, with madda, and wasla: all written as a bare alef in everyday typing.
ALEF_HAMZA_ABOVE, ALEF_HAMZA_BELOW, ALEF_MADDA, ALEF_WASLA = "\u0623", "\u0625", "\u0622", "\u0671"
ALEF_FORMS: tuple[str, ...] = (ALEF_HAMZA_ABOVE, ALEF_HAMZA_BELOW, ALEF_MADDA, ALEF_WASLA)
YEH, ALEF_MAKSURA = "\u064a", "\u0649"  # ي and ى: interchangeable at the end of a word
TEH_MARBUTA, HEH = "\u0629", "\u0647"  # ة and ه: interchangeable at the end of a word
TATWEEL = "\u0640"  # ـ, the stretching stroke: typographic only
# Harakat and other Quranic marks; everyday text leaves them out.
TASHKEEL = re.compile("[\u0610-\u061a\u064b-\u065f\u0670\u06d6-\u06dc\u06df-\u06e8\u06ea-\u06ed]")
# The marks people actually type (fatha, damma, kasra, shadda, sukun, tanween fath), in the order the
# sample generator draws them from (changing the order changes the generated sample).
COMMON_TASHKEEL: tuple[str, ...] = ("\u064e", "\u064f", "\u0650", "\u0651", "\u0652", "\u064b")
ARABIC_INDIC_DIGITS = "".join(chr(0x0660 + d) for d in range(10))  # ٠..٩
EXTENDED_DIGITS = "".join(chr(0x06F0 + d) for d in range(10))  # ۰..۹ (Persian/Urdu forms)
# The Arabic letters proper (hamza .. yeh), without marks or digits.
LETTERS = frozenset(chr(c) for c in range(0x0621, 0x064B))
# Letters that do not join the next letter: a tatweel can only follow a joining letter.
NON_JOINING = frozenset("اأإآدذرزوةىء")

_FOLD_MAP = str.maketrans(
    {
        **{form: ALEF for form in ALEF_FORMS},
        ALEF_MAKSURA: YEH,
        TEH_MARBUTA: HEH,
        **{d: str(i) for i, d in enumerate(ARABIC_INDIC_DIGITS)},
        **{d: str(i) for i, d in enumerate(EXTENDED_DIGITS)},
    }
)
_TO_INDIC = str.maketrans({str(i): d for i, d in enumerate(ARABIC_INDIC_DIGITS)})


def fold(text: str) -> str:
    """`text` with tashkeel and tatweel removed, alef forms -> ا, ى -> ي, ة -> ه, Arabic digits -> 0-9.

    Only for matching keys: encoders and displays keep the original spelling.
    """
    return TASHKEEL.sub("", text).replace(TATWEEL, "").translate(_FOLD_MAP)


def to_indic_digits(text: str) -> str:
    """ASCII digits written as Arabic-Indic digits (the inverse of `fold`'s digit rule)."""
    return text.translate(_TO_INDIC)


def has_arabic(text: str) -> bool:
    """Whether `text` contains at least one Arabic letter."""
    return any(ch in LETTERS for ch in text)
