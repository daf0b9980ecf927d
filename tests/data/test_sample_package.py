"""The sample package itself: one set of defaults, unchanged bytes, `python -m twotower.data.sample`."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import yaml

import twotower.data.sample as sample_package
from twotower.data.catalog import Catalog
from twotower.data.sample import DEFAULTS, SampleSettings, generate_sample

ROOT = Path(__file__).resolve().parents[2]


def test_one_set_of_sample_defaults() -> None:
    """conf/data/sample.yaml spells the sample defaults for Hydra; they must be SampleSettings' defaults."""
    conf = yaml.safe_load((ROOT / "conf/data/sample.yaml").read_text(encoding="utf-8"))
    assert SampleSettings(**conf["sample"]) == DEFAULTS
    assert set(conf["sample"]) == set(DEFAULTS.record())


def test_sample_bytes_are_pinned(tmp_path: Path) -> None:
    """Quality figures were measured on the sample: a refactor must not change its bytes for a seed.

    If a deliberate change to the generator breaks this, update the digests and say so in the commit."""
    paths = generate_sample(tmp_path, products=120, buyers=40, seed=7)
    digests = {name: hashlib.sha256(p.read_bytes()).hexdigest()[:16] for name, p in paths.items()}
    assert digests == PINNED_120_40_7


# Digests of the sample written by the pre-package generator (twotower/data/sample.py at 03b034f).
PINNED_120_40_7 = {"events": "1aaa04d4165d1654", "products": "0975fdec061f4652", "photos": "d9b9bab05860c6d2"}


def test_python_dash_m_keeps_the_cli(tmp_path: Path) -> None:
    out = tmp_path / "cli"
    args = ["--out", str(out), "--products", "120", "--buyers", "40", "--seed", "7"]
    done = subprocess.run(
        [sys.executable, "-m", "twotower.data.sample", *args], capture_output=True, text=True, check=True
    )
    assert done.stdout.startswith("wrote 120 products") and str(out) in done.stdout
    digests = {p.stem: hashlib.sha256(p.read_bytes()).hexdigest()[:16] for p in out.glob("*.csv")}
    assert digests == PINNED_120_40_7


def test_no_second_catalog_class_in_the_sample() -> None:
    """The generator's item table has its own name: `Catalog` means the product catalog only."""
    names = {
        name
        for module in vars(sample_package).values()
        if hasattr(module, "__file__")
        for name in vars(module)
    }
    assert "Catalog" not in names and "_Catalog" not in names
    assert sample_package.products.SampleItems is not Catalog
