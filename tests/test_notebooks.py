"""Every notebook executes top to bottom with small settings, on the data it is meant for."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from helpers.commands import call_cli
from helpers.paths import GOLDENS, REPO
from helpers.tiny import JOB

NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))


def execute(path: Path, monkeypatch, **env: str) -> nbformat.NotebookNode:
    monkeypatch.setenv("DEEPFILL_NB_SAMPLES", "40")
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    notebook = nbformat.read(path, as_version=4)
    NotebookClient(
        notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(REPO)}}
    ).execute()
    return notebook


def text_output(notebook: nbformat.NotebookNode) -> str:
    return "".join(
        o.get("text", "")
        for c in notebook.cells
        if c.cell_type == "code"
        for o in c.get("outputs", [])
        if o.output_type == "stream"
    )


def images(notebook: nbformat.NotebookNode) -> int:
    return sum(
        bool({"image/png", "image/jpeg"} & set(o.get("data", {})))
        for c in notebook.cells
        if c.cell_type == "code"
        for o in c.get("outputs", [])
    )


def test_the_four_notebooks_are_there() -> None:
    assert [p.name[:3] for p in NOTEBOOKS] == ["01_", "02_", "03_", "04_"]


# The figures each notebook draws when it runs on what `make notebooks` gives it.
STORED_FIGURES = {"01_": 1, "02_": 3, "03_": 2, "04_": 4}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda path: path.name)
def test_the_stored_notebook_shows_its_figures(path) -> None:
    """Notebooks are stored executed (`make notebooks`), so they read with their figures on a
    forge: every code cell run once, top to bottom, no error, every figure there, and the trained
    parts drawn from trained models rather than their 'run this first' branch."""
    notebook = nbformat.read(path, as_version=4)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    counts = [cell.execution_count for cell in code]
    rerun = f"{path.name}: run `make notebooks`"
    assert counts == list(range(1, len(code) + 1)), f"{rerun}: not executed once, in order"
    errors = [o for cell in code for o in cell.outputs if o.output_type == "error"]
    assert not errors, f"{path.name}: a stored error: {errors[0].get('ename')}"
    assert images(notebook) == STORED_FIGURES[path.name[:3]], f"{rerun}: figures missing"
    text = text_output(notebook)
    assert "no finished ablation" not in text and "run `make" not in text
    assert str(REPO) not in path.read_text(), f"{path.name}: stores a path of the machine it ran on"


def test_inpaint_notebook_with_official_weights(monkeypatch, tmp_path) -> None:
    # The official checkpoint layout (a folder with `checkpoint` and the TF files), loaded as is.
    out = tmp_path / "out"
    notebook = execute(
        NOTEBOOKS[0], monkeypatch, DEEPFILL_NB_WEIGHTS=str(GOLDENS), DEEPFILL_NB_OUTPUT=str(out)
    )
    text = text_output(notebook)
    assert f"weights: {GOLDENS}" in text and "cnum 32" in text
    assert images(notebook) == 1
    assert sorted(p.name for p in out.iterdir()) == ["completed.png", "flow.png"]


def test_masks_notebook(monkeypatch) -> None:
    notebook = execute(NOTEBOOKS[1], monkeypatch)
    assert images(notebook) >= 1


def test_attention_notebook_on_a_real_ablation_sweep(monkeypatch, tmp_path) -> None:
    args = ["-m", "experiment=ca_ablation", "+sweep=ca_ablation", f"paths.log_dir={tmp_path}"]
    phases = ["model.pretrain_coarse_steps=1", "model.reconstruction_steps=1"]
    result = call_cli("deepfill-train", *args, *JOB, *phases, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    sweep = tmp_path / "sweeps" / "ca_ablation"
    notebook = execute(NOTEBOOKS[2], monkeypatch, DEEPFILL_NB_ABLATION=str(sweep))
    text = text_output(notebook)
    for method in ("with CA", "without CA", "biharmonic", "mean_fill"):
        assert f"\n{method:12s} " in text, text[-2000:]
    assert images(notebook) == 2  # the untrained layer on pixels, then the two trained models


def test_sweep_analysis_notebook_on_a_real_sweep(monkeypatch, tmp_path) -> None:
    args = ["-m", "+sweep=custom", "sweep_name=nb", "model.optimizer.lr=0.0001,0.001"]
    args.append(f"paths.log_dir={tmp_path}")
    result = call_cli("deepfill-train", *args, "optimized_metric=val/psnr", *JOB, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    sweep = tmp_path / "sweeps" / "nb"
    notebook = execute(NOTEBOOKS[3], monkeypatch, DEEPFILL_NB_SWEEP=str(sweep), DEEPFILL_NB_METRIC="val/psnr")
    text = text_output(notebook)
    assert "2 finished runs; swept: ['model.optimizer.lr']; seeds: [42]; ranked by val/psnr" in text
    assert "| reference |" in text and "One run per setting: no interval" in text
    assert "on 2 images: PSNR" in text and "bootstrap 95% interval over images" in text
    assert "best setting by mean val/psnr: {'model.optimizer.lr': " in text
    assert "deepfill-eval weights=" in text
    # The interval plot, the metrics per setting, the per-image differences, the curves.
    assert images(notebook) == 4
