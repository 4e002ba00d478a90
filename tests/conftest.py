"""Shared fixtures."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

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
