"""Spelling noise (`noisy_spelling`, the sample's Arabic variants) and the Arabic rules they invert."""

from __future__ import annotations

import numpy as np
import pytest

from twotower.data import arabic
from twotower.data.sample import noise as noise_module
from twotower.data.sample import noisy_spelling
from twotower.data.schema import normalize_key

ARABIC_TITLES = (
    "قلادة ذهب عيار 21 فاخرة من الفردان موديل 1042",
    "عطر بالعنبر فاخر من أجمل موديل 2001",
    "سيروم",
    "إسوارة فضة",
)
LATIN_TITLES = ("Samsung Galaxy Watch", "Levi's 501 jeans", "LEGO", "L'Oréal mascara noire")


def _edits(a: str, b: str) -> int:
    """Optimal-string-alignment distance: insertions, deletions, substitutions, adjacent swaps."""
    d = [[max(i, j) if min(i, j) == 0 else 0 for j in range(len(b) + 1)] for i in range(len(a) + 1)]
    for i in range(1, len(a) + 1):
        for j in range(1, len(b) + 1):
            d[i][j] = min(d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + (a[i - 1] != b[j - 1]))
            if i > 1 and j > 1 and a[i - 1] == b[j - 2] and a[i - 2] == b[j - 1]:
                d[i][j] = min(d[i][j], d[i - 2][j - 2] + 1)
    return d[len(a)][len(b)]


@pytest.mark.parametrize("title", ARABIC_TITLES)
def test_noisy_spelling_arabic_differs_and_folds_back(title: str) -> None:
    rng = np.random.default_rng(0)
    outs = [noisy_spelling(title, rng) for _ in range(50)]
    assert all(out != title for out in outs)
    assert all(normalize_key(out) == normalize_key(title) for out in outs)
    assert len(set(outs)) > 10, "the noise should vary from call to call"


@pytest.mark.parametrize("title", LATIN_TITLES)
def test_noisy_spelling_latin_is_case_plus_one_typo(title: str) -> None:
    rng = np.random.default_rng(1)
    outs = [noisy_spelling(title, rng) for _ in range(100)]
    assert all(out != title for out in outs)
    assert all(_edits(out.casefold(), title.casefold()) == 1 for out in outs)  # exactly one typo
    assert any(out.casefold() != out and out != title.casefold() for out in outs)
    assert {len(out) - len(title) for out in outs} >= ({-1, 0, 1} if len(title) > 4 else {0, 1})
    assert any(out[0] != title[0] for out in outs), "the case changes too"


def test_noisy_spelling_mixed_title_keeps_arabic_key_and_digits() -> None:
    title = "ساعة ذكية لون فضي من Apple موديل 1500"
    rng = np.random.default_rng(2)
    for _ in range(50):
        out = noisy_spelling(title, rng)
        assert out != title and "1500" in out
        arabic_words = [w for w in out.split(" ") if arabic.has_arabic(w)]
        assert normalize_key(" ".join(arabic_words)) == normalize_key(
            " ".join(w for w in title.split(" ") if arabic.has_arabic(w))
        )
        latin = [w for w in out.split(" ") if not arabic.has_arabic(w) and not w.isdigit()]
        assert len(latin) == 1 and _edits(latin[0].casefold(), "apple") <= 1


def test_noisy_spelling_changes_even_one_letter_words() -> None:
    rng = np.random.default_rng(4)
    for word in ("و", "من", "في", "ساعة", "a"):
        for _ in range(200):
            out = noisy_spelling(word, rng)
            assert out != word and (not arabic.has_arabic(word) or normalize_key(out) == normalize_key(word))


def test_noisy_spelling_is_deterministic_and_leaves_letterless_text() -> None:
    a = [noisy_spelling(t, np.random.default_rng(5)) for t in (*ARABIC_TITLES, *LATIN_TITLES)]
    b = [noisy_spelling(t, np.random.default_rng(5)) for t in (*ARABIC_TITLES, *LATIN_TITLES)]
    assert a == b
    rng = np.random.default_rng(0)
    assert noisy_spelling("", rng) == "" and noisy_spelling("123 - 45", rng) == "123 - 45"


def test_fold_is_the_rule_of_normalize_key() -> None:
    assert arabic.fold("إِسْوَارَة ذهـــب ٢١ ۳") == "اسواره ذهب 21 3"
    assert normalize_key("أحمد مستشفى") == arabic.fold("أحمد مستشفى") == "احمد مستشفي"
    # the noise draws its letters from the same tables as the fold it must survive
    for form in arabic.ALEF_FORMS:
        assert arabic.fold(form) == arabic.ALEF
    assert all(arabic.fold(f"ب{m}") == "ب" for m in arabic.COMMON_TASHKEEL)


@pytest.mark.parametrize("fn", noise_module.VARIANTS, ids=lambda f: f.__name__)
def test_variants_survive_fold(fn) -> None:
    rng = np.random.default_rng(3)
    for title in ARABIC_TITLES:
        assert arabic.fold(fn(title, rng)) == arabic.fold(title)
