"""Every third-party import under twotower/ must come from a distribution pyproject.toml declares.

A fresh machine installs only what pyproject.toml lists; a module that arrives through another package (or that
was installed by hand on a developer's machine) breaks `pip install -e .` users. Imports are found with `ast`,
lazy imports inside functions included.
"""

from __future__ import annotations

import ast
import re
import sys
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest
import tomllib

ROOT = Path(__file__).resolve().parents[1]


def _normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _requirement_name(requirement: str) -> str:
    return _normalize(re.split(r"[<>=!~\[; ]", requirement.strip(), maxsplit=1)[0])


def _project() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]


def top_level_imports(package_dir: Path) -> dict[str, set[str]]:
    """Absolute top-level module name -> files importing it (relative to package_dir's parent)."""
    found: dict[str, set[str]] = {}
    for path in sorted(package_dir.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            else:
                continue
            for name in names:
                found.setdefault(name.split(".")[0], set()).add(str(path.relative_to(package_dir.parent)))
    return found


def undeclared(imports: dict[str, set[str]], declared: set[str], own: str) -> dict[str, set[str]]:
    providers = packages_distributions()
    missing = {}
    for module, files in imports.items():
        if module == own or module in sys.stdlib_module_names:
            continue
        distributions = {_normalize(d) for d in providers.get(module, [module])}
        if not distributions & declared:
            missing[module] = files
    return missing


def test_every_runtime_import_is_declared() -> None:
    declared = {_requirement_name(r) for r in _project()["dependencies"]}
    missing = undeclared(top_level_imports(ROOT / "twotower"), declared, own="twotower")
    assert not missing, (
        "twotower/ imports modules no declared dependency provides (add the distribution to pyproject.toml "
        f"[project.dependencies] and environment.yml): {missing}"
    )


def test_the_check_catches_an_undeclared_import(tmp_path: Path) -> None:
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "mod.py").write_text(
        "import os\n\ndef lazy():\n    import orjson\n    from numpy import array\n"
    )
    found = top_level_imports(package)
    assert found["orjson"] == {"pkg/mod.py"}
    assert set(undeclared(found, {"numpy"}, own="pkg")) == {"orjson"}


@pytest.mark.parametrize("extra", ["dev", "bench"])
def test_extras_exist(extra: str) -> None:
    assert _project()["optional-dependencies"][extra]


def test_environment_yml_mirrors_the_runtime_dependencies() -> None:
    text = (ROOT / "environment.yml").read_text(encoding="utf-8")
    listed = {_normalize(m) for m in re.findall(r"^\s*-\s*([A-Za-z0-9_.\-]+)", text, flags=re.MULTILINE)}
    listed |= {"torch"} if "pytorch" in listed else set()
    listed |= {"faiss-cpu"} if "faiss-gpu" in listed else set()
    missing = {_requirement_name(r) for r in _project()["dependencies"]} - listed
    assert not missing, (
        f"environment.yml lacks runtime dependencies declared in pyproject.toml: {sorted(missing)}"
    )
