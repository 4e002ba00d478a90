"""What both forms of contextual attention share: the checks of their inputs, TF 'SAME' patch
extraction, and the preparation of a call (foreground and background on the 1/rate grid, the
background patches' norms and validity, the background phases the paste multiplies).

The chunked form (:class:`~deepfill.models.contextual_attention.ContextualAttention`) and the
export form (:mod:`deepfill.models.attention_export`) both start from :func:`prepare`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .layers import pad_same, resize_nearest, tf_same_padding

__all__ = ["NEGLIGIBLE_WEIGHT", "Prepared", "prepare", "unfold_same", "validate_attention_inputs"]

# Attention weights below it are zeroed before the paste (see ContextualAttention._attend).
NEGLIGIBLE_WEIGHT = 2.0**-64


def validate_attention_inputs(
    f: torch.Tensor, b: torch.Tensor, mask: torch.Tensor | None, rate: int, check_mask: bool = True
) -> None:
    """Raise one clear ``ValueError`` line for inputs the layer cannot take."""
    if f.dim() != 4 or b.dim() != 4:
        raise ValueError(
            f"contextual attention: f and b must be (N,C,H,W), got f {tuple(f.shape)} and b {tuple(b.shape)}"
        )
    if f.shape != b.shape:
        raise ValueError(
            f"contextual attention: f and b must have the same shape, got f {tuple(f.shape)} "
            f"and b {tuple(b.shape)}"
        )
    n, _, h, w = f.shape
    if h % rate or w % rate:
        raise ValueError(f"contextual attention: H and W must be divisible by rate={rate}, got {h}x{w}")
    if mask is None:
        return
    if mask.dim() != 4 or mask.shape[1] != 1:
        raise ValueError(f"contextual attention: mask must be (1 or N,1,H,W), got {tuple(mask.shape)}")
    if mask.shape[0] not in (1, n):
        raise ValueError(f"contextual attention: mask batch must be 1 or N={n}, got mask {tuple(mask.shape)}")
    if mask.shape[-2:] != f.shape[-2:]:
        raise ValueError(
            f"contextual attention: mask size {tuple(mask.shape[-2:])} does not match features "
            f"{tuple(f.shape[-2:])}"
        )
    if check_mask and not torch.all((mask == 0) | (mask == 1)):
        raise ValueError("contextual attention: mask must be binary (0 = known, 1 = hole)")


def unfold_same(x: torch.Tensor, kernel: int, stride: int = 1) -> torch.Tensor:
    """TF ``extract_image_patches`` with 'SAME' padding: ``(N,C,H,W) -> (N, C*k*k, L)``."""
    return F.unfold(pad_same(x, kernel, stride), kernel_size=kernel, stride=stride)


@dataclass
class Prepared:
    """What both forms of the layer compute from their inputs before scoring: per-call tensors
    shared by all chunks of the chunked form."""

    fg: torch.Tensor  # (N, Lf, C) foreground pixels, raster order
    bg: torch.Tensor  # (N, C, Lb) background pixels, raster order
    inv_norm: torch.Tensor  # (N, 1, Lb) 1 / max(||background patch||, 1e-4)
    paste: torch.Tensor  # (N, (h+1)*(w+1), C*r*r) phases of the padded background, in `order`;
    # bf16 under a bf16 autocast (the paste product only)
    valid: torch.Tensor  # (1 or N, 1, Lb) 1 where a background patch has no hole pixel, in `order`
    h: int
    w: int
    order: str  # "raster" or "column": order of the background axis after the fuse


def prepare(
    f: torch.Tensor,
    b: torch.Tensor,
    mask: torch.Tensor | None,
    rate: int,
    ksize: int,
    fused: bool,
    paste_dtype: torch.dtype | None = None,
) -> Prepared:
    """The call's :class:`Prepared` tensors. f, b: (N,C,H,W), H and W multiples of ``rate``;
    mask: (1 or N,1,H,W), 1 = hole, or None. ``fused``: the background axis in column-major
    order (where the official fuse's second pass leaves it), else raster order."""
    n, c, height, width = f.shape
    r, k = rate, ksize
    h, w = height // r, width // r
    # Pasting source. The official paste is a 'SAME' transposed convolution with the 2r x 2r
    # background patches at stride r. Those patches overlap four times: patch q at offset
    # s*r + t (s in {0,1}, t in [0,r)) is pixel (q+s)*r + t of the padded background, i.e.
    # phase t of the background at grid position q+s. So the paste equals
    #   canvas_t[o] = sum_q' A'[o, q'] * phase_t[q'],  A'[o, q'] = sum_s attn[o-s, q'-s],
    # 4x fewer multiply-adds than multiplying by the 16x redundant patch matrix.
    top, bottom = tf_same_padding(height, 2 * r, r)
    left, right = tf_same_padding(width, 2 * r, r)
    padded = F.pad(b, (left, right, top, bottom))  # (N, C, (h+1)r, (w+1)r)
    phases = padded.view(n, c, h + 1, r, w + 1, r)
    if r > 1:
        same = f is b
        f = resize_nearest(f, (h, w))
        b = f if same else resize_nearest(b, (h, w))
        if mask is not None:
            mask = resize_nearest(mask, (h, w))
    # Patch scores are computed from pixel products (see _scores); patch norms from a k x k
    # box sum of squared pixel norms, with the zero padding of TF 'SAME'.
    c = f.shape[1]
    fg = f.reshape(n, c, h * w).transpose(1, 2)  # (N, Lf, C)
    bg = b.reshape(n, c, h * w)  # (N, C, Lb)
    squared = unfold_same(b.square().sum(dim=1, keepdim=True), k).sum(dim=1, keepdim=True)
    inv_norm = 1.0 / squared.sqrt().clamp_min(1e-4)
    if mask is None:
        valid = torch.ones(1, 1, h * w, dtype=f.dtype, device=f.device)
    else:
        # A background patch is valid only if it holds no hole pixel (official: mean == 0).
        hole = unfold_same(mask.to(f.dtype), k).amax(dim=1, keepdim=True)
        valid = (hole == 0).to(f.dtype)
    order = "column" if fused else "raster"
    if order == "column":
        # After the second fuse pass the background axis is in column-major order; keep it
        # there (softmax does not care) and permute the small per-patch tensors instead.
        valid = valid.view(valid.shape[0], 1, h, w).transpose(-1, -2).reshape(valid.shape[0], 1, h * w)
        paste = phases.permute(0, 4, 2, 1, 3, 5)  # (N, w+1, h+1, C, r, r)
    else:
        paste = phases.permute(0, 2, 4, 1, 3, 5)  # (N, h+1, w+1, C, r, r)
    paste = paste.reshape(n, (h + 1) * (w + 1), c * r * r)
    if paste_dtype is not None:
        paste = paste.to(paste_dtype)
    return Prepared(fg, bg, inv_norm, paste, valid, h, w, order)
