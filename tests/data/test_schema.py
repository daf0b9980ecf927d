import pandas as pd
import pytest

from twotower.data.schema import (
    EVENT_COLUMNS,
    DataValidationError,
    EventSchema,
    normalize_key,
    normalize_text,
    resolve_columns,
)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("View", "view"),
        ("view", "view"),
        ("product_viewed", "view"),
        ("Product Viewed", "view"),
        ("AddToCart", "add_to_cart"),
        ("add_to_cart", "add_to_cart"),
        ("Add To Cart", "add_to_cart"),
        ("add-to-cart", "add_to_cart"),
        ("Purchase", "purchase"),
        ("order_completed", "purchase"),
        ("Order Completed", "purchase"),
        ("page_scroll", None),
        ("", None),
        (None, None),
    ],
)
def test_event_names_match_case_and_separator_insensitively(raw, expected):
    schema = EventSchema()
    code = schema.code(raw)
    assert (code == -1) if expected is None else (code == ["view", "add_to_cart", "purchase"].index(expected))


def test_event_aliases_and_weights_are_configurable():
    schema = EventSchema(weights={"purchase": 20}, aliases={"purchase": ["checkout_success"]})
    assert schema.code("Checkout Success") == 2
    assert schema.weight_array.tolist() == [1.0, 5.0, 20.0]
    codes = schema.codes(pd.Series(["View", "checkout_success", "nope", None]))
    assert codes.tolist() == [0, 2, -1, -1]


def test_bad_event_config_is_rejected_with_the_name():
    with pytest.raises(DataValidationError, match="wishlist"):
        EventSchema(weights={"wishlist": 2})
    with pytest.raises(DataValidationError, match="positive"):
        EventSchema(weights={"view": 0})


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("خَاتَمٌ ذَهَب", "خاتم ذهب"),  # tashkeel
        ("خاتـــم", "خاتم"),  # tatweel
        ("أساور", "اساور"),
        ("إسوارة", "اسواره"),
        ("آلة", "اله"),
        ("ٱلذهب", "الذهب"),  # alef forms, teh marbuta
        ("مستشفى", "مستشفي"),  # alef maksura -> yeh
        ("عيار ٢١", "عيار 21"),  # Arabic-Indic digits
        ("Samsung  Galaxy", "samsung galaxy"),  # case-fold + whitespace
    ],
)
def test_arabic_matching_key(a, b):
    assert normalize_key(a) == normalize_key(b)


def test_matching_key_keeps_different_words_apart():
    assert normalize_key("خاتم ذهب") != normalize_key("خاتم فضة")


def test_normalize_text_keeps_script_and_collapses_whitespace():
    assert normalize_text("  خَاتم \n ذهب ") == "خَاتم ذهب"
    assert normalize_text(None) == "" and normalize_text(float("nan")) == ""


def test_resolve_columns_accepts_aliases_case_insensitively():
    rename = resolve_columns(
        ["Distinct_ID", "item_id", "event_name", "created_at"], EVENT_COLUMNS, "events.csv"
    )
    assert sorted(rename.values()) == ["buyer_id", "event_type", "product_id", "timestamp"]


def test_missing_column_names_file_column_and_found_columns():
    with pytest.raises(DataValidationError) as error:
        resolve_columns(["distinct_id", "product_id", "event_name"], EVENT_COLUMNS, "events.csv")
    message = str(error.value)
    assert "events.csv" in message and "'timestamp'" in message and "created_at" in message
    assert "['distinct_id', 'product_id', 'event_name']" in message
