"""Where the tests find the repository and the official goldens."""

from __future__ import annotations

import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _goldens_dir() -> Path:
    env = os.environ.get("DEEPFILL_GOLDENS")
    if env:
        return Path(env)
    # The official goldens live in the shared folder beside the checkout.
    return REPO.parent / "shared" / "goldens" / "official_v1"


def _goldens_v2_dir() -> Path:
    env = os.environ.get("DEEPFILL_GOLDENS_V2")
    return Path(env) if env else REPO.parent / "shared" / "goldens" / "official_v2"


GOLDENS = _goldens_dir()
GOLDENS_V2 = _goldens_v2_dir()
