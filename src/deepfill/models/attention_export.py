"""Contextual attention for graph exporters (ONNX): the function of the chunked layer
(:class:`~deepfill.models.contextual_attention.ContextualAttention`) at any H and W, with memory
bounded by a chunk budget.

The chunked layer's loop runs in Python over sizes known at run time, and the official paste
convolves with kernels cut from the input; exporters take neither. Here the loop is the scan
operator (``torch.ops.higher_order.scan``, ONNX ``Scan``) over blocks of foreground rows, whose
number and height are expressions of the symbolic input size, and every step inside it is a tensor
operation: patch scores as k*k shifted copies of the pixel Gram matrix, the fuse as sums of
diagonal shifts (the official identity-kernel convolution) in raster, then in column-major order,
the paste as the product with the background phases of
:func:`~deepfill.models.attention_patches.prepare`, its four shifts taken on the output grid.

A block of R foreground rows needs a few rows around it (the patch, both fuse passes); they are
computed again by the block (``halo_rows``) instead of being carried over, which keeps every
iteration independent. The fuse's column-major pass reads, at the top and bottom of the image,
neighbours in the previous and next column (the official flattened convolution does): those few
rows of the first pass are computed once before the loop. The paste of a block overlaps the next
block's first ``rate`` canvas rows; the overlap is carried to the next iteration. Peak memory: a
few score buffers of (R + halo) * W/rate * (H*W/rate^2) floats, R chosen from ``chunk_bytes``.
"""

from __future__ import annotations

from dataclasses import replace

import torch
import torch.nn.functional as F

from .attention_patches import NEGLIGIBLE_WEIGHT, Prepared, prepare
from .layers import tf_same_padding

__all__ = ["EXPORT_CHUNK_BYTES", "attend_export", "halo_rows"]

# Score-buffer budget of one block of the exported attention (the largest buffer of an
# iteration; about five of that size are alive at its peak). At 1024² (a 128x128 grid) it makes
# five blocks of 26 rows; not yet tuned against other values (BENCHMARKS.md "ONNX export").
EXPORT_CHUNK_BYTES = 256 * 2**20


def halo_rows(ksize: int, fuse_k: int, fuse: bool) -> int:
    """Grid rows a block of the exported attention computes besides its own (Gram matrix rows)."""
    return (ksize - 1) + (2 * (fuse_k - 1) if fuse else 0)


def _shift_columns(x: torch.Tensor, shift, width) -> torch.Tensor:
    """``out[..., x, :] = x[..., x + shift, :]`` on dim 2 (foreground columns), zeros outside."""
    index = torch.arange(width, device=x.device) + shift
    inside = ((index >= 0) & (index < width)).to(x.dtype).view(1, 1, -1, 1)
    return x.index_select(2, index.clamp(0, width - 1)) * inside


def _score_rows(p: Prepared, start, count: int, ksize: int) -> torch.Tensor:
    """Patch scores of foreground rows ``start + [0, count)`` (a tensor or an int start), zeros
    for rows outside the image: (N, count, w, Lb), background in raster order."""
    n, h, w = p.fg.shape[0], p.h, p.w
    c = p.fg.shape[2]
    k, before = ksize, (ksize - 1) // 2
    lb = h * w
    # Gram rows of the block and its patch halo; rows outside the image are zero, as the
    # official 'SAME' padding makes them.
    rows = torch.arange(count + k - 1, device=p.fg.device) + (start - before)
    inside = ((rows >= 0) & (rows < h)).to(p.fg.dtype)
    pixels = p.fg.view(n, h, w * c).index_select(1, rows.clamp(0, h - 1)) * inside.view(1, -1, 1)
    gram = torch.bmm(pixels.view(n, -1, c), p.bg).view(n, count + k - 1, w, h, w)
    # The k*k shifted sum, separable: foreground and background columns, then rows.
    grid = F.pad(gram, (before, k - 1 - before, 0, 0, before, k - 1 - before))
    by_columns = grid[:, :, 0:w, :, 0:w]
    for u in range(1, k):
        by_columns = by_columns + grid[:, :, u : u + w, :, u : u + w]
    grid = F.pad(by_columns, (0, 0, before, k - 1 - before))
    scores = grid[:, 0:count, :, 0:h]
    for u in range(1, k):
        scores = scores + grid[:, u : u + count, :, u : u + h]
    out_rows = rows[before : before + count]
    inside = ((out_rows >= 0) & (out_rows < h)).to(p.fg.dtype).view(1, count, 1, 1)
    # Scores of rows outside the image are zero too (the fuse below reads them as such).
    return scores.reshape(n, count, w, lb) * p.inv_norm.view(n, 1, 1, lb) * inside


