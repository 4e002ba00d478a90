"""Commands answer at once: importing a command's module loads none of the heavy packages
(PyTorch, Lightning, torchmetrics, SciPy, Gradio, ...), and a mistake on the command line or a
missing file is reported before any of them is loaded. Measured with ``python -X importtime``
in a fresh process, so that a heavy import cannot creep back unnoticed (the timings themselves are
in ``benchmarks/startup.py`` and BENCHMARKS.md)."""

from __future__ import annotations

import importlib.metadata
import re
import subprocess
import sys
from pathlib import Path

import pytest

# Each costs from 0.3 s (SciPy) to several seconds (PyTorch, Lightning, torch._dynamo) to import.
HEAVY = (
    "torch",
    "torchvision",
    "torchmetrics",
    "pytorch_lightning",
    "lightning_fabric",
    "scipy",
    "skimage",
    "sympy",
    "gradio",
    "onnx",
    "onnxruntime",
    "wandb",
    "matplotlib",
    "lpips",
    "tensorflow",
)
COMMANDS = sorted(
    (e.name, e.value.split(":")[0])
    for e in importlib.metadata.entry_points(group="console_scripts")
    if e.name.startswith("deepfill-")
)


def _imports(args: list[str], cwd: Path | None = None) -> tuple[subprocess.CompletedProcess, list[str]]:
    """Run ``python -X importtime <args>``; returns the process and the modules it imported, each
    with the chain of modules above it (``deepfill.cli.x > deepfill.models > torch``)."""
    result = subprocess.run(
        [sys.executable, "-X", "importtime", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=120,
        check=False,
    )
    # importtime prints a module after everything it imported, indented by its depth.
    entries = []
    for line in result.stderr.splitlines():
        found = re.match(r"import time:\s+\d+ \|\s+\d+ \|( *)(\S+)", line)
        if found:
            entries.append((len(found.group(1)) // 2, found.group(2)))
    chains, above = [], {}
    for depth, name in reversed(entries):
        above[depth] = name
        chains.append(" > ".join([*(above[d] for d in range(depth) if d in above), name]))
    return result, chains


def _heavy(chains: list[str]) -> list[str]:
    return sorted({c for c in chains if c.rsplit(" > ", 1)[-1].split(".")[0] in HEAVY})


def test_importtime_parser_sees_a_heavy_import() -> None:
    # The check below can fail: the same parse finds torch where it is imported.
    _, chains = _imports(["-c", "import deepfill.models"])
    assert any(c.endswith("> torch") or c == "torch" for c in chains)
    assert "deepfill.models" in [c.rsplit(" > ", 1)[-1] for c in chains]


@pytest.mark.parametrize(("command", "module"), COMMANDS, ids=[c for c, _ in COMMANDS])
def test_a_command_module_imports_nothing_heavy(command, module) -> None:
    result, chains = _imports(["-c", f"import {module}"])
    assert result.returncode == 0, result.stderr[-2000:]
    heavy = _heavy(chains)
    assert not heavy, f"import {module} loads: " + "; ".join(heavy[:5])


def test_the_hydra_callback_every_command_instantiates_is_light() -> None:
    # conf/hydra/default.yaml: every Hydra command builds the sweep results callback at start.
    result, chains = _imports(["-c", "import deepfill.sweeps.callbacks, deepfill.evaluation.metrics"])
    assert result.returncode == 0, result.stderr[-2000:]
    assert not _heavy(chains), _heavy(chains)[:5]


@pytest.mark.parametrize(
    "args",
    [
        pytest.param(["-m", "deepfill.cli.inpaint", "weights=/no/w.pt", "input=x.png"], id="missing-weights"),
        pytest.param(["-m", "deepfill.cli.inpaint", "mask_pth=m.png"], id="misspelt-key"),
        pytest.param(["-m", "deepfill.cli.eval", "weights=/nowhere/w.pt"], id="eval-missing-weights"),
        pytest.param(["-m", "deepfill.cli.export", "weights=/nowhere/w.pt", "output=m.onnx"], id="export"),
        pytest.param(["-m", "deepfill.cli.train", "trainer=gpux"], id="train-unknown-option"),
        pytest.param(["-m", "deepfill.cli.train", "trainer.max_step=5"], id="train-misspelt-trainer-key"),
        pytest.param(["-m", "deepfill.cli.train", "data.batch_sze=5"], id="train-misspelt-data-key"),
        pytest.param(["-m", "deepfill.cli.inpaint", "--help"], id="inpaint-help"),
        pytest.param(["-m", "deepfill.cli.train", "--help"], id="train-help"),
        pytest.param(["-m", "deepfill.cli.make_masks", "--help"], id="make-masks-help"),
    ],
)
def test_a_mistake_or_help_is_answered_before_the_heavy_imports(tmp_path, args) -> None:
    expected = 0 if "--help" in args else 2
    if expected:
        args = [*args, f"hydra.run.dir={tmp_path}/run"]
    result, chains = _imports(args, tmp_path)
    assert result.returncode == expected, result.stderr[-2000:]
    assert not _heavy(chains), "; ".join(_heavy(chains)[:5])
    if expected == 2:
        (line,) = [x for x in result.stderr.splitlines() if ": error:" in x]
        assert "weights: no such file" in line or "unknown key" in line or "Could not find" in line


def _config_targets() -> list[str]:
    import yaml

    targets = set()

    def walk(node) -> None:
        if isinstance(node, dict):
            if isinstance(node.get("_target_"), str):
                targets.add(node["_target_"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    for path in (Path(__file__).resolve().parents[1] / "conf").rglob("*.yaml"):
        walk(yaml.safe_load(path.read_text()))
    return sorted(targets)


def test_arguments_read_from_source_are_the_signatures_arguments() -> None:
    """Every _target_ of the configs: what the command-line check reads from the source without
    importing (deepfill.utils.signatures) is what inspect.signature says after importing."""
    import inspect

    from hydra.utils import get_method

    from deepfill.utils.signatures import named_arguments

    named = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    targets = _config_targets()
    assert "pytorch_lightning.Trainer" in targets and "deepfill.models.InpaintGenerator" in targets
    read = 0
    for target in targets:
        from_source = named_arguments(target)
        if from_source is None:
            continue  # left to inspect (an inherited constructor)
        read += 1
        parameters = inspect.signature(get_method(target)).parameters.values()
        expected = [p.name for p in parameters if p.kind in named]
        assert list(from_source) == expected, target
    assert read >= len(targets) * 3 // 4  # most are read without importing them
    assert named_arguments("deepfill.no_such_module.Thing") is None
    assert named_arguments("pytorch_lightning.NoSuchName") is None


@pytest.mark.parametrize(
    ("command", "shown"),
    [
        ("deepfill-inpaint", ["weights: ???", "input: ???", "mask_path: null", "paths: [default]"]),
        ("deepfill-eval", ["weights: ???", "baselines:", "masks_dir:"]),
        ("deepfill-export", ["weights: ???", "precision: fp32", "check_size:"]),
        ("deepfill-demo", ["port: 7860", "max_side:"]),
        ("deepfill-train", ["budget: null", "trainer: [auto], cpu", "experiment: ca_ablation", "+sweep"]),
    ],
)
def test_help_shows_the_commands_keys_groups_and_examples(tmp_path, command, shown) -> None:
    from helpers.commands import call_cli

    result = call_cli(command, "--help", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    out = result.stdout
    assert out.startswith(f"usage: {command} ")
    assert f"``{command}``" in out  # the command's own description, with its examples
    for text in shown:
        assert text in out, (text, out[:3000])
    # An override shows in the configuration it describes.
    key, value = ("budget", "6min") if command == "deepfill-train" else ("precision", "bf16")
    result = call_cli(command, "--help", f"{key}={value}", cwd=tmp_path)
    assert f"{key}: {value}" in result.stdout
    # A misspelt key is named in one line, as without --help.
    result = call_cli(command, "--help", "precison=fp32", cwd=tmp_path)
    assert result.returncode == 2
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith(f"{command}: error: precison: unknown key (did you mean '"), line
    assert line.endswith("precision'?)"), line
    assert not list(tmp_path.iterdir())  # --help writes nothing
