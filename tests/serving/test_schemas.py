"""Request validation: every limit and field rule gives an error that names the field."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from twotower.serving.schemas import MAX_ID_LENGTH, RetrieveRequest

GOOD = {"product_id": "p1", "event_type": "purchase"}


def errors(payload: dict) -> str:
    with pytest.raises(ValidationError) as info:
        RetrieveRequest.model_validate(payload)
    return str(info.value)


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        ({"recent_interactions": [GOOD] * 101}, "at most 100"),
        ({"recent_interactions": [GOOD], "k": 0}, "greater than or equal to 1"),
        ({"recent_interactions": [GOOD], "k": 101}, "less than or equal to 100"),
        (
            {"recent_interactions": [{"product_id": "p1", "event_type": "teleport"}]},
            "unknown event type 'teleport'",
        ),
        (
            {"recent_interactions": [{"product_id": "x" * (MAX_ID_LENGTH + 1), "event_type": "view"}]},
            "at most 128",
        ),
        ({"recent_interactions": [{"product_id": "", "event_type": "view"}]}, "at least 1"),
        ({"recent_interactions": [{"event_type": "view"}]}, "product_id"),
        (
            {"recent_interactions": [{"product_id": "p1", "event_type": "view", "timestamp": "yesterday"}]},
            "timestamp",
        ),
        ({"recent_interactions": [GOOD], "recent_interaction": []}, "Extra inputs"),
        ({"k": 5}, "recent_interactions"),
        ({"recent_interactions": [GOOD], "filters": {"categories": "rings"}}, "filters.categories"),
        ({"recent_interactions": [GOOD], "k": "ten"}, "k"),
    ],
)
def test_invalid_requests_name_the_problem(payload: dict, expected: str) -> None:
    assert expected in errors(payload)


def test_valid_request_normalizes() -> None:
    request = RetrieveRequest.model_validate(
        {
            "recent_interactions": [
                {"product_id": 123, "event_type": "Add To Cart", "timestamp": "2024-05-01T10:00:00Z"},
                {"product_id": " p2 ", "event_type": "order_completed", "timestamp": 1714557600},
            ],
            "filters": {"categories": ["rings"]},
        }
    )
    first, second = request.recent_interactions
    assert first.product_id == "123" and second.product_id == "p2"
    assert first.epoch() == pytest.approx(1714557600.0) and second.epoch() == pytest.approx(1714557600.0)
    assert request.k == 10 and request.exclude_seen is None  # absent: the bundle's scoring settings
