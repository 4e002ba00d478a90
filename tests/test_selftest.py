"""deepfill-selftest: its CPU part end to end, that each check can fail, the DDP check under a
2-process gloo emulation, the time budget and bad arguments."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from deepfill import selftest
from deepfill.selftest import Check, SelfTestOptions, run_selftest, verdict, write_report
from helpers.commands import call_cli

CPU = torch.device("cpu")


def test_the_cpu_part_passes_and_says_that_no_gpu_was_seen(goldens, tmp_path) -> None:
    out = tmp_path / "report"
    args = ["--goldens", str(goldens), "--out", str(out), "--sizes", "64", "--train-size", "64"]
    args += ["--train-batch", "1", "--precisions", "float32", "bf16"]
    result = call_cli("deepfill-selftest", *args, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:] + result.stdout[-3000:]
    last = result.stdout.strip().splitlines()[-1]
    assert last.startswith("deepfill-selftest: PASS (no GPU visible: the CPU part only)"), last
    report = json.loads((out / "report.json").read_text())
    checks = {c["name"]: c for c in report["checks"]}
    for precision in ("float32", "bf16"):
        for part in ("parity", "training step", "training iteration", "inference"):
            name = f"{part} cpu {precision}" + (" 64²" if part == "inference" else "")
            assert checks[name]["status"] == "pass", checks[name]
    assert checks["parity cpu float32"]["figures"]["max_abs"] < selftest.FLOAT32_GENERATOR_TOLERANCE
    relative = checks["training step cpu float32"]["figures"]["relative_error"]
    assert set(relative) == set(selftest.LOSS_TERMS)
    assert max(relative.values()) < selftest.FLOAT32_LOSS_TOLERANCE
    assert checks["training iteration cpu float32"]["figures"]["images_per_s"] > 0
    assert checks["ddp"]["status"] == "skip"
    assert checks["environment"]["figures"]["torch"] == torch.__version__
    assert report["verdict"] in (out / "report.md").read_text()


def _perturbed_goldens(goldens, tmp_path, name: str, key: str, delta: float):
    folder = tmp_path / "goldens"
    folder.mkdir()
    for path in goldens.iterdir():
        if path.is_file():
            shutil.copy(path, folder / path.name)
    data = dict(np.load(folder / name))
    data[key] = data[key] + np.float32(delta)
    np.savez(folder / name, **data)
    return folder


def test_parity_fails_on_an_output_the_official_graph_did_not_give(goldens, tmp_path) -> None:
    assert selftest.generator_parity(goldens, CPU, "float32").status == "pass"
    wrong = _perturbed_goldens(goldens, tmp_path, "gen_256.npz", "x_stage2", 0.01)
    check = selftest.generator_parity(wrong, CPU, "float32")
    assert check.status == "fail" and check.figures["max_abs"] > 0.009


def test_training_step_fails_on_a_loss_the_official_graph_did_not_give(goldens, tmp_path) -> None:
    wrong = _perturbed_goldens(goldens, tmp_path, "train_step_256.npz", "loss:gp_loss", 0.01)
    check = selftest.training_step_parity(wrong, CPU, "float32")
    assert check.status == "fail" and "gp_loss" in check.detail


def test_ddp_check_under_two_gloo_processes(tmp_path) -> None:
    check = selftest.ddp(2, tmp_path / "ddp", accelerator="cpu", steps=2)
    assert check.status == "pass", check.detail
    assert check.figures == {"ranks": 2, "steps": 2, "differing_tensors": 0}


def test_parts_past_the_budget_are_reported_as_skipped(tmp_path) -> None:
    options = SelfTestOptions(goldens=None, sizes=(64,), train_size=64, train_batch=1, budget_s=1e-9)
    lines: list[str] = []
    checks = run_selftest(options, tmp_path, say=lines.append)
    skipped = [c.name for c in checks if c.status == "skip"]
    assert "inference cpu float32 64²" in skipped and "training iteration cpu float32" in skipped
    assert "parity" in skipped  # no goldens: said, not dropped
    assert len(lines) == len(checks)
    assert verdict(checks).startswith("PASS (no GPU visible: the CPU part only): 0 passed, 0 failed")


def test_a_failed_check_makes_the_verdict_fail_and_names_it(tmp_path) -> None:
    checks = [Check("environment", "info", "x"), Check("parity cpu float32", "fail", "max abs 1")]
    line = verdict(checks)
    assert line.startswith("FAIL") and line.endswith("failed: parity cpu float32")
    json_path, md_path = write_report(checks, tmp_path, 1.0)
    assert json.loads(json_path.read_text())["verdict"] == line
    assert "| parity cpu float32 | fail | max abs 1 |" in md_path.read_text()


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--goldens", "/nowhere"], "--goldens /nowhere: expected the official_v1 goldens folder"),
        (["--sizes", "100"], "size 100: must be a multiple of 8"),
        (["--train-batch", "0"], "--train-batch: must be >= 1, got 0"),
    ],
)
def test_bad_arguments_end_in_one_line(tmp_path, args, expected) -> None:
    result = call_cli("deepfill-selftest", *args, "--out", str(tmp_path / "r"), cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert expected in result.stderr.strip().splitlines()[-1]
    assert not (tmp_path / "r").exists()
