"""Writing the sample: settings (the one set of defaults), file layout, atomic writes, regeneration."""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from twotower.data.sample.events import events_chunk
from twotower.data.sample.products import make_products

log = logging.getLogger(__name__)

FILES: tuple[str, ...] = ("events", "products", "photos")
MIN_PRODUCTS = 50
BUYER_CHUNK = 8192  # buyers per events chunk; each chunk has its own RNG stream


@dataclass(frozen=True)
class SampleSettings:
    """How big the sample is and which seed draws it. The defaults here are THE sample defaults: the CLI
    uses them, and conf/data/sample.yaml repeats them for Hydra (a test checks that the two agree)."""

    products: int = 2000  # product rows, duplicates included
    buyers: int = 1000
    seed: int = 0
    events_per_buyer: float = 30.0  # mean; the number of events is about buyers * events_per_buyer

    def __post_init__(self) -> None:
        # Hydra and JSON hand numbers over in many types; store plain ones so that records compare equal
        for name in ("products", "buyers", "seed"):
            object.__setattr__(self, name, int(getattr(self, name)))
        object.__setattr__(self, "events_per_buyer", float(self.events_per_buyer))
        if self.products < MIN_PRODUCTS:
            raise ValueError(
                f"products must be at least {MIN_PRODUCTS} (one per category and then some), got {self.products}"
            )
        if self.buyers < 1:
            raise ValueError(f"buyers must be at least 1, got {self.buyers}")
        if not self.events_per_buyer > 0:
            raise ValueError(f"events_per_buyer must be positive, got {self.events_per_buyer}")

    def record(self) -> dict[str, Any]:
        """What `sample.json` holds: every setting, defaults included."""
        return asdict(self)


DEFAULTS = SampleSettings()


def _paths(out_dir: Path) -> dict[str, Path]:
    return {name: out_dir / f"{name}.csv" for name in FILES}


def write_sample(out_dir: str | Path, settings: SampleSettings) -> tuple[dict[str, Path], dict[str, int]]:
    """Write the three files atomically; returns their paths and what was written (for `summary`)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = _paths(out)
    tmp = {name: p.with_name(f".{p.name}.{os.getpid()}.tmp") for name, p in paths.items()}
    csv_args = {"index": False, "lineterminator": "\n"}
    seed, buyers = settings.seed, settings.buyers
    try:
        items, product_df, photo_df = make_products(settings.products, np.random.default_rng([seed, 0]))
        product_df.to_csv(tmp["products"], **csv_args)
        photo_df.to_csv(tmp["photos"], **csv_args)
        n_events = 0
        chunks = range(0, buyers, BUYER_CHUNK)
        with open(tmp["events"], "w", encoding="utf-8", newline="") as f:
            f.write("distinct_id,product_id,event_name,created_at\n")
            for b0 in tqdm(
                chunks, desc="sample events", unit="chunk", disable=None if len(chunks) > 1 else True
            ):
                nb = min(BUYER_CHUNK, buyers - b0)
                # one RNG stream per chunk: the output depends on the arguments only
                rng = np.random.default_rng([seed, 1, b0])
                lines = events_chunk(items, b0, nb, settings.events_per_buyer, rng)
                f.writelines(lines)
                n_events += len(lines)
        for name in FILES:  # events last: a crash leaves the set incomplete, so it is regenerated
            os.replace(tmp[name], paths[name])
    finally:
        for p in tmp.values():
            p.unlink(missing_ok=True)
    stats = {
        "products": len(product_df),
        "duplicates": int((items.dup_id_of != "").sum()),
        "photos": len(photo_df),
        "buyers": buyers,
        "events": n_events,
    }
    return paths, stats


def generate_sample(
    out_dir: str | Path,
    products: int = DEFAULTS.products,
    buyers: int = DEFAULTS.buyers,
    seed: int = DEFAULTS.seed,
    events_per_buyer: float = DEFAULTS.events_per_buyer,
) -> dict[str, Path]:
    """Write events.csv, products.csv and photos.csv under `out_dir`; same arguments give the same bytes.

    Returns {"events": path, "products": path, "photos": path}. `products` counts duplicate rows too;
    the number of events is about buyers * events_per_buyer (plus ~0.5% unknown-name rows).

    Example:
        >>> paths = generate_sample("data/sample", products=300, buyers=200, seed=0)
        >>> sorted(paths)
        ['events', 'photos', 'products']
    """
    settings = SampleSettings(products, buyers, seed, events_per_buyer)
    paths, stats = write_sample(out_dir, settings)
    log.info("sample dataset: %s", summary(paths, stats, seed))
    return paths


def ensure_sample(out_dir: str | Path, **kwargs: Any) -> dict[str, Path]:
    """The sample dataset's paths under `out_dir`, generating it (with `generate_sample`'s kwargs) when missing.

    The generation arguments are recorded in `sample.json`; when they differ from `kwargs` (say a smaller
    sample was asked for), the dataset is generated again. Files without a `sample.json` are used as they are.
    """
    settings = SampleSettings(**kwargs)
    out_dir = Path(out_dir)
    paths = _paths(out_dir)
    record = out_dir / "sample.json"
    if all(p.is_file() for p in paths.values()):
        if not record.is_file():
            return paths
        if json.loads(record.read_text(encoding="utf-8")) == settings.record():
            return paths
        log.info("sample dataset under %s was generated with other settings; generating it again", out_dir)
    else:
        log.info("sample dataset missing under %s; generating it", out_dir)
    paths = generate_sample(out_dir, **settings.record())
    tmp = out_dir / f".sample.json.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(settings.record(), sort_keys=True), encoding="utf-8")
    os.replace(tmp, record)
    return paths


def summary(paths: dict[str, Path], stats: dict[str, int], seed: int) -> str:
    """One line saying what was written where."""
    return (
        f"wrote {stats['products']} products ({stats['duplicates']} duplicates), {stats['photos']} photos, "
        f"{stats['events']} events from {stats['buyers']} buyers (seed {seed}) to {paths['events'].parent}"
    )
