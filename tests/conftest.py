"""Shared fixtures."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from deepfill.official.tf_checkpoint import _tensorflow_installed

REPO = Path(__file__).resolve().parents[1]


def _goldens_dir() -> Path:
    env = os.environ.get("DEEPFILL_GOLDENS")
    if env:
        return Path(env)
    # The official goldens live in the shared folder beside the checkout.
    return REPO.parent / "shared" / "goldens" / "official_v1"


GOLDENS = _goldens_dir()


@pytest.fixture(autouse=True)
def _deterministic() -> None:
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def goldens() -> Path:
    if not (GOLDENS / "gen_256.npz").exists():
        pytest.fail(
            f"official goldens not found at {GOLDENS}; set DEEPFILL_GOLDENS to the official_v1 folder"
        )
    return GOLDENS


def skip_without_tensorflow() -> None:
    """Skip unless the ``tf`` extra is installed, without importing TensorFlow into the test
    process: TensorFlow and Triton (which torch imports on demand) each bundle LLVM, and the
    second one loaded into a process crashes it. TensorFlow only ever runs in subprocesses."""
    if not _tensorflow_installed():
        pytest.skip("the tf extra is installed by `make install`")


def run_cli(name: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    """Run one of the installed console scripts (deepfill-train, -eval, ...) and capture its output."""
    script = Path(sys.executable).parent / name
    return subprocess.run(
        [str(script), *args], capture_output=True, text=True, cwd=cwd, check=False, timeout=300
    )
