"""Straightforward per-sample contextual attention, kept as a reference.

It follows the official TensorFlow function operation by operation (a Python loop over the
batch, the score matrix as a conv2d output, the fuse as a conv2d with an identity kernel on the
``[fh*fw, bh*bw]`` score image, pasting by ``conv_transpose2d``). It is what a direct port looks
like: the tests use it as an independent second implementation and the benchmarks as the
baseline. The library's layer is :class:`deepfill.ContextualAttention`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from deepfill.models.layers import pad_same, resize_nearest, tf_same_padding


def _same_conv(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    return F.conv2d(pad_same(x, weight.shape[-1]), weight)


def contextual_attention_loop(
    f: torch.Tensor,
    b: torch.Tensor,
    mask: torch.Tensor | None = None,
    ksize: int = 3,
    rate: int = 2,
    fuse_k: int = 3,
    softmax_scale: float = 10.0,
    fuse: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample reference. Same arguments and outputs as :class:`ContextualAttention`."""
    n, c, height, width = f.shape
    r = rate
    h, w = height // r, width // r
    f_small = resize_nearest(f, (h, w))
    b_small = resize_nearest(b, (h, w))
    if mask is None:
        mask = torch.zeros(1, 1, height, width, dtype=f.dtype, device=f.device)
    mask_small = resize_nearest(mask, (h, w))
    eye = torch.eye(fuse_k, dtype=f.dtype, device=f.device).view(1, 1, fuse_k, fuse_k)
    top, _ = tf_same_padding(height, 2 * r, r)
    left, _ = tf_same_padding(width, 2 * r, r)
    outputs, offsets = [], []
    for i in range(n):
        # Matching kernels: every ksize x ksize patch of the downscaled background.
        patches = F.unfold(pad_same(b_small[i : i + 1], ksize), ksize)  # (1, C*k*k, L)
        kernels = patches[0].t().reshape(h * w, c, ksize, ksize)
        norms = kernels.flatten(1).norm(dim=1).clamp_min(1e-4)
        kernels = kernels / norms.view(-1, 1, 1, 1)
        scores = _same_conv(f_small[i : i + 1], kernels)  # (1, L, h, w)
        if fuse:
            image = scores.view(h * w, h * w).t().reshape(1, 1, h * w, h * w)  # [fg, bg]
            image = _same_conv(image, eye)
            image = image.view(h, w, h, w).permute(1, 0, 3, 2).reshape(1, 1, h * w, h * w)
            image = _same_conv(image, eye)
            image = image.view(w, h, w, h).permute(1, 0, 3, 2).reshape(h * w, h * w)
            scores = image.t().reshape(1, h * w, h, w)
        m = mask_small[i if mask_small.shape[0] > 1 else 0 : (i + 1 if mask_small.shape[0] > 1 else 1)]
        hole = F.unfold(pad_same(m, ksize), ksize).amax(dim=1)  # (1, L)
        valid = (hole == 0).to(f.dtype).view(1, h * w, 1, 1)
        attn = torch.softmax(scores * valid * softmax_scale, dim=1) * valid
        index = attn.argmax(dim=1)[0]  # (h, w)
        rows = torch.arange(h, device=f.device).view(h, 1)
        cols = torch.arange(w, device=f.device).view(1, w)
        offsets.append(torch.stack([index // w - rows, index % w - cols]))
        raw = F.unfold(pad_same(b[i : i + 1], 2 * r, r), 2 * r, stride=r)  # (1, C*4r^2, L)
        raw = raw[0].t().reshape(h * w, c, 2 * r, 2 * r)
        y = F.conv_transpose2d(attn, raw, stride=r)
        outputs.append(y[:, :, top : top + height, left : left + width] / 4.0)
    return torch.cat(outputs), torch.stack(offsets)
