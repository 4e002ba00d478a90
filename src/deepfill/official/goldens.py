"""The official graphs' reference outputs as inputs to this project's networks: v1's
(``official_v1``: the generator case ``gen_256.npz``, the training step ``train_step_256.npz``)
and v2's (``official_v2``: ``gen_v2_256.npz``, ``train_step_v2_256.npz``).
Used by the parity tests and by ``deepfill-selftest`` on any device; the training step's losses
are computed beside the self-test (:func:`deepfill.selftest.training_step_losses`).

The goldens are NHWC and BGR (the official channel order); the cases below are NCHW, and the
training step keeps BGR weights and inputs, as the official graph was fed.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from deepfill.models import GlobalCritic, InpaintGenerator, LocalCritic, SNPatchGANCritic
from deepfill.official.convert import (
    load_official_critics,
    load_official_sn_patchgan,
    load_official_v1,
    load_official_v2,
)

__all__ = [
    "GENERATOR_GOLDEN",
    "GENERATOR_GOLDEN_V2",
    "TRAINING_STEP_GOLDEN",
    "TRAINING_STEP_GOLDEN_V2",
    "TrainingStepCase",
    "TrainingStepCaseV2",
    "generator_case",
    "training_step_case",
    "training_step_case_v2",
]

GENERATOR_GOLDEN = "gen_256.npz"
TRAINING_STEP_GOLDEN = "train_step_256.npz"
GENERATOR_GOLDEN_V2 = "gen_v2_256.npz"
TRAINING_STEP_GOLDEN_V2 = "train_step_v2_256.npz"


def _nchw(array: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(array)).permute(0, 3, 1, 2).float()


def _read(path: Path) -> dict[str, np.ndarray]:
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: official golden not found (expected the official_v1 goldens folder)"
        )
    data = np.load(path)
    return {k: data[k] for k in data.files}


def generator_case(
    folder: str | os.PathLike, family: str = "v1"
) -> dict[str, torch.Tensor | InpaintGenerator]:
    """The generator golden of ``family`` (``"v1"``: ``gen_256.npz``, ``"v2"``:
    ``gen_v2_256.npz``) in RGB: ``generator`` (official weights, RGB input), ``image`` (N,3,H,W)
    in [-1,1], ``mask`` (1,1,H,W), 1 = hole, and the official ``x_stage1``, ``x_stage2``
    (N,3,H,W), RGB, and ``flow`` (N,3,H/4,W/4), the official attention picture (which
    :func:`deepfill.flow_to_image` draws at ``scale=2``)."""
    name, load = (
        (GENERATOR_GOLDEN, load_official_v1) if family == "v1" else (GENERATOR_GOLDEN_V2, load_official_v2)
    )
    path = Path(folder) / name
    golden = _read(path)
    case = {key: _nchw(golden[key]).flip(1) for key in ("image", "x_stage1", "x_stage2")}  # BGR -> RGB
    # The flow picture is the colour wheel's drawing, the same in both conventions.
    case["flow"] = _nchw(golden["flow"])
    case["mask"] = _nchw(golden["mask"])
    case["generator"] = load(path)
    return case


@dataclass
class TrainingStepCase:
    """One official training step: its batch, mask, local patch, interpolation factors, the
    networks with its weights (BGR, as the official graph was fed) and the golden arrays."""

    image: torch.Tensor  # (N,3,H,W) in [-1,1], BGR
    mask: torch.Tensor  # (1,1,H,W), 1 = hole, one for the batch (official bbox2mask)
    bbox: tuple[int, int, int, int]  # top, left, height, width of the local patch
    alpha_global: torch.Tensor  # (N,)
    alpha_local: torch.Tensor  # (N,)
    generator: InpaintGenerator
    global_critic: GlobalCritic
    local_critic: LocalCritic
    golden: dict[str, np.ndarray]


def training_step_case(folder: str | os.PathLike) -> TrainingStepCase:
    """Everything of ``train_step_256.npz`` (batch, bbox, shrink, interpolation factors, weights)
    comes from the file, so any file of that format gives a case."""
    path = Path(folder) / TRAINING_STEP_GOLDEN
    golden = _read(path)
    image = torch.from_numpy(golden["batch_uint8"]).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    _, _, height, width = image.shape
    top, left, box_h, box_w = (int(v) for v in golden["bbox"])
    shrink_h, shrink_w = (int(v) for v in golden["shrink"])
    if box_h != box_w:
        raise ValueError(f"{path}: bbox {box_h}x{box_w}: the local critic takes square patches")
    mask = torch.zeros(1, 1, height, width)
    mask[..., top + shrink_h : top + box_h - shrink_h, left + shrink_w : left + box_w - shrink_w] = 1
    generator = load_official_v1(path, bgr_to_rgb=False).train()
    global_critic, local_critic = load_official_critics(
        path, image_size=height, local_size=box_h, bgr_to_rgb=False
    )
    return TrainingStepCase(
        image=image,
        mask=mask,
        bbox=(top, left, box_h, box_w),
        alpha_global=torch.from_numpy(golden["gp_alpha_global"]).flatten(),
        alpha_local=torch.from_numpy(golden["gp_alpha_local"]).flatten(),
        generator=generator,
        global_critic=global_critic,
        local_critic=local_critic,
        golden=golden,
    )


@dataclass
class TrainingStepCaseV2:
    """One official v2 training step: its batch and mask (box OR strokes), the networks with
    its weights (BGR, as the official graph was fed) and the golden arrays."""

    image: torch.Tensor  # (N,3,H,W) in [-1,1], BGR
    mask: torch.Tensor  # (1,1,H,W), 1 = hole, one for the batch
    generator: InpaintGenerator
    critic: SNPatchGANCritic
    golden: dict[str, np.ndarray]


def training_step_case_v2(folder: str | os.PathLike) -> TrainingStepCaseV2:
    """Everything of ``train_step_v2_256.npz`` (batch, mask, weights and the spectral norms'
    ``u``) comes from the file, so any file of that format gives a case."""
    path = Path(folder) / TRAINING_STEP_GOLDEN_V2
    golden = _read(path)
    image = torch.from_numpy(golden["batch_uint8"]).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    return TrainingStepCaseV2(
        image=image,
        mask=_nchw(golden["mask"]),
        generator=load_official_v2(path, bgr_to_rgb=False).train(),
        critic=load_official_sn_patchgan(path, input_size=image.shape[-1], bgr_to_rgb=False).train(),
        golden=golden,
    )
