"""The data report: what was read, what was dropped and why, and what came out."""

from __future__ import annotations

import json
import logging
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)


@dataclass
class DataReport:
    """Counters filled by the loaders; printed once and saved as JSON next to the run."""

    rows_read: Counter = field(default_factory=Counter)  # per source: "events", "products", "photos"
    dropped: Counter = field(default_factory=Counter)  # "events.unknown_event_name", ...
    flagged: Counter = field(default_factory=Counter)  # kept but degraded, e.g. "products.malformed_metadata"
    products: int = 0
    duplicates_collapsed: int = 0
    buyers: int = 0
    events_kept: int = 0
    examples: dict[str, int] = field(default_factory=dict)
    cold_items: int = 0
    split: dict[str, object] = field(default_factory=dict)

    def drop(self, reason: str, count: int) -> None:
        if count:
            self.dropped[reason] += int(count)

    def flag(self, reason: str, count: int) -> None:
        if count:
            self.flagged[reason] += int(count)

    def summary(self) -> str:
        drops = ", ".join(f"{k}={v}" for k, v in sorted(self.dropped.items())) or "none"
        flags = ", ".join(f"{k}={v}" for k, v in sorted(self.flagged.items())) or "none"
        read = ", ".join(f"{k}={v}" for k, v in sorted(self.rows_read.items()))
        examples = ", ".join(f"{k}={v}" for k, v in self.examples.items())
        return (
            f"data: read {read}; dropped {drops}; flagged {flags}; products={self.products} "
            f"(duplicates collapsed={self.duplicates_collapsed}); buyers={self.buyers}; events kept={self.events_kept}; "
            f"examples {examples or 'n/a'}; cold items={self.cold_items}"
        )

    def counts(self) -> dict[str, int]:
        """What a bundle's manifest records: examples per split, buyers, events kept, cold items."""
        return {
            **{f"examples_{split}": int(n) for split, n in self.examples.items()},
            "buyers": int(self.buyers),
            "events": int(self.events_kept),
            "cold_items": int(self.cold_items),
        }

    def to_dict(self) -> dict:
        out = asdict(self)
        out["rows_read"], out["dropped"], out["flagged"] = (
            dict(self.rows_read),
            dict(self.dropped),
            dict(self.flagged),
        )
        return out

    def save(self, path: str | Path) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(
            json.dumps(self.to_dict(), indent=2, ensure_ascii=False, default=str), encoding="utf-8"
        )
