"""Fixtures every test may use; the helpers they share are in ``tests/helpers``."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from helpers.paths import GOLDENS, GOLDENS_V2

# Start the CPU's worker threads now, with this process's default floating-point settings.
# Commands run in this process (call_cli) flush subnormal floats to zero as they start, which
# sets the calling thread's flags and those of threads created after it; worker threads started
# then would keep flushing for the rest of the test session, and the tests that follow would
# compute on another arithmetic than when run alone.
torch.ones(1 << 22).add_(1.0)


@pytest.fixture(autouse=True)
def _deterministic() -> None:
    torch.manual_seed(0)


@pytest.fixture(autouse=True)
def _own_wandb_service() -> None:
    """Commands started by a test get a W&B service of their own, as from a shell. A test that
    used W&B in this process leaves its service's address in WANDB_SERVICE, which subprocesses
    inherit: two commands in a row then share that service, and a resumed run can find its own
    run id still held by the previous command ("run ID ... is in use")."""
    os.environ.pop("WANDB_SERVICE", None)


@pytest.fixture(scope="session")
def goldens() -> Path:
    if not (GOLDENS / "gen_256.npz").exists():
        pytest.fail(
            f"official goldens not found at {GOLDENS}; set DEEPFILL_GOLDENS to the official_v1 folder"
        )
    return GOLDENS


@pytest.fixture(scope="session")
def goldens_v2() -> Path:
    if not (GOLDENS_V2 / "gen_v2_256.npz").exists():
        pytest.fail(
            f"official v2 goldens not found at {GOLDENS_V2}; "
            "set DEEPFILL_GOLDENS_V2 to the official_v2 folder"
        )
    return GOLDENS_V2
