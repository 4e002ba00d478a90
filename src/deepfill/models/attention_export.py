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

The loop streams: a block computes the Gram matrix of R new foreground rows only; the rows the
patch sum, the fuse's raster pass and its column-major pass need from earlier blocks (k-1 and
fuse_k-1 of each) are the loop's carried state, so no row is computed twice and the first
blocks fill the pipeline (rows before the image, dropped). The column-major pass reads, at the
top and bottom of the image, neighbours in the previous and next column (the official flattened
convolution does): those few rows of the first pass are computed once before the loop. The
paste of a block overlaps the next block's first ``rate`` canvas rows; the overlap is carried
too. Peak memory: a few score buffers of (R + fuse_k - 1) * W/rate * (H*W/rate^2) floats, R
chosen from ``chunk_bytes``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .attention_patches import NEGLIGIBLE_WEIGHT, Prepared, prepare
from .layers import tf_same_padding

__all__ = ["EXPORT_CHUNK_BYTES", "attend_export"]

# Score-buffer budget of one block of the exported attention (a block's rows, with the rows
# carried, times one score row; several buffers of that size are alive at its peak). Measured
# with the paper's model in onnxruntime, 2 threads: 16 MiB against 256 MiB, 1024² peak RSS
# 2.2 against 4.7 GiB at the same speed; 512² 1.3 against 2.1 GiB, 7% slower. 32 MiB makes
# 256² one block, 512² three, 1024² 66 blocks of two rows (BENCHMARKS.md "ONNX export").
EXPORT_CHUNK_BYTES = 32 * 2**20


def _shift_columns(x: torch.Tensor, shift, width) -> torch.Tensor:
    """``out[..., x, :] = x[..., x + shift, :]`` on dim 2 (foreground columns), zeros outside."""
    index = torch.arange(width, device=x.device) + shift
    inside = ((index >= 0) & (index < width)).to(x.dtype).view(1, 1, -1, 1)
    return x.index_select(2, index.clamp(0, width - 1)) * inside


def _empty_carries(x: torch.Tensor, n, h, w, ksize: int, fuse_k: int) -> tuple[list, list]:
    """What the streamed stages carry before the first row, all zeros: ([the k-1 column-summed
    Gram rows (N, k-1, w, h+k-1, w)], [the fuse_k-1 score rows (N, fuse_k-1, w, h*w+fuse_k-1)]),
    each list empty where its stage carries nothing."""
    gram = [x.new_zeros(n, ksize - 1, w, h + ksize - 1, w)] if ksize > 1 else []
    scores = [x.new_zeros(n, fuse_k - 1, w, h * w + fuse_k - 1)] if fuse_k > 1 else []
    return gram, scores


def _first_pass_row(
    fg_padded: torch.Tensor, bg_padded: torch.Tensor, inv_norm: torch.Tensor, y: int, ksize: int, fuse_k: int
) -> torch.Tensor:
    """The fuse's first pass of foreground row ``y`` alone: (N, 1, w, Lb), background raster.
    The streamed stages with nothing carried in, one row at a time (as the loop's one-row blocks):
    the k-1 + fuse_k-1 rows they need before it are computed and dropped, and no buffer holds
    more than one row (at 4096² a row of scores is 512 MiB)."""
    n, h, w = fg_padded.shape[0], fg_padded.shape[1], fg_padded.shape[2] - ksize + 1
    carried_k, carried_f = _empty_carries(fg_padded, n, h, w, ksize, fuse_k)
    # Start so that the last first-pass row is y (see _stage_sizes).
    start = y - (ksize - 1) // 2 - (fuse_k - 1) // 2
    for j in range(ksize + fuse_k - 1):  # (start may be a symbolic size: no range over it)
        scores = _stream_scores(fg_padded, bg_padded, inv_norm, start + j, 1, ksize, carried_k)
        first = _stream_first_pass(scores, w, fuse_k, carried_f) if fuse_k > 1 else scores
    return first


