"""A/B variants: which bundles a service serves side by side, and which one answers a given buyer.

Pure (no HTTP, no model loading): the service parses the config once at startup and calls `assign` per
request. Assignment is a stable hash, not Python's per-process `hash()`: a buyer sees the same variant in
every worker, on every restart, as long as the salt and the shares stay the same. Changing the salt
reshuffles everyone (a new experiment); growing a share moves only buyers at the boundary
(the cumulative shares are laid out in the order the variants are declared).

    u = int(blake2b(salt + "\\x1f" + normalize_id(buyer_id), 8 bytes)) / 2**64   in [0, 1)
    variant = the first one whose cumulative share exceeds u

Requests without a buyer id (or with one that normalizes to empty) go to the control variant. A request
may force a variant (`override`, for tests and QA); an unknown name is a `VariantError` (HTTP 422).

Example (the intended call sites, once wired):
    >>> variants = VariantsConfig.parse(cfg.get("variants"), bundle=cfg.bundle, salt=cfg.get("variants_salt", ""))
    >>> recommenders = {v.name: Recommender.from_bundle(v.bundle, settings) for v in variants}  # at startup
    >>> name = variants.assign(request.buyer_id, override=request.variant)        # per request
    >>> response["variant"] = name; response["model_version"] = recommenders[name].version
    >>> # /admin/reload {"variant": "treatment"} reloads recommenders["treatment"] only
"""

from __future__ import annotations

import bisect
import hashlib
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from twotower.data.schema import normalize_id

__all__ = ["Variant", "VariantError", "VariantsConfig", "bucket"]

CONTROL = "control"
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")
SHARE_TOLERANCE = 1e-6


class VariantError(ValueError):
    """A request naming a variant this service does not serve (`status` is the HTTP status it maps to)."""

    def __init__(self, message: str, status: int = 422) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Variant:
    name: str
    bundle: str
    share: float


def bucket(buyer_id: str, salt: str) -> float:
    """The buyer's stable position in [0, 1) for this salt (same value in every process and platform)."""
    digest = hashlib.blake2b(f"{salt}\x1f{normalize_id(buyer_id)}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2.0**64


@dataclass(frozen=True)
class VariantsConfig:
    """Validated variants, in declaration order; build with `parse`. The control answers anonymous traffic."""

    variants: tuple[Variant, ...]
    salt: str = ""
    control: str = CONTROL

    def __post_init__(self) -> None:
        if not self.variants:
            raise ValueError("no variants: give `bundle=PATH` or `variants: {control: {bundle: PATH}}`")
        names = [v.name for v in self.variants]
        if len(set(names)) != len(names):
            raise ValueError(f"variant names must be unique; got {names}")
        for variant in self.variants:
            if not isinstance(variant.name, str) or not _NAME.fullmatch(variant.name):
                raise ValueError(
                    f"variant name {variant.name!r} must be a plain identifier (letters, digits, _; "
                    "not starting with a digit; at most 64 characters): it becomes a metrics label"
                )
            if not isinstance(variant.bundle, str) or not variant.bundle:
                raise ValueError(f"variants.{variant.name}.bundle must be a bundle directory path")
            share = variant.share
            if isinstance(share, bool) or not isinstance(share, int | float) or not share > 0:
                raise ValueError(f"variants.{variant.name}.share must be a number > 0; got {share!r}")
        total = sum(v.share for v in self.variants)
        if abs(total - 1.0) > SHARE_TOLERANCE:
            shares = ", ".join(f"{v.name}={v.share}" for v in self.variants)
            raise ValueError(f"variant shares must sum to 1 (within 1e-6); got {total!r} ({shares})")
        if self.control not in names:
            raise ValueError(
                f"no variant named {self.control!r}: requests without a buyer_id go to the control; "
                f"name one variant {self.control!r} (got {', '.join(names)})"
            )
        bounds, running = [], 0.0
        for variant in self.variants:
            running += variant.share
            bounds.append(running)
        bounds[-1] = 1.0  # float rounding must never leave [sum, 1) unassigned
        object.__setattr__(self, "_bounds", tuple(bounds))

    @classmethod
    def parse(
        cls,
        variants: Mapping[str, Any] | None = None,
        bundle: str | None = None,
        salt: str = "",
        control: str = CONTROL,
    ) -> VariantsConfig:
        """From `variants: {name: {bundle: PATH, share: S}}`; without variants, `bundle` is a single control.

        `share` may be left out only when there is a single variant (it is then 1).
        """
        if not variants:
            if not bundle:
                raise ValueError("give `bundle=PATH` or `variants: {control: {bundle: PATH, share: 1}}`")
            return cls((Variant(control, str(bundle), 1.0),), str(salt), control)
        if not isinstance(variants, Mapping):
            raise ValueError(f"variants must map names to {{bundle, share}}; got {variants!r}")
        parsed = []
        for name, spec in variants.items():
            if not isinstance(spec, Mapping):
                raise ValueError(f"variants.{name} must be {{bundle: PATH, share: S}}; got {spec!r}")
            unknown = set(spec) - {"bundle", "share"}
            if unknown:
                raise ValueError(
                    f"variants.{name} has unknown keys {sorted(map(str, unknown))}; allowed: bundle, share"
                )
            share = spec.get("share", 1.0 if len(variants) == 1 else None)
            if share is None:
                raise ValueError(f"variants.{name}.share is missing (shares must sum to 1)")
            bundle_path = spec.get("bundle")
            parsed.append(Variant(str(name), "" if bundle_path is None else str(bundle_path), share))
        return cls(tuple(parsed), str(salt), control)

    # -- lookups --------------------------------------------------------------------------------------
    @property
    def names(self) -> list[str]:
        return [v.name for v in self.variants]

    def __iter__(self) -> Iterator[Variant]:
        return iter(self.variants)

    def __len__(self) -> int:
        return len(self.variants)

    def __getitem__(self, name: str) -> Variant:
        for variant in self.variants:
            if variant.name == name:
                return variant
        raise VariantError(f"unknown variant {name!r}; this service serves: {', '.join(self.names)}")

    def assign(self, buyer_id: str | None, override: str | None = None) -> str:
        """The variant that answers this request: `override` if given (must be known), the control for
        anonymous requests, else the buyer's stable bucket."""
        if override is not None:
            return self[override].name
        if len(self.variants) == 1:
            return self.variants[0].name
        if buyer_id is None or not normalize_id(buyer_id):
            return self.control
        index = bisect.bisect_right(self._bounds, bucket(buyer_id, self.salt))  # type: ignore[attr-defined]
        return self.variants[index].name

    def describe(self) -> dict[str, Any]:
        """For /info: names, bundles and shares (the salt is not secret, but is not needed by clients)."""
        return {
            "control": self.control,
            "variants": {v.name: {"bundle": v.bundle, "share": v.share} for v in self.variants},
        }
