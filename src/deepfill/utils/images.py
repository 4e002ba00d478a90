"""Conversions between image arrays and the model's tensors: one place for every package.

The model works on (N,3,H,W) float32 in [-1,1]; files are (H,W,3) uint8; metrics read [0,1].
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["to_tensor", "to_uint8", "to_unit"]


def to_tensor(array: np.ndarray) -> torch.Tensor:
    """(H,W,3) uint8 -> (3,H,W) float32 in [-1,1]. The float copy is made by NumPy, so read-only
    inputs (decoded images, flipped views) need no extra copy and raise no warning."""
    return torch.from_numpy(np.array(array, dtype=np.float32)).permute(2, 0, 1).div_(127.5).sub_(1.0)


def to_uint8(image: torch.Tensor) -> np.ndarray:
    """(3,H,W) in [-1,1] -> (H,W,3) uint8, rounded (the inverse of :func:`to_tensor`)."""
    return ((image.detach().float().clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).cpu().numpy()


def to_unit(image: torch.Tensor) -> torch.Tensor:
    """Any shape in [-1,1] -> [0,1], clamped (what the metrics compare)."""
    return ((image + 1) / 2).clamp(0, 1)
