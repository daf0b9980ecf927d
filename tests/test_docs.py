"""docs/architecture.md is the newcomers' map: every package under twotower/ must be named in it."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def packages() -> list[str]:
    return sorted(
        str(init.parent.relative_to(ROOT)) + "/"
        for init in (ROOT / "twotower").rglob("__init__.py")
        if "__pycache__" not in init.parts
    )


def test_every_package_is_named_in_the_architecture_map() -> None:
    text = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    missing = [p for p in packages() if p not in text and p.removeprefix("twotower/") not in text]
    assert not missing, f"docs/architecture.md does not name these packages: {missing}"


def test_readme_links_the_architecture_map() -> None:
    assert "docs/architecture.md" in (ROOT / "README.md").read_text(encoding="utf-8")