def _first_pass_rows(p: Prepared, start, count: int, ksize: int, fuse_k: int) -> torch.Tensor:
    """The fuse's first (raster order) pass for foreground rows ``start + [0, count)``, zeros
    outside the image: (N, count, w, Lb), background in raster order."""
    n, w = p.fg.shape[0], p.w
    before, after = (fuse_k - 1) // 2, fuse_k - 1 - (fuse_k - 1) // 2
    lb = p.h * w
    # Flat neighbours i + d, |d| < fuse_k, lie at most `before` / `after` rows away.
    scores = _score_rows(p, start - before, count + before + after, ksize).reshape(n, -1, lb)
    scores = F.pad(scores, (before, after))
    # The shifted rows by index, not by slice bounds: an exporter reasons about slice bounds
    # symbolically, and these (a few rows of a flat axis) are costly to prove in range.
    pos = torch.arange(count * w, device=scores.device) + before * w - before
    out = scores.index_select(1, pos)[:, :, 0:lb]
    for a in range(1, fuse_k):
        out = out + scores.index_select(1, pos + a)[:, :, a : a + lb]
    return out.view(n, count, w, lb)


def _wrapped_rows(p: Prepared, ksize: int, fuse_k: int) -> torch.Tensor:
    """First-pass rows that the column-major pass reads above the image's first row and below its
    last: virtual row e (e < 0 or e >= h) is row e mod h of column x + floor(e / h). Returns
    (N, before + after + 1, w, Lb): the rows e = -before..-1, then h..h+after-1, then a zero row."""
    h = p.h
    before, after = (fuse_k - 1) // 2, fuse_k - 1 - (fuse_k - 1) // 2
    rows = []
    for m in range(before, 0, -1):  # e = -m: floor(e/h) = -ceil(m/h), row e - floor(e/h)*h
        q = (m + h - 1) // h
        rows.append(_shift_columns(_first_pass_rows(p, q * h - m, 1, ksize, fuse_k), -q, p.w))
    for t in range(after):  # e = h + t: floor(e/h) = 1 + t // h
        q = 1 + t // h
        rows.append(_shift_columns(_first_pass_rows(p, t - (t // h) * h, 1, ksize, fuse_k), q, p.w))
    rows.append(torch.zeros_like(rows[0]) if rows else p.fg.new_zeros(p.fg.shape[0], 1, p.w, h * p.w))
    return torch.cat(rows, dim=1)


def _fused_rows(
    p: Prepared, start: torch.Tensor, count: int, ksize: int, fuse_k: int, wrapped: torch.Tensor
) -> torch.Tensor:
    """Both fuse passes for foreground rows ``start + [0, count)``: (N, count*w, Lb), background
    in column-major order."""
    n, h, w = p.fg.shape[0], p.h, p.w
    before, after = (fuse_k - 1) // 2, fuse_k - 1 - (fuse_k - 1) // 2
    lb = h * w
    extended = count + fuse_k - 1
    first = _first_pass_rows(p, start - before, extended, ksize, fuse_k)
    # Rows outside the image are the wrapped rows of the column-major order (zero beyond them).
    e = torch.arange(extended, device=first.device) + (start - before)
    slot = torch.where(e < 0, e + before, torch.where(e < h + after, e - h + before, before + after))
    slot = torch.where((e >= 0) & (e < h), before + after, slot)
    inside = ((e >= 0) & (e < h)).to(first.dtype).view(1, -1, 1, 1)
    first = first * inside + wrapped.index_select(1, slot)
    # Column-major order of the background axis, then the diagonal sum along it and along the
    # foreground rows (a column-major neighbour is the next row of the same column).
    columns = first.view(n, extended, w, h, w).transpose(3, 4).reshape(n, extended, w, lb)
    columns = F.pad(columns, (before, after))
    out = columns[:, 0:count, :, 0:lb]
    for a in range(1, fuse_k):
        out = out + columns[:, a : a + count, :, a : a + lb]
    return out.reshape(n, count * w, lb)


def _paste(p: Prepared, attn: torch.Tensor, count: int, rate: int) -> torch.Tensor:
    """Canvas strip of ``count`` foreground rows: (N, C, (count+1)*rate, (w+1)*rate)."""
    n, h, w = attn.shape[0], p.h, p.w
    # A'[o, q'] = sum over s in {0,1}^2 of attn[o - s, q' - s] on the (rows+1, w+1) foreground
    # and (h+1, w+1) background grids, one axis pair at a time.
    if p.order == "column":
        grid = attn.view(n, count, w, w, h)  # background (column, row)
        rows = F.pad(grid, (0, 1, 0, 0, 0, 0, 0, 1)) + F.pad(grid, (1, 0, 0, 0, 0, 0, 1, 0))
        both = F.pad(rows, (0, 0, 0, 1, 0, 1)) + F.pad(rows, (0, 0, 1, 0, 1, 0))
    else:
        grid = attn.view(n, count, w, h, w)
        rows = F.pad(grid, (0, 0, 0, 1, 0, 0, 0, 1)) + F.pad(grid, (0, 0, 1, 0, 0, 0, 1, 0))
        both = F.pad(rows, (0, 1, 0, 0, 0, 1)) + F.pad(rows, (1, 0, 0, 0, 1, 0))
    shifted = both.reshape(n, (count + 1) * (w + 1), (h + 1) * (w + 1))
    canvas = torch.bmm(shifted, p.paste).transpose(1, 2).unflatten(2, (count + 1, w + 1))
    return F.pixel_shuffle(canvas, rate)


def attend_export(
    f: torch.Tensor,
    b: torch.Tensor,
    mask: torch.Tensor | None,
    *,
    rate: int,
    ksize: int,
    fuse_k: int,
    softmax_scale: float,
    fuse: bool,
    chunk_bytes: int = EXPORT_CHUNK_BYTES,
    rows: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(y, offsets)`` as the chunked layer returns them. f, b: (N,C,H,W) float32, H and W
    multiples of ``rate``; mask: (1 or N,1,H,W), 1 = hole, or None. y: (N,C,H,W); offsets:
    (N,2,H/rate,W/rate) int64. ``rows``: foreground rows per block (default: as many as fit
    ``chunk_bytes`` with their halo, at least one)."""
    n, c, height, width = f.shape
    r = rate
    p = prepare(f, b, mask, rate, ksize, fused=fuse)
    # Foreground rows are gathered per block: contiguous once (and no view of b's memory, which
    # the loop operator refuses).
    p = replace(p, fg=p.fg.contiguous())
    h, w = p.h, p.w
    lb = h * w
    if rows is None:
        rows = torch.sym_max(1, chunk_bytes // (n * w * lb * 4) - halo_rows(ksize, fuse_k, fuse))
    rows = torch.sym_min(rows, h)
    blocks = (h + rows - 1) // rows
    wrapped = _wrapped_rows(p, ksize, fuse_k) if fuse else None

    # The loop body sees only its arguments (the loop operator's inputs): sizes it uses come from
    # their shapes; empty tensors carry the grid and the block height.
    grid_shape, rows_shape = f.new_empty(h, w, 0), f.new_empty(rows, 0)
    empty = f.new_empty(0)
    constants = [p.fg, p.bg, p.inv_norm, p.valid, p.paste, wrapped if fuse else empty, grid_shape, rows_shape]

    def block(carry, start, fg, bg, inv_norm, valid, paste, wrapped, grid_shape, rows_shape):
        h, w = grid_shape.shape[:2]
        rows, n, lb = rows_shape.shape[0], fg.shape[0], h * w
        q = Prepared(fg, bg, inv_norm, paste, valid, h, w, p.order)
        if fuse:
            scores = _fused_rows(q, start, rows, ksize, fuse_k, wrapped)
        else:
            scores = _score_rows(q, start, rows, ksize).reshape(n, rows * w, lb)
        pos = torch.arange(rows * w, device=start.device) + start * w
        real = (pos < lb).to(scores.dtype).view(1, -1, 1)  # rows past the image: no paste
        # Official masked softmax: invalid scores zeroed (still in the denominator), then the
        # attention of invalid patches zeroed again.
        attn = torch.softmax(scores * (valid * softmax_scale), dim=-1) * (valid * real)
        index = torch.argmax(attn, dim=-1)  # first index of the largest weight, as max()
        # (x // m, x - (x // m) * m): the exporter has no remainder by a symbolic size.
        if q.order == "column":
            src_col = index // h
            src_row = index - src_col * h
        else:
            src_row = index // w
            src_col = index - src_row * w
        row = pos // w
        offsets = torch.stack([src_row - row, src_col - (pos - row * w)], dim=1)
        # Weights below 2^-64 zeroed before the paste (see ContextualAttention._attend).
        attn = torch.where(attn < NEGLIGIBLE_WEIGHT, 0.0, attn)
        strip = _paste(q, attn, rows, r)
        # The strip's last `rate` canvas rows overlap the next block's first ones.
        head = strip[:, :, 0:r] + carry
        body = torch.cat([head, strip[:, :, r : rows * r]], dim=2)
        tail = strip[:, :, rows * r : (rows + 1) * r].clone(memory_format=torch.contiguous_format)
        return [tail, body, offsets]

    starts = torch.arange(blocks, device=f.device) * rows
    tail = f.new_zeros(n, c, r, (w + 1) * r)
    if torch.compiler.is_exporting():
        # The loop operator itself (ONNX Scan), traced once on the symbolic shapes.
        tail, bodies, offsets = torch.ops.higher_order.scan(block, [tail], [starts], constants)
    else:  # the same loop, run by Python (what scan means)
        outputs = []
        for start in starts:
            tail, *out = block(tail, start, *constants)
            outputs.append(out)
        bodies, offsets = (torch.stack(parts) for parts in zip(*outputs, strict=True))
    # (blocks, N, C, rows*r, (w+1)*r) -> (N, C, blocks*rows*r, (w+1)*r), then the last overlap.
    canvas = bodies.permute(1, 2, 0, 3, 4).reshape(n, c, blocks * rows * r, (w + 1) * r)
    canvas = torch.cat([canvas, tail], dim=2)
    top, _ = tf_same_padding(height, 2 * r, r)
    left, _ = tf_same_padding(width, 2 * r, r)
    y = canvas[:, :, top : top + height, left : left + width] / 4.0
    offsets = offsets.permute(1, 2, 0, 3).reshape(n, 2, blocks * rows * w)[:, :, 0:lb]
    return y, offsets.reshape(n, 2, h, w)
