"""Contextual attention for graph exporters (ONNX): the function of the chunked layer
(:class:`~deepfill.models.contextual_attention.ContextualAttention`) at any H and W, in one pass.

The chunked layer's loop depends on the input size, and the official paste convolves with
kernels cut from the input, which exporters refuse. Here every step is a tensor operation whose
shapes follow the input: patch scores as k*k shifted copies of the pixel Gram matrix; the fuse
as sums of diagonal shifts of the whole score matrix (the official identity-kernel convolution)
in raster, then in column-major order; the paste as the product with the background phases of
:func:`~deepfill.models.attention_patches.prepare`, its four shifts taken on the output grid, so
that nothing larger than the score matrix is made. No chunks: memory is a few
(H*W / rate^2)^2 score matrices.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .attention_patches import NEGLIGIBLE_WEIGHT, prepare
from .layers import tf_same_padding

__all__ = ["attend_dense"]


def _diagonal_sum(scores: torch.Tensor, length: int, k: int) -> torch.Tensor:
    """``out[i, j] = sum_d scores[i + d, j + d]`` over the fuse kernel's offsets d, zeros
    outside: the official convolution of the score image with a k x k identity kernel."""
    before = (k - 1) // 2
    padded = F.pad(scores, (before, k - 1 - before, before, k - 1 - before))
    out = padded[:, :length, :length]
    for a in range(1, k):
        out = out + padded[:, a : a + length, a : a + length]
    return out


def attend_dense(
    f: torch.Tensor,
    b: torch.Tensor,
    mask: torch.Tensor | None,
    *,
    rate: int,
    ksize: int,
    fuse_k: int,
    softmax_scale: float,
    fuse: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(y, offsets)`` as the chunked layer returns them. f, b: (N,C,H,W) float32, H and W
    multiples of ``rate``; mask: (1 or N,1,H,W), 1 = hole, or None. y: (N,C,H,W); offsets:
    (N,2,H/rate,W/rate) int64."""
    n, _, height, width = f.shape
    r, k = rate, ksize
    # Raster order throughout: the column-major fuse pass permutes the scores and back.
    p = prepare(f, b, mask, rate, ksize, fused=False)
    h, w = p.h, p.w
    lb = h * w
    before = (k - 1) // 2
    # Patch scores (see ContextualAttention._scores), the shifts separable: columns of both
    # grids, then rows.
    gram = torch.bmm(p.fg, p.bg)
    grid = F.pad(gram.view(n, h, w, h, w), (before, k - 1 - before, 0, 0, before, k - 1 - before))
    by_columns = grid[:, :, 0:w, :, 0:w]
    for u in range(1, k):
        by_columns = by_columns + grid[:, :, u : u + w, :, u : u + w]
    grid = F.pad(by_columns, (0, 0, before, k - 1 - before, 0, 0, before, k - 1 - before))
    scores = grid[:, 0:h, :, 0:h]
    for u in range(1, k):
        scores = scores + grid[:, u : u + h, :, u : u + h]
    scores = scores.reshape(n, lb, lb) * p.inv_norm  # (N, Lf, Lb)
    if fuse:
        scores = _diagonal_sum(scores, lb, fuse_k)
        # Column-major order of both axes (the official second pass), then back to raster.
        columns = scores.view(n, h, w, h, w).permute(0, 2, 1, 4, 3).reshape(n, lb, lb)
        columns = _diagonal_sum(columns, lb, fuse_k)
        scores = columns.view(n, w, h, w, h).permute(0, 2, 1, 4, 3).reshape(n, lb, lb)
    attn = torch.softmax(scores * (p.valid * softmax_scale), dim=-1) * p.valid
    index = torch.argmax(attn, dim=-1)  # first index of the largest weight, as max()
    pos = torch.arange(lb, device=f.device)
    # (x // w, x - (x // w) * w): the exporter has no remainder by a symbolic size.
    src_row, row = index // w, pos // w
    offsets = torch.stack([src_row - row, (index - src_row * w) - (pos - row * w)], dim=1)
    attn = torch.where(attn < NEGLIGIBLE_WEIGHT, torch.zeros_like(attn), attn)
    # Paste: A'[o, q'] = sum_s attn[o - s, q' - s] over s in {0,1}^2 on (h+1, w+1) grids,
    # one axis pair at a time, then one product with the background phases.
    grid = attn.view(n, h, w, h, w)
    rows = F.pad(grid, (0, 0, 0, 1, 0, 0, 0, 1)) + F.pad(grid, (0, 0, 1, 0, 0, 0, 1, 0))
    both = F.pad(rows, (0, 1, 0, 0, 0, 1, 0, 0)) + F.pad(rows, (1, 0, 0, 0, 1, 0, 0, 0))
    shifted = both.view(n, (h + 1) * (w + 1), (h + 1) * (w + 1))
    canvas = torch.bmm(shifted, p.paste).transpose(1, 2).unflatten(2, (h + 1, w + 1))
    canvas = F.pixel_shuffle(canvas, r)  # (N, C, (h+1)*r, (w+1)*r)
    top, _ = tf_same_padding(height, 2 * r, r)
    left, _ = tf_same_padding(width, 2 * r, r)
    y = canvas[:, :, top : top + height, left : left + width] / 4.0
    return y, offsets.view(n, 2, h, w)
