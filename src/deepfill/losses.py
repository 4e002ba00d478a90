"""DeepFill v1 losses, as pure functions.

Conventions: images (N,3,H,W) in [-1,1]; masks (N,1,H,W) (or (1,1,H,W)), 1 = hole.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

__all__ = [
    "LossWeights",
    "ae_loss",
    "crop_around_holes",
    "discount_weights",
    "discounted_l1",
    "gradient_penalty",
    "hole_boxes",
    "wgan_critic_loss",
    "wgan_generator_loss",
]

DiscountForm = Literal["box", "nearest_known"]


@dataclass(frozen=True)
class LossWeights:
    """Loss weights of the official configuration (inpaint.yml)."""

    coarse: float = 1.2  # COARSE_L1_ALPHA: stage-1 terms of the L1 and AE losses
    l1: float = 1.2  # L1_LOSS_ALPHA
    ae: float = 1.2  # AE_LOSS_ALPHA
    gan: float = 0.001  # GAN_LOSS_ALPHA
    global_wgan: float = 1.0  # GLOBAL_WGAN_LOSS_ALPHA
    gp: float = 10.0  # WGAN_GP_LAMBDA

    def __post_init__(self) -> None:
        for name, value in self.__dict__.items():
            if value < 0:
                raise ValueError(f"loss.{name} must be >= 0, got {value!r}")


def hole_boxes(mask: torch.Tensor) -> torch.Tensor:
    """Bounding box ``(top, left, bottom, right)`` (exclusive ends) of each sample's hole: (N,4) long.

    An empty mask gives the empty box (0, 0, 0, 0).
    """
    hole = mask[:, 0] > 0.5
    rows, cols = hole.any(dim=2), hole.any(dim=1)  # (N,H), (N,W)
    h, w = hole.shape[-2:]
    ar_h = torch.arange(h, device=mask.device)
    ar_w = torch.arange(w, device=mask.device)
    top = torch.where(rows, ar_h, h).amin(dim=1)
    bottom = torch.where(rows, ar_h + 1, 0).amax(dim=1)
    left = torch.where(cols, ar_w, w).amin(dim=1)
    right = torch.where(cols, ar_w + 1, 0).amax(dim=1)
    empty = ~rows.any(dim=1)
    boxes = torch.stack([top, left, bottom, right], dim=1)
    return torch.where(empty[:, None], torch.zeros_like(boxes), boxes)


def discount_weights(mask: torch.Tensor, gamma: float = 0.9, form: DiscountForm = "box") -> torch.Tensor:
    """Spatial discounting weights (N,1,H,W); zero where the loss does not apply.

    * ``"box"`` — the official code: over the bounding box of the hole (h x w), the pixel at
      (i, j) of the box weighs ``max(gamma**min(i, h-i), gamma**min(j, w-j))``; zero outside.
    * ``"nearest_known"`` — the paper: a hole pixel weighs ``gamma**l`` with ``l`` its
      (chessboard) distance to the nearest known pixel (1 next to the boundary); zero on known
      pixels. Right for free-form holes.
    """
    if not 0 < gamma <= 1:
        raise ValueError(f"gamma must be in (0, 1], got {gamma!r}")
    n, _, h, w = mask.shape
    if form == "box":
        boxes = hole_boxes(mask)
        top, left, bottom, right = (boxes[:, k].view(n, 1) for k in range(4))
        i = torch.arange(h, device=mask.device).view(1, h) - top  # (N,H), row inside the box
        j = torch.arange(w, device=mask.device).view(1, w) - left
        box_h, box_w = bottom - top, right - left
        di = torch.minimum(i, box_h - i).clamp_min(0).to(mask.dtype)
        dj = torch.minimum(j, box_w - j).clamp_min(0).to(mask.dtype)
        weight = torch.maximum(gamma ** di[:, :, None], gamma ** dj[:, None, :])
        inside = ((i >= 0) & (i < box_h))[:, :, None] & ((j >= 0) & (j < box_w))[:, None, :]
        return (weight * inside).unsqueeze(1)
    if form == "nearest_known":
        hole = (mask > 0.5).to(mask.dtype)
        distance = torch.zeros_like(hole)
        remaining = hole
        # Each erosion of the hole peels one ring: a pixel's ring number is its distance.
        while remaining.any():
            distance = distance + remaining
            remaining = -F.max_pool2d(-remaining, 3, stride=1, padding=1)
            # Outside the image counts as hole, so borders do not act as known pixels.
            remaining = remaining * hole
            if torch.equal(remaining, hole) and distance.max() > max(h, w):
                break  # an all-hole mask: no known pixel to measure from
        return torch.where(hole > 0, gamma ** (distance - 1).clamp_min(0) * gamma, torch.zeros_like(hole))
    raise ValueError(f"discount form must be 'box' or 'nearest_known', got {form!r}")


def discounted_l1(target: torch.Tensor, prediction: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Mean of ``|target - prediction| * weights`` over the region the weights cover.

    With the official 128x128 box this equals the official ``mean(|gt - x| * D)`` over the box
    crop; in general each sample is normalised by its own support (box or hole) and the batch
    is averaged.
    """
    support = (weights > 0).to(weights.dtype).sum(dim=(1, 2, 3)).clamp_min(1) * target.shape[1]
    per_sample = ((target - prediction).abs() * weights).sum(dim=(1, 2, 3)) / support
    return per_sample.mean()


