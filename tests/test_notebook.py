"""notebooks/01_quickstart.ipynb runs top to bottom on tiny data (executed in a temp dir, outputs discarded)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "01_quickstart.ipynb"


def test_committed_notebook_has_no_outputs() -> None:
    notebook = json.loads(NOTEBOOK.read_text(encoding="utf-8"))
    code = [cell for cell in notebook["cells"] if cell["cell_type"] == "code"]
    assert code, "the notebook has no code cells"
    assert all(not cell.get("outputs") and cell.get("execution_count") is None for cell in code), (
        "clear the notebook's outputs before committing (jupyter nbconvert --clear-output --inplace ...)"
    )


@pytest.mark.slow
def test_quickstart_notebook_executes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    try:
        KernelSpecManager().get_kernel_spec("python3")
    except NoSuchKernel:  # a bare environment: register this interpreter's kernel for the user
        from ipykernel.kernelspec import install

        install(user=True, kernel_name="python3")

    work = tmp_path / "work"
    # the kernel inherits the environment: tiny sizes, a private work dir, a non-interactive plot backend
    monkeypatch.setenv("TWOTOWER_NOTEBOOK_WORK", str(work))
    monkeypatch.setenv("TWOTOWER_NOTEBOOK_PRODUCTS", "300")
    monkeypatch.setenv("TWOTOWER_NOTEBOOK_BUYERS", "150")
    monkeypatch.setenv("TWOTOWER_NOTEBOOK_EPOCHS", "1")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(
        notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOK.parent)}}
    )
    client.execute()
    nbformat.write(notebook, tmp_path / "executed.ipynb")  # kept for inspection when a later assert fails

    metrics = json.loads((work / "eval" / "metrics.json").read_text(encoding="utf-8"))
    assert {"model", "popularity", "item_knn", "text_only", "slices"} <= set(metrics)
    assert (work / "metrics.png").stat().st_size > 0
    outputs = "".join(
        str(output.get("text", "")) + json.dumps(output.get("data", {}), ensure_ascii=False)
        for cell in notebook.cells
        if cell.cell_type == "code"
        for output in cell.outputs
    )
    assert "actual next item:" in outputs
    assert "خاتم" in outputs or any("\u0600" <= ch <= "\u06ff" for ch in outputs)  # Arabic titles shown