def _wrapped_rows(
    fg_padded: torch.Tensor, bg_padded: torch.Tensor, inv_norm: torch.Tensor, h: int, ksize: int, fuse_k: int
) -> torch.Tensor:
    """First-pass rows that the column-major pass reads above the image's first row and below its
    last: virtual row e (e < 0 or e >= h) is row e mod h of column x + floor(e / h). Returns
    (N, before + after + 1, w, Lb): the rows e = -before..-1, then h..h+after-1, then a zero row."""
    w = fg_padded.shape[2] - ksize + 1
    before, after = (fuse_k - 1) // 2, fuse_k - 1 - (fuse_k - 1) // 2

    def row(y: int, shift: int) -> torch.Tensor:
        return _shift_columns(_first_pass_row(fg_padded, bg_padded, inv_norm, y, ksize, fuse_k), shift, w)

    rows = []
    for m in range(before, 0, -1):  # e = -m: floor(e/h) = -ceil(m/h), row e - floor(e/h)*h
        q = (m + h - 1) // h
        rows.append(row(q * h - m, -q))
    for t in range(after):  # e = h + t: floor(e/h) = 1 + t // h
        rows.append(row(t - (t // h) * h, 1 + t // h))
    rows.append(fg_padded.new_zeros(fg_padded.shape[0], 1, w, h * w))
    return torch.cat(rows, dim=1)


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


def _stage_sizes(ksize: int, fuse_k: int) -> tuple[int, int, int]:
    """(rows after a position in the patch, rows after it in the fuse, delay): a block whose new
    Gram rows start at g completes the fused rows that start at g - delay."""
    after_k = ksize - 1 - (ksize - 1) // 2
    after_f = fuse_k - 1 - (fuse_k - 1) // 2
    return after_k, after_f, after_k + 2 * after_f


def _slide(new: torch.Tensor, keep: int, carried: list) -> torch.Tensor:
    """``new`` rows (dim 1) after the ``keep`` rows popped from ``carried``; the last ``keep``
    rows of the result are appended to ``carried`` for the next block."""
    if keep == 0:
        return new
    window = torch.cat([carried.pop(0), new], dim=1)
    carried.append(window[:, new.shape[1] :].clone(memory_format=torch.contiguous_format))
    return window


def _block_plan(total, most):
    """(rows, blocks): the fewest blocks of at most ``most`` rows covering ``total`` rows, their
    rows balanced (ints, or int64 tensors in an exported graph)."""
    blocks = (total + most - 1) // most
    return (total + blocks - 1) // blocks, blocks


def _stream_scores(
    fg_padded: torch.Tensor,
    bg_padded: torch.Tensor,
    inv_norm: torch.Tensor,
    g,
    rows: int,
    ksize: int,
    carried: list,
) -> torch.Tensor:
    """Scores of foreground rows ``g - after_k + [0, rows)`` from the new Gram rows
    ``g + [0, rows)`` and the ``ksize - 1`` column-summed Gram rows before them (popped from
    ``carried``, their successors appended): (N, rows, w, Lb), zero outside the image.
    fg_padded: (N, h, w+k-1, C), bg_padded: (N, C, (h+k-1)*(w+k-1)): the pixels with the zero
    'SAME' padding of the patches, so that the Gram rows come out padded (no copy to pad them)."""
    k = ksize
    n, h, c, w = fg_padded.shape[0], fg_padded.shape[1], fg_padded.shape[3], fg_padded.shape[2] - k + 1
    after = k - 1 - (k - 1) // 2
    index = torch.arange(rows, device=fg_padded.device) + g
    inside = ((index >= 0) & (index < h)).to(fg_padded.dtype)
    pixels = fg_padded.view(n, h, -1).index_select(1, index.clamp(0, h - 1)) * inside.view(1, -1, 1)
    gram = torch.bmm(pixels.view(n, -1, c), bg_padded).view(n, rows, w + k - 1, h + k - 1, w + k - 1)
    # The k*k shifted sum is separable: foreground and background columns here, rows below
    # (each Gram row's column sum is computed once and carried to the next k-1 blocks).
    by_columns = gram[:, :, 0:w, :, 0:w]
    for u in range(1, k):
        by_columns = by_columns + gram[:, :, u : u + w, :, u : u + w]
    window = _slide(by_columns, k - 1, carried)
    scores = window[:, 0:rows, :, 0:h]
    for u in range(1, k):
        scores = scores + window[:, u : u + rows, :, u : u + h]
    out = index - after
    inside = ((out >= 0) & (out < h)).to(fg_padded.dtype).view(1, rows, 1, 1)
    # Rows outside the image score zero (the fuse reads them as such), as 'SAME' padding makes.
    return scores.reshape(n, rows, w, h * w) * (inv_norm.view(n, 1, 1, h * w) * inside)


def _stream_first_pass(scores: torch.Tensor, w: int, fuse_k: int, carried: list) -> torch.Tensor:
    """The fuse's raster-order pass over the new score rows and the ``fuse_k - 1`` rows before
    them (carried): (N, rows, w, Lb), the rows ``after_f`` rows before the new score rows."""
    n, rows, _, lb = scores.shape
    before, after = (fuse_k - 1) // 2, fuse_k - 1 - (fuse_k - 1) // 2
    window = _slide(F.pad(scores, (before, after)), fuse_k - 1, carried)
    flat = window.view(n, -1, lb + fuse_k - 1)
    # Flat neighbours i + d of the window's middle rows (both axes shifted by d).
    first = before * w - before
    out = flat[:, first : first + rows * w, 0:lb]
    for a in range(1, fuse_k):
        out = out + flat[:, first + a : first + a + rows * w, a : a + lb]
    return out.view(n, rows, w, lb)


def _stream_column_pass(
    q: Prepared, first: torch.Tensor, e0, fuse_k: int, wrapped: torch.Tensor, carried: list
) -> torch.Tensor:
    """The column-major pass over first-pass rows ``e0 + [0, rows)`` and the ``fuse_k - 1`` before
    them (carried, already in column-major order): (N, rows, w, Lb), background column-major,
    the fused rows ``after_f`` rows before ``e0``."""
    n, rows, w, lb = first.shape
    h = q.h
    before, after = (fuse_k - 1) // 2, fuse_k - 1 - (fuse_k - 1) // 2
    # Rows outside the image are the wrapped rows of the column-major order (zero beyond them).
    e = torch.arange(rows, device=first.device) + e0
    slot = torch.where((e >= -before) & (e < 0), e + before, before + after)
    slot = torch.where((e >= h) & (e < h + after), e - h + before, slot)
    inside = ((e >= 0) & (e < h)).to(first.dtype).view(1, -1, 1, 1)
    first = first * inside + wrapped.index_select(1, slot)
    # Column-major order of the background axis; a column-major neighbour along the foreground
    # axis is the next row of the same column.
    columns = first.view(n, rows, w, h, w).transpose(3, 4).reshape(n, rows, w, lb)
    window = _slide(F.pad(columns, (before, after)), fuse_k - 1, carried)
    out = window[:, 0:rows, :, 0:lb]
    for a in range(1, fuse_k):
        out = out + window[:, a : a + rows, :, a : a + lb]
    return out


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
    ``chunk_bytes`` with the rows carried, at least one)."""
    n, c, height, width = f.shape
    r = rate
    p = prepare(f, b, mask, rate, ksize, fused=fuse)
    h, w = p.h, p.w
    lb = h * w
    after_k, after_f, delay = _stage_sizes(ksize, fuse_k if fuse else 1)
    keep = max(ksize, fuse_k if fuse else 1) - 1
    # Block i takes Gram rows i*rows + [0, rows) and completes foreground rows from i*rows - delay:
    # the first blocks fill the pipeline (their rows before the image are computed and dropped).
    total = h + delay
    if torch.compiler.is_exporting():
        # Computed as values in the graph: the exporter then reasons about two plain sizes (at
        # least 1, covering the grid) instead of min/max/floor expressions of the input size in
        # every shape of the loop, which made the export about 1.4x slower.
        def value(x):
            return torch.scalar_tensor(x, dtype=torch.int64)

        if rows is None:
            most = (value(chunk_bytes) // value(n * w * lb * 4) - keep).clamp(min=1)
        else:
            most = value(rows)
        sizes = torch.stack(_block_plan(value(total), torch.minimum(most, value(total))))
        rows, blocks = sizes[0].item(), sizes[1].item()
        torch._check(rows >= 1)
        torch._check(blocks >= 1)
        torch._check(rows * blocks >= total)
    else:
        most = rows if rows is not None else max(1, chunk_bytes // (n * w * lb * 4) - keep)
        rows, blocks = _block_plan(total, min(most, total))

    # The loop body sees only its arguments (the loop operator's inputs): sizes it uses come from
    # their shapes; empty tensors carry the grid and the block height.
    grid_shape, rows_shape = f.new_empty(h, w, 0), f.new_empty(rows, 0)
    before = (ksize - 1) // 2
    # Contiguous copies (the loop operator refuses inputs that are views of b's memory; a pad
    # by zero rows returns its input).
    fg_padded = F.pad(p.fg.reshape(n, h, w, -1), (0, 0, before, after_k)).contiguous()
    bg_padded = F.pad(p.bg.view(n, -1, h, w), (before, after_k, before, after_k)).flatten(2)
    wrapped = _wrapped_rows(fg_padded, bg_padded, p.inv_norm, h, ksize, fuse_k) if fuse else f.new_empty(0)
    constants = [fg_padded, bg_padded, p.inv_norm, p.valid, p.paste, wrapped, grid_shape, rows_shape]
    # Carried between blocks: the last column-summed Gram rows (padded on the background rows),
    # the last score rows and column-major first-pass rows (padded on the background axis), and
    # the paste's overlap with the next block.
    gram_rows, score_rows = _empty_carries(f, n, h, w, ksize, fuse_k if fuse else 1)
    carry = gram_rows + score_rows + [t.clone() for t in score_rows] + [f.new_zeros(n, c, r, (w + 1) * r)]
    slots = len(carry)

    def block(*args):
        carried, (g, fg_padded, bg_padded, inv_norm, valid, paste, wrapped, grid_shape, rows_shape) = (
            list(args[: slots - 1]),
            args[slots:],
        )
        tail = args[slots - 1]
        h, w = grid_shape.shape[:2]
        rows, n, lb = rows_shape.shape[0], fg_padded.shape[0], h * w
        # (The column pass and the paste read the grid, the order, the phases and validity.)
        q = Prepared(fg_padded, bg_padded, inv_norm, paste, valid, h, w, p.order)
        scores = _stream_scores(fg_padded, bg_padded, inv_norm, g, rows, ksize, carried)
        if fuse:
            first = _stream_first_pass(scores, w, fuse_k, carried) if fuse_k > 1 else scores
            scores = _stream_column_pass(q, first, g - after_k - after_f, fuse_k, wrapped, carried)
        scores = scores.reshape(n, rows * w, lb)
        pos = torch.arange(rows * w, device=g.device) + (g - delay) * w
        real = ((pos >= 0) & (pos < lb)).to(scores.dtype).view(1, -1, 1)  # pipeline rows: no paste
        # Official masked softmax: invalid scores zeroed (still in the denominator), then the
        # attention of invalid patches zeroed again.
        attn = torch.softmax(scores * (valid * softmax_scale), dim=-1) * valid
        index = torch.argmax(attn, dim=-1)  # first index of the largest weight, as max()
        # (x // m, x - (x // m) * m): the exporter has no remainder by a symbolic size.
        if q.order == "column":
            src_col = index // h
            src_row = index - src_col * h
        else:
            src_row = index // w
            src_col = index - src_row * w
        row = torch.div(pos, w, rounding_mode="floor")
        offsets = torch.stack([src_row - row, src_col - (pos - row * w)], dim=1)
        # Weights below 2^-64 zeroed before the paste (see ContextualAttention._attend): as a
        # threshold, which the exporter writes as one ThresholdedRelu (7x faster in onnxruntime
        # than a Where). Rows outside the image paste nothing.
        attn = F.threshold(attn, NEGLIGIBLE_WEIGHT, 0.0) * real
        strip = _paste(q, attn, rows, r)
        # The strip's last `rate` canvas rows overlap the next block's first ones.
        head = strip[:, :, 0:r] + tail
        body = torch.cat([head, strip[:, :, r : rows * r]], dim=2)
        tail = strip[:, :, rows * r : (rows + 1) * r].clone(memory_format=torch.contiguous_format)
        return [*carried, tail, body, offsets]

    starts = torch.arange(blocks, device=f.device) * rows
    if torch.compiler.is_exporting():
        # The loop operator itself (ONNX Scan), traced once on the symbolic shapes.
        *carry, bodies, offsets = torch.ops.higher_order.scan(block, carry, [starts], constants)
    else:  # the same loop, run by Python (what scan means)
        outputs = []
        for g in starts:
            *carry, body, offset = block(*carry, g, *constants)
            outputs.append((body, offset))
        bodies, offsets = (torch.stack(parts) for parts in zip(*outputs, strict=True))
    # (blocks, N, C, rows*r, (w+1)*r) -> (N, C, blocks*rows*r, (w+1)*r), then the last overlap;
    # the canvas starts `delay` foreground rows before the image.
    canvas = bodies.permute(1, 2, 0, 3, 4).reshape(n, c, blocks * rows * r, (w + 1) * r)
    canvas = torch.cat([canvas, carry[-1]], dim=2)
    top, _ = tf_same_padding(height, 2 * r, r)
    left, _ = tf_same_padding(width, 2 * r, r)
    top += delay * r
    y = canvas[:, :, top : top + height, left : left + width] / 4.0
    offsets = offsets.permute(1, 2, 0, 3).reshape(n, 2, blocks * rows * w)
    offsets = offsets[:, :, delay * w : delay * w + lb]
    return y, offsets.reshape(n, 2, h, w)
