"""Request and response models of the HTTP service (pydantic v2).

FastAPI validates requests against these models before they reach the inference worker, so a malformed
request is answered 422 by the HTTP process and never joins a batch. Limits are module constants so that
tests, docs and the OpenAPI schema agree.
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator

from twotower.data.schema import EVENT_TYPES, EventSchema

MAX_INTERACTIONS = 100
MAX_K = 100
MAX_ID_LENGTH = 128
MAX_EVENT_NAME_LENGTH = 64
MAX_FILTER_VALUES = 50

# The event names the HTTP process accepts; serve.py replaces it with the bundle's training-time schema
# (`configure_event_schema`) before the API processes fork. Workers re-check against their own bundle.
_event_schema = EventSchema()
# The A/B variant names a request may force; serve.py sets them like the event schema (None: any name
# passes here and the worker answers 422 for one it does not serve).
_variant_names: tuple[str, ...] | None = None


def configure_event_schema(schema: EventSchema) -> None:
    """Accept the event spellings of `schema` (the bundle's training config) in request validation."""
    global _event_schema
    _event_schema = schema


def configure_variants(names: list[str] | tuple[str, ...] | None) -> None:
    """Accept only these names in a request's `variant` (and a reload's)."""
    global _variant_names
    _variant_names = tuple(names) if names else None


def _check_variant(value: str | None) -> str | None:
    if value is not None and _variant_names is not None and value not in _variant_names:
        raise ValueError(f"unknown variant {value!r}; this service serves: {', '.join(_variant_names)}")
    return value


VariantName = Annotated[str, StringConstraints(min_length=1, max_length=64)]


ProductId = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=MAX_ID_LENGTH)]
FilterValue = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=MAX_ID_LENGTH)]


class _Strict(BaseModel):
    # Unknown keys are errors: a typo such as "recent_interaction" must not silently mean "no history".
    # Numeric ids (product_id: 123) are accepted and compared as strings, like the catalog's ids.
    model_config = ConfigDict(extra="forbid", coerce_numbers_to_str=True)


class Interaction(_Strict):
    product_id: ProductId = Field(description="A catalog product id (a duplicate's id works too).")
    event_type: Annotated[str, StringConstraints(min_length=1, max_length=MAX_EVENT_NAME_LENGTH)] = Field(
        description=f"One of {list(EVENT_TYPES)} or a known spelling (Purchase, order_completed, Add To Cart...).",
        examples=list(EVENT_TYPES),
    )
    timestamp: float | dt.datetime | None = Field(
        default=None,
        description="Optional ISO-8601 time or epoch seconds; orders the history when it is truncated.",
    )

    @field_validator("event_type")
    @classmethod
    def _known_event(cls, value: str) -> str:
        if _event_schema.code(value) < 0:
            raise ValueError(
                f"unknown event type {value!r}; known types: {', '.join(EVENT_TYPES)} (or their aliases)"
            )
        return value

    @field_validator("timestamp")
    @classmethod
    def _finite_time(cls, value: float | dt.datetime | None) -> float | dt.datetime | None:
        if isinstance(value, float) and not (-1e13 < value < 1e13):
            raise ValueError("timestamp must be a finite epoch time in seconds")
        return value

    def epoch(self) -> float | None:
        """The timestamp as epoch seconds (naive datetimes are taken as UTC)."""
        if self.timestamp is None or isinstance(self.timestamp, float | int):
            return None if self.timestamp is None else float(self.timestamp)
        stamp = self.timestamp if self.timestamp.tzinfo else self.timestamp.replace(tzinfo=dt.timezone.utc)
        return stamp.timestamp()


class Filters(_Strict):
    categories: list[FilterValue] | None = Field(
        default=None, max_length=MAX_FILTER_VALUES, description="Keep items in any of these categories."
    )
    brands: list[FilterValue] | None = Field(
        default=None, max_length=MAX_FILTER_VALUES, description="Keep items of any of these brands."
    )


class BuyerRequest(_Strict):
    buyer_id: Annotated[str, StringConstraints(max_length=MAX_ID_LENGTH)] | None = Field(
        default=None, description="Optional, for logs; the model uses only the interactions."
    )
    recent_interactions: list[Interaction] = Field(
        max_length=MAX_INTERACTIONS, description=f"Up to {MAX_INTERACTIONS} interactions, oldest first."
    )
    variant: VariantName | None = Field(
        default=None,
        description="Force an A/B variant (tests, QA); default: the buyer's stable assignment, or the "
        "control without buyer_id.",
    )

    _known_variant = field_validator("variant")(classmethod(lambda cls, value: _check_variant(value)))


class RetrieveRequest(BuyerRequest):
    k: int = Field(default=10, ge=1, le=MAX_K, description="How many products to return.")
    exclude_seen: bool | None = Field(
        default=None,
        description="Leave out products named in recent_interactions (true), or allow them (false); absent: the "
        "bundle's scoring settings. Each setting is served with the scoring chosen for it on validation data "
        "at export.",
    )
    filters: Filters | None = None


class EncodeBuyerRequest(BuyerRequest):
    pass


class Item(BaseModel):
    product_id: str
    score: float = Field(
        description="Inner product with the buyer vector; popularity share (0..1) in the fallback."
    )
    title: str
    description: str
    brand: str
    category: str
    photo_url: str


class RetrieveResponse(BaseModel):
    items: list[Item]
    unknown_product_ids: list[str]
    fallback: Literal["popular"] | None = Field(description="'popular' when the buyer had no known products.")
    model_version: str
    variant: str = Field(description="The A/B variant that answered (also in the X-Twotower-Variant header).")


class EncodeBuyerResponse(BaseModel):
    embedding: list[float]
    unknown_product_ids: list[str]
    model_version: str
    variant: str = Field(description="The A/B variant that answered (also in the X-Twotower-Variant header).")


class ReloadRequest(_Strict):
    variant: VariantName | None = Field(
        default=None, description="The A/B variant to reload (default: the control); the others keep serving."
    )
    bundle: Annotated[str, StringConstraints(min_length=1, max_length=4096)] | None = Field(
        default=None,
        description="Bundle directory inside the server's bundle root (server.bundle_root), relative to it or "
        "absolute; default: the bundle the variant was started with.",
    )

    _known_variant = field_validator("variant")(classmethod(lambda cls, value: _check_variant(value)))

    @field_validator("bundle")
    @classmethod
    def _no_control_characters(cls, value: str | None) -> str | None:
        if value is not None and any(ord(c) < 32 or ord(c) == 127 for c in value):
            raise ValueError("control characters (NUL, newline, ...) are not allowed in a bundle path")
        return value