def ae_loss(
    target: torch.Tensor,
    x_stage1: torch.Tensor,
    x_stage2: torch.Tensor | None,
    mask: torch.Tensor,
    coarse_weight: float = 1.2,
) -> torch.Tensor:
    """Official reconstruction loss on the known pixels, normalised by their fraction:
    ``(coarse_weight * mean(|gt-x1|*(1-m)) + mean(|gt-x2|*(1-m))) / mean(1-m)``."""
    known = 1.0 - mask
    loss = coarse_weight * ((target - x_stage1).abs() * known).mean()
    if x_stage2 is not None:
        loss = loss + ((target - x_stage2).abs() * known).mean()
    return loss / known.mean().clamp_min(1e-8)


def wgan_critic_loss(real_scores: torch.Tensor, fake_scores: torch.Tensor) -> torch.Tensor:
    """``mean(D(fake)) - mean(D(real))``."""
    return fake_scores.mean() - real_scores.mean()


def wgan_generator_loss(fake_scores: torch.Tensor) -> torch.Tensor:
    """``-mean(D(fake))``."""
    return -fake_scores.mean()


def gradient_penalty(
    critic: torch.nn.Module,
    real: torch.Tensor,
    fake: torch.Tensor,
    mask: torch.Tensor | None = None,
    alpha: torch.Tensor | None = None,
) -> torch.Tensor:
    """Masked WGAN-GP: ``mean((sqrt(sum(grad^2 * mask)) - 1)^2)`` at random interpolates.

    ``alpha`` (N,) in [0,1) is drawn uniformly per sample when not given. The gradient is taken
    with ``torch.autograd.grad`` (``create_graph=True``), which works under DDP.
    """
    n = real.shape[0]
    if alpha is None:
        alpha = torch.rand(n, device=real.device, dtype=real.dtype)
    alpha = alpha.view(n, 1, 1, 1)
    interpolates = (real + alpha * (fake.detach() - real)).requires_grad_(True)
    scores = critic(interpolates)
    (grad,) = torch.autograd.grad(scores.sum(), interpolates, create_graph=True)
    squared = grad.square()
    if mask is not None:
        squared = squared * mask
    slopes = squared.sum(dim=(1, 2, 3)).add(1e-12).sqrt()
    return (slopes - 1.0).square().mean()


def crop_around_holes(mask: torch.Tensor, size: int, *tensors: torch.Tensor) -> list[torch.Tensor]:
    """The ``size`` x ``size`` crop around each sample's hole (centre of its bounding box,
    clamped to the image), applied to ``mask`` and every tensor given: list of (N,C,size,size)."""
    n, _, h, w = mask.shape
    if size > min(h, w):
        raise ValueError(f"local crop size {size} exceeds the image size {h}x{w}")
    boxes = hole_boxes(mask)
    cy = (boxes[:, 0] + boxes[:, 2]) // 2
    cx = (boxes[:, 1] + boxes[:, 3]) // 2
    empty = boxes[:, 2] == 0
    cy = torch.where(empty, torch.full_like(cy, h // 2), cy)
    cx = torch.where(empty, torch.full_like(cx, w // 2), cx)
    top = (cy - size // 2).clamp(0, h - size)
    left = (cx - size // 2).clamp(0, w - size)
    rows = (top[:, None] + torch.arange(size, device=mask.device)).view(n, 1, size, 1)
    cols = (left[:, None] + torch.arange(size, device=mask.device)).view(n, 1, 1, size)
    out = []
    for t in (mask, *tensors):
        channels = t.shape[1]
        index_rows = rows.expand(n, channels, size, w)
        picked = t.expand(n, channels, h, w).gather(2, index_rows)
        out.append(picked.gather(3, cols.expand(n, channels, size, size)))
    return out
