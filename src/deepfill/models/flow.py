"""Pictures of contextual attention's offsets: where each hole pixel copied from.

A visualisation, kept apart from the layer: the Middlebury colour coding of the official code
(hue = direction, saturation = length), for logs, notebooks, the demo and ``deepfill-inpaint``.
"""

from __future__ import annotations

import math

import torch

from .layers import resize_nearest

__all__ = ["flow_to_image"]


def _color_wheel(device: torch.device) -> torch.Tensor:
    """Middlebury colour wheel (RY, YG, GC, CB, BM, MR = 15, 6, 4, 11, 13, 6): (55, 3) in [0, 255]."""
    segments = ((15, (0, 1), True), (6, (1, 0), False), (4, (1, 2), True))
    segments += ((11, (2, 1), False), (13, (2, 0), True), (6, (0, 2), False))
    rows = []
    for count, (full, ramp), rising in segments:
        col = torch.zeros(count, 3, dtype=torch.float64)
        col[:, full] = 255
        steps = torch.floor(255 * torch.arange(count, dtype=torch.float64) / count)
        col[:, ramp] = steps if rising else 255 - steps
        rows.append(col)
    return torch.cat(rows).to(device)


def flow_to_image(offsets: torch.Tensor, scale: int = 1, bilinear: bool = False) -> torch.Tensor:
    """Colour-code attention offsets like the official visualisation.

    Args:
        offsets: (N,2,h,w) integer (dy, dx), as returned by :class:`ContextualAttention`.
        scale: upscale the picture by this factor (align-corners nearest, as the official v1
            code; ``bilinear=True``: align-corners bilinear, as the official v2 code).
    Returns:
        (N,3,h*scale,w*scale) float32 in [-1,1], RGB. As in the official code, sample i is
        normalised by the largest offset length among samples 0..i.
    """
    if offsets.dim() != 4 or offsets.shape[1] != 2:
        raise ValueError(f"flow_to_image: offsets must be (N,2,h,w), got {tuple(offsets.shape)}")
    flow = offsets.to(torch.float64)
    u, v = flow[:, 0], flow[:, 1]
    unknown = (u.abs() > 1e7) | (v.abs() > 1e7)
    u = u.masked_fill(unknown, 0)
    v = v.masked_fill(unknown, 0)
    radius = torch.sqrt(u**2 + v**2)
    max_radius = torch.cummax(radius.flatten(1).amax(dim=1), dim=0).values.view(-1, 1, 1)
    eps = torch.finfo(torch.float64).eps
    u, v = u / (max_radius + eps), v / (max_radius + eps)
    wheel = _color_wheel(offsets.device)
    ncols = wheel.shape[0]
    rad = torch.sqrt(u**2 + v**2)
    angle = torch.atan2(-v, -u) / math.pi
    fk = (angle + 1) / 2 * (ncols - 1) + 1
    k0 = torch.floor(fk).long()
    k1 = k0 + 1
    k1 = torch.where(k1 == ncols + 1, torch.ones_like(k1), k1)
    frac = (fk - k0).unsqueeze(1)
    col0 = wheel[k0 - 1].permute(0, 3, 1, 2) / 255
    col1 = wheel[k1 - 1].permute(0, 3, 1, 2) / 255
    col = (1 - frac) * col0 + frac * col1
    inside = (rad <= 1).unsqueeze(1)
    col = torch.where(inside, 1 - rad.unsqueeze(1) * (1 - col), col * 0.75)
    image = torch.floor(255 * col).clamp(0, 255)
    image = (image / 127.5 - 1).to(torch.float32)
    if scale != 1:
        size = (image.shape[-2] * scale, image.shape[-1] * scale)
        if bilinear:
            image = torch.nn.functional.interpolate(image, size=size, mode="bilinear", align_corners=True)
        else:
            image = resize_nearest(image, size)
    return image
