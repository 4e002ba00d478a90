"""Contextual attention for graph exporters (ONNX): the function of the chunked layer
(:class:`~deepfill.models.contextual_attention.ContextualAttention`) at any H and W, with memory
bounded by a chunk budget.

The chunked layer's loop runs in Python over sizes known at run time, and the official paste
convolves with kernels cut from the input; exporters take neither. Here the loop is the scan
operator (``torch.ops.higher_order.scan``, ONNX ``Scan``) over blocks of foreground positions,
whose number and shape are expressions of the symbolic input size, and every step inside it is a
tensor operation: patch scores as k*k shifted copies of the pixel Gram matrix, the fuse as sums
of diagonal shifts (the official identity-kernel convolution) in raster, then in column-major
order, the paste as the product with the background phases of
:func:`~deepfill.models.attention_patches.prepare`, its four shifts taken on the output grid.

A block is R foreground rows of a vertical strip of the grid, tx columns wide (the whole width
while :data:`WHOLE_ROWS` rows fit the budget; narrower strips above, so that no buffer holds a
whole row of scores: at 4096² one row is 512 MiB). The loop walks down each strip in turn and streams: a
block computes the Gram matrix of R new pixel rows only, and carries the ``k - 1`` column-summed
Gram rows and the ``fuse_k - 1`` first-pass rows that the next block's patch sum and column-major
pass need (a few strip rows, not image rows). What the official flattened convolutions read
beyond the strip is computed once before the loop, in a loop over strips of its own: the raster
pass's neighbours past a row's ends (the previous row's last positions, the next row's first),
and the column-major pass's neighbours above the first and below the last row (first-pass rows
of the neighbouring column). The paste of a block overlaps the next block's first ``rate``
canvas rows (carried) and the next strip's first ``rate`` canvas columns (added after the loop).
Peak memory: a few score buffers of (R + fuse_k - 1) * (tx + fuse_k + k - 2) * (H*W/rate^2)
floats, R and tx chosen from ``chunk_bytes``, and the 2 * (fuse_k - 1) rows of scores computed
before the loop.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .attention_patches import NEGLIGIBLE_WEIGHT, Prepared, prepare
from .layers import tf_same_padding

__all__ = ["EXPORT_CHUNK_BYTES", "EXPORT_MIN_POSITIONS", "WHOLE_ROWS", "attend_export"]

# Score-buffer budget of one block of the exported attention (a block's positions, with the
# rows carried, times one score row; several buffers of that size are alive at its peak).
# Measured with the paper's model in onnxruntime, 2 threads: 16 MiB against 256 MiB, 1024² peak
# RSS 2.2 against 4.7 GiB at the same speed; 512² 1.3 against 2.1 GiB, 7% slower. The default
# budget is this or EXPORT_MIN_POSITIONS score rows, whichever is larger: 256² one block, 512²
# three blocks of whole rows, 1024² 49 blocks of 19 rows by 19 columns, 2048² 182 blocks of 20
# by 19 (128 MiB there; with 32 MiB, blocks of 9 by 7 made 2048² 1.24x slower: BENCHMARKS.md
# "ONNX export").
EXPORT_CHUNK_BYTES = 32 * 2**20
EXPORT_MIN_POSITIONS = 512

# Blocks span whole grid rows while at least this many rows fit the budget; below, strips
# narrower than the grid: the rows a block carries, and its paste's overlap with the next block,
# weigh less in near-square blocks than in blocks of a few long rows (at 1024², blocks of 19 by 19
# ran as fast as blocks of two whole rows, with 6% less peak memory).
WHOLE_ROWS = 8


def _halves(size: int) -> tuple[int, int]:
    """(before, after): the 'SAME' split of a window of ``size`` around its centre."""
    return (size - 1) // 2, size - 1 - (size - 1) // 2


def _column_sums(
    fg: torch.Tensor, bg_padded: torch.Tensor, pixel_rows: torch.Tensor, col0, width, ksize: int
) -> torch.Tensor:
    """Column-summed Gram rows: (N, R, width, h+k-1, w) for the pixel rows ``pixel_rows`` (R,)
    and the patches whose left pixel column is ``col0 + [0, width)`` (pixels outside the grid
    are the zero 'SAME' padding). fg: (N, h, w, C) foreground pixels; bg_padded: (N, C,
    (h+k-1)*(w+k-1)) the background pixels with that padding."""
    n, h, w, c = fg.shape
    k = ksize
    cols = torch.arange(width + k - 1, device=fg.device) + col0
    inside = ((pixel_rows >= 0) & (pixel_rows < h)).view(-1, 1) & ((cols >= 0) & (cols < w)).view(1, -1)
    pixels = fg.index_select(1, pixel_rows.clamp(0, h - 1)).index_select(2, cols.clamp(0, w - 1))
    pixels = pixels * inside.to(fg.dtype).unsqueeze(-1)
    rows = pixel_rows.shape[0]
    gram = torch.bmm(pixels.view(n, -1, c), bg_padded).view(n, rows, width + k - 1, h + k - 1, w + k - 1)
    # The k*k shifted sum is separable: foreground and background columns here, rows in
    # _strip_scores (each Gram row's column sum is computed once and carried to the next k-1
    # blocks).
    out = gram[:, :, 0:width, :, 0:w]
    for v in range(1, k):
        out = out + gram[:, :, v : v + width, :, v : v + w]
    return out


def _slide(new: torch.Tensor, keep: int, carried: list) -> torch.Tensor:
    """``new`` rows (dim 1) after the ``keep`` rows popped from ``carried``; the last ``keep``
    rows of the result are appended to ``carried`` for the next block."""
    if keep == 0:
        return new
    window = torch.cat([carried.pop(0), new], dim=1)
    carried.append(window[:, new.shape[1] :].clone(memory_format=torch.contiguous_format))
    return window


def _strip_scores(
    fg: torch.Tensor,
    bg_padded: torch.Tensor,
    inv_norm: torch.Tensor,
    pixel_rows: torch.Tensor,
    c0,
    width,
    ksize: int,
    carried: list | None,
) -> torch.Tensor:
    """Patch scores (N, R, width, Lb) of foreground columns ``c0 + [0, width)`` (positions
    outside the grid score as patches of the padding) from the Gram rows of ``pixel_rows``:
    streamed (``carried``: the k-1 column-summed rows before them, popped, their successors
    appended), the score rows ``pixel_rows - after_k``; or alone (``carried`` None), the rows
    whose whole patch lies in ``pixel_rows``."""
    n, h, w, _ = fg.shape
    k = ksize
    before, _ = _halves(k)
    by_columns = _column_sums(fg, bg_padded, pixel_rows, c0 - before, width, k)
    window = by_columns if carried is None else _slide(by_columns, k - 1, carried)
    rows = window.shape[1] - (k - 1)
    scores = window[:, 0:rows, :, 0:h]
    for u in range(1, k):
        scores = scores + window[:, u : u + rows, :, u : u + h]
    return scores.reshape(n, rows, width, h * w) * inv_norm.view(n, 1, 1, h * w)


def _edge_scores(
    fg_full: torch.Tensor,
    bg_padded: torch.Tensor,
    inv_norm: torch.Tensor,
    rows: torch.Tensor,
    ksize,
    fuse_k,
    h,
    w,
) -> torch.Tensor:
    """The raster pass's reads past the ends of foreground rows ``rows`` (R,): (N, R, fuse_k-1,
    Lb), slot s < before the flat position ``y*w - before + s`` (the previous row's last), slot
    s >= before the flat position ``y*w + w + s - before`` (the next row's first); zero outside
    the grid (the official flattened convolution's padding). fg_full: (N, (h+k-1)*(w+k-1), C),
    the foreground pixels with the 'SAME' padding on both axes."""
    n = fg_full.shape[0]
    k = ksize
    before, _ = _halves(fuse_k)
    slot = torch.arange(fuse_k - 1, device=fg_full.device)
    column = torch.where(slot < before, slot - before, w + slot - before)
    flat = rows.view(-1, 1) * w + column.view(1, -1)
    inside = ((flat >= 0) & (flat < h * w)).to(fg_full.dtype)
    flat = flat.clamp(0, h * w - 1)
    y = torch.div(flat, w, rounding_mode="floor")
    x = flat - y * w
    # One product per patch pixel (u, v): at most the scores' size alive, not k*k times it.
    scores = None
    for u in range(k):
        for v in range(k):
            index = ((y + u) * (w + k - 1) + x + v).flatten()
            term = torch.bmm(fg_full.index_select(1, index), bg_padded).view(n, -1, h + k - 1, w + k - 1)
            term = term[:, :, u : u + h, v : v + w]
            scores = term if scores is None else scores + term
    scores = scores.reshape(n, -1, h * w) * (inv_norm.view(n, 1, h * w) * inside.view(1, -1, 1))
    return scores.view(n, -1, fuse_k - 1, h * w)


def _with_edges(
    scores: torch.Tensor, edges: torch.Tensor, c0, index: torch.Tensor, fuse_k: int, w
) -> torch.Tensor:
    """Columns ``index`` of ``scores`` (N, R, width, Lb), whose foreground columns are ``c0 +
    index``, with the positions past the row's ends taken from ``edges`` (N, R, fuse_k-1, Lb)."""
    before, _ = _halves(fuse_k)
    c = index + c0
    inside = (c >= 0) & (c < w)
    slot = torch.where(c < 0, c + before, c - w + before).clamp(0, fuse_k - 2)
    return torch.where(inside.view(1, 1, -1, 1), scores.index_select(2, index), edges.index_select(2, slot))


def _first_pass(ext: torch.Tensor, width, fuse_k: int) -> torch.Tensor:
    """The fuse's raster-order pass: (N, R, width, Lb) from the scores ``ext`` (N, R,
    width+fuse_k-1, Lb) of the columns from ``before`` left of the first to ``after`` right of
    the last, past the row's ends already the neighbouring rows' (background raster)."""
    lb = ext.shape[3]
    before, after = _halves(fuse_k)
    padded = F.pad(ext, (before, after))
    out = padded[:, :, 0:width, 0:lb]
    for a in range(1, fuse_k):
        out = out + padded[:, :, a : a + width, a : a + lb]
    return out


def _column_major(x: torch.Tensor, h, w) -> torch.Tensor:
    """(N, R, width, h*w) with the background axis from raster to column-major order."""
    n, rows, width, _ = x.shape
    return x.view(n, rows, width, h, w).transpose(3, 4).reshape(n, rows, width, h * w)


def _paste(p: Prepared, attn: torch.Tensor, rows, width, rate: int) -> torch.Tensor:
    """Canvas piece of a block of ``rows`` x ``width`` foreground positions: (N, C, (rows+1)*rate,
    (width+1)*rate)."""
    n, h, w = attn.shape[0], p.h, p.w
    # A'[o, q'] = sum over s in {0,1}^2 of attn[o - s, q' - s] on the (rows+1, width+1)
    # foreground and (h+1, w+1) background grids, one axis pair at a time.
    if p.order == "column":
        grid = attn.view(n, rows, width, w, h)  # background (column, row)
        shifted = F.pad(grid, (0, 1, 0, 0, 0, 0, 0, 1)) + F.pad(grid, (1, 0, 0, 0, 0, 0, 1, 0))
        both = F.pad(shifted, (0, 0, 0, 1, 0, 1)) + F.pad(shifted, (0, 0, 1, 0, 1, 0))
    else:
        grid = attn.view(n, rows, width, h, w)
        shifted = F.pad(grid, (0, 0, 0, 1, 0, 0, 0, 1)) + F.pad(grid, (0, 0, 1, 0, 0, 0, 1, 0))
        both = F.pad(shifted, (0, 1, 0, 0, 0, 1)) + F.pad(shifted, (1, 0, 0, 0, 1, 0))
    both = both.reshape(n, (rows + 1) * (width + 1), (h + 1) * (w + 1))
    canvas = torch.bmm(both, p.paste).transpose(1, 2).unflatten(2, (rows + 1, width + 1))
    return F.pixel_shuffle(canvas, rate)


def _block_plan(total, most):
    """(rows, blocks): the fewest blocks of at most ``most`` rows covering ``total`` rows, their
    rows balanced (ints, or int64 tensors in an exported graph)."""
    blocks = (total + most - 1) // most
    return (total + blocks - 1) // blocks, blocks


def _strip_plan(positions, w, keep: int, extra: int, rows, columns):
    """(most rows per block, strip width, strips) for blocks of at most ``positions`` score rows
    with the rows carried: whole rows while ``WHOLE_ROWS`` of them fit, else near-square blocks of
    R rows by tx columns, (R + keep) * (tx + extra) <= positions (the paste's overlap with the
    next row and column, (R+1)(tx+1)/(R*tx), is then small). ``rows``/``columns``: set by the
    caller. Ints, or int64 tensors in an exported graph."""
    tensors = isinstance(positions, torch.Tensor)

    def pick(condition, a, b):
        return torch.where(condition, a, b) if tensors else (a if condition else b)

    def at_least(a, b):
        return a.clamp(min=b) if tensors else max(a, b)

    side = positions.double().sqrt().floor().long() if tensors else math.isqrt(positions)
    square_rows = at_least(side - keep, 1)
    if columns is None:
        full = positions >= (WHOLE_ROWS + keep) * w
        columns = pick(full, w, at_least(positions // (square_rows + keep) - extra, 1))
        if rows is None:
            rows = pick(full, positions // w - keep, square_rows)
    columns = pick(columns < w, columns, w)
    strips = (w + columns - 1) // columns
    width = (w + strips - 1) // strips
    if rows is None:
        rows = at_least(positions // (width + extra) - keep, 1)
    return rows, width, strips


def _outside_rows(fg, fg_full, bg_padded, inv_norm, s, x0, share: int, tx, ksize: int, fuse_k: int):
    """What the loop over blocks reads beyond its strips, for strip ``s`` starting at column
    ``x0``: ([the raster pass's reads past the row ends of rows s*share + [0, share), (N, share,
    fuse_k-1, Lb)], [the column-major pass's first-pass rows above the first and below the last
    row in the strip's columns, (N, fuse_k-1, tx, Lb), background column-major])."""
    h, w = fg.shape[1:3]
    k = ksize
    before_k, _ = _halves(k)
    before_f, _ = _halves(fuse_k)
    dev = fg.device
    edges = _edge_scores(
        fg_full, bg_padded, inv_norm, torch.arange(share, device=dev) + s * share, k, fuse_k, h, w
    )
    wrapped = []
    for slot in range(fuse_k - 1):
        # Virtual row e of the column-major order (e = -before..-1, then h..h+after-1) is row
        # e mod h of column x + floor(e / h).
        if slot < before_f:
            m = before_f - slot
            q = (m + h - 1) // h
            y, shift = q * h - m, -q
        else:
            t = slot - before_f
            y, shift = t - (t // h) * h, 1 + t // h
        row = torch.arange(1, device=dev) + y
        c0 = x0 + shift - before_f
        pixel_rows = torch.arange(k, device=dev) + (y - before_k)
        scores = _strip_scores(fg, bg_padded, inv_norm, pixel_rows, c0, tx + fuse_k - 1, k, None)
        ext = _with_edges(
            scores,
            _edge_scores(fg_full, bg_padded, inv_norm, row, k, fuse_k, h, w),
            c0,
            torch.arange(tx + fuse_k - 1, device=dev),
            fuse_k,
            w,
        )
        first = _column_major(_first_pass(ext, tx, fuse_k), h, w)
        x = torch.arange(tx, device=dev) + (x0 + shift)
        wrapped.append(first * ((x >= 0) & (x < w)).to(first.dtype).view(1, 1, -1, 1))
    return edges, torch.cat(wrapped, dim=1)


def _run_loop(body, carry: list, xs: list, constants: list) -> tuple[list, list]:
    """(final carry, stacked outputs) of ``body(*carry, *x, *constants) -> [*carry, *outputs]``
    over the rows of ``xs``: the scan operator when exporting, else the same loop in Python."""
    if torch.compiler.is_exporting():
        out = torch.ops.higher_order.scan(body, carry, xs, constants)
        return list(out[: len(carry)]), list(out[len(carry) :])
    outputs = []
    for x in zip(*xs, strict=True):
        out = body(*carry, *x, *constants)
        carry, y = list(out[: len(carry)]), out[len(carry) :]
        outputs.append(y)
    return carry, [torch.stack(parts) for parts in zip(*outputs, strict=True)]


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
    chunk_bytes: int | None = None,
    rows: int | None = None,
    columns: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(y, offsets)`` as the chunked layer returns them. f, b: (N,C,H,W) float32, H and W
    multiples of ``rate``; mask: (1 or N,1,H,W), 1 = hole, or None. y: (N,C,H,W); offsets:
    (N,2,H/rate,W/rate) int64. ``chunk_bytes``: the budget of a block's score buffer, with the
    rows it carries (None: :data:`EXPORT_CHUNK_BYTES`, or :data:`EXPORT_MIN_POSITIONS` score rows
    if more). ``rows``, ``columns``: the blocks' foreground rows and the strips' width (default:
    blocks as large as fit the budget)."""
    n, c, height, width = f.shape
    r, k = rate, ksize
    fk = fuse_k if fuse else 1
    p = prepare(f, b, mask, rate, ksize, fused=fuse)
    h, w = p.h, p.w
    lb = h * w
    before_k, after_k = _halves(k)
    before_f, after_f = _halves(fk)
    # A block with new Gram rows g + [0, R) scores rows g - after_k + [0, R) and completes the
    # fused rows from g - delay. Each strip starts `lead` rows above the image, so that what the
    # previous strip left in the carried rows reaches only rows above it (dropped), and ends a
    # row below the last fused row, so that its last overlap with the next block pastes nothing.
    delay = after_k + after_f
    lead = max(before_k, before_f - after_k)
    total = h + lead + delay + 1
    keep, extra = max(k, fk) - 1, fk - 1 + k - 1
    budget = EXPORT_CHUNK_BYTES if chunk_bytes is None else chunk_bytes
    fewest = EXPORT_MIN_POSITIONS if chunk_bytes is None else 1  # score rows per block
    if torch.compiler.is_exporting():
        # Computed as values in the graph: the exporter then reasons about a few plain sizes
        # (at least 1, covering the grid) instead of min/max/floor expressions of the input
        # size in every shape of the loop, which made the export about 1.4x slower.
        def value(x):
            return None if x is None else torch.scalar_tensor(x, dtype=torch.int64)

        positions = (value(budget) // value(n * lb * 4)).clamp(min=fewest)
        most, tx, strips = _strip_plan(positions, value(w), keep, extra, value(rows), value(columns))
        sizes = torch.stack([*_block_plan(value(total), torch.minimum(most, value(total))), tx, strips])
        rows, blocks, tx, strips = (size.item() for size in sizes)
        for size in (rows, blocks, tx, strips):
            torch._check(size >= 1)
        torch._check(rows * blocks >= total)
        torch._check(tx <= w)
        torch._check(tx * strips >= w)
    else:
        positions = max(fewest, budget // (n * lb * 4))
        most, tx, strips = _strip_plan(positions, w, keep, extra, rows, columns)
        rows, blocks = _block_plan(total, min(most, total))

    dev = f.device
    fg = p.fg.reshape(n, h, w, -1).contiguous()
    bg_padded = F.pad(p.bg.view(n, -1, h, w), (before_k, after_k, before_k, after_k)).flatten(2)
    # The loop bodies see only their arguments (the loop operator's inputs): sizes they use come
    # from their shapes; empty tensors carry the grid, the block's shape and the edge rows' share.
    grid_shape, block_shape = f.new_empty(h, w, 0), f.new_empty(rows, tx, 0)
    strip = torch.arange(strips, device=dev)
    # A strip's first column; the last strip ends at the grid's edge, overlapping the one before
    # where the columns do not divide evenly (the columns it shares are that one's).
    strip_x0 = torch.minimum(strip * tx, torch.full_like(strip, w - tx))

    if fuse and fk > 1:
        fg_full = F.pad(fg, (0, 0, before_k, after_k, before_k, after_k)).flatten(1, 2)
        share_shape = f.new_empty((h + strips - 1) // strips, 0)

        def outside(dummy, s, x0, fg, fg_full, bg_padded, inv_norm, share_shape, block_shape):
            edges, wrapped = _outside_rows(
                fg, fg_full, bg_padded, inv_norm, s, x0, share_shape.shape[0], block_shape.shape[1], k, fk
            )
            # (The loop needs a carried value. One computed from the step, not a copy, which
            # would be an Identity node, keeps the graph to the operators whose CUDA kernels the
            # fp16 export is checked against.)
            return [dummy + x0.to(dummy.dtype), edges, wrapped]

        _, (edges, wrapped) = _run_loop(
            outside,
            [f.new_zeros(1)],
            [strip, strip_x0],
            [fg, fg_full, bg_padded, p.inv_norm, share_shape, block_shape],
        )
        # edges: (strips, N, share, fk-1, Lb) -> rows (strip, image, row in the share), read by
        # index in the loop (a reshape without a copy).
        edges = edges.flatten(0, 2)
    else:
        edges = wrapped = f.new_empty(0)
        share_shape = f.new_empty(1, 0)

    # Carried between blocks: the last column-summed Gram rows, the last first-pass rows
    # (column-major, padded on the background axis), and the paste's overlap with the next block.
    carry = []
    if k > 1:
        carry.append(f.new_zeros(n, k - 1, tx + fk - 1, h + k - 1, w))
    if fuse and fk > 1:
        carry.append(f.new_zeros(n, fk - 1, tx, lb + fk - 1))
    carry.append(f.new_zeros(n, c, r, (tx + 1) * r))
    slots = len(carry)

    def block(*args):
        carried, tail = list(args[: slots - 1]), args[slots - 1]
        (
            s,
            x0,
            g,
            fg,
            bg_padded,
            inv_norm,
            valid,
            paste,
            edges,
            wrapped,
            grid_shape,
            block_shape,
            share_shape,
        ) = args[slots:]
        h, w = grid_shape.shape[:2]
        rows, tx = block_shape.shape[:2]
        n, lb = fg.shape[0], h * w
        dev = fg.device
        # (The paste reads the grid, the order and the phases.)
        q = Prepared(fg, bg_padded, inv_norm, paste, valid, h, w, p.order)
        c0 = x0 - before_f
        new = torch.arange(rows, device=dev) + g
        scores = _strip_scores(fg, bg_padded, inv_norm, new, c0, tx + fk - 1, k, carried)
        e = new - after_k  # the score rows
        if fuse:
            if fk > 1:
                # Past the row's ends (at the grid's edges only) the raster pass reads the
                # neighbouring rows' positions.
                share = share_shape.shape[0]
                y = e.clamp(0, h - 1)
                at = (y // share) * (n * share) + y - (y // share) * share
                at = (at.view(1, -1) + torch.arange(n, device=dev).view(-1, 1) * share).flatten()
                row_edges = edges.index_select(0, at).view(n, rows, fk - 1, lb)
                ends = [
                    _with_edges(scores, row_edges, c0, torch.arange(before_f, device=dev), fk, w),
                    scores[:, :, before_f : before_f + tx],
                    _with_edges(
                        scores, row_edges, c0, torch.arange(after_f, device=dev) + before_f + tx, fk, w
                    ),
                ]
                scores = _first_pass(torch.cat(ends, dim=2), tx, fk)
            scores = _column_major(scores, h, w)
            if fk > 1:
                # Rows outside the image are the wrapped rows of the column-major order (rows
                # further out reach only fused rows outside the image).
                slot = torch.where(e < 0, e + before_f, e - h + before_f).clamp(0, fk - 2)
                around = wrapped.index_select(0, s).view(n, fk - 1, tx, lb).index_select(1, slot)
                scores = torch.where(((e >= 0) & (e < h)).view(1, -1, 1, 1), scores, around)
            window = _slide(F.pad(scores, (before_f, after_f)), fk - 1, carried)
            scores = window[:, 0:rows, :, 0:lb]
            for a in range(1, fk):
                scores = scores + window[:, a : a + rows, :, a : a + lb]
        scores = scores.reshape(n, rows * tx, lb)
        o = torch.arange(rows, device=dev) + (g - delay)  # the fused rows
        x = torch.arange(tx, device=dev) + x0
        # Pipeline rows and the columns the strip before owns paste nothing.
        real = ((o >= 0) & (o < h)).view(-1, 1) & (x >= s * tx).view(1, -1)
        # Official masked softmax: invalid scores zeroed (still in the denominator), then the
        # attention of invalid patches zeroed again.
        attn = torch.softmax(scores * (valid * softmax_scale), dim=-1) * valid
        index = torch.argmax(attn, dim=-1).view(n, rows, tx)  # first index of the largest, as max()
        # (x // m, x - (x // m) * m): the exporter has no remainder by a symbolic size.
        if q.order == "column":
            src_col = index // h
            src_row = index - src_col * h
        else:
            src_row = index // w
            src_col = index - src_row * w
        offsets = torch.stack([src_row - o.view(-1, 1), src_col - x.view(1, -1)], dim=1)
        # Weights below 2^-64 zeroed before the paste (see ContextualAttention._attend): as a
        # threshold, which the exporter writes as one ThresholdedRelu (7x faster in onnxruntime
        # than a Where).
        attn = F.threshold(attn, NEGLIGIBLE_WEIGHT, 0.0) * real.to(attn.dtype).view(1, -1, 1)
        piece = _paste(q, attn, rows, tx, r)
        # Placed where the strip would start were the columns even (the last strip's own
        # columns come first): pieces then sit tx columns apart.
        d = s * tx - x0
        cols = torch.arange((tx + 1) * r, device=dev) + d * r
        within = (cols < (tx + 1) * r).to(piece.dtype)  # zero where shifted in from past the end
        piece = piece.index_select(3, cols.clamp(max=(tx + 1) * r - 1)) * within
        offsets = offsets.index_select(3, (torch.arange(tx, device=dev) + d).clamp(max=tx - 1))
        # The piece's last `rate` canvas rows overlap the next block's first ones.
        head = piece[:, :, 0:r] + tail
        body = torch.cat([head, piece[:, :, r : rows * r]], dim=2)
        tail = piece[:, :, rows * r : (rows + 1) * r].clone(memory_format=torch.contiguous_format)
        return [*carried, tail, body, offsets]

    step = torch.arange(strips * blocks, device=dev)
    s = torch.div(step, blocks, rounding_mode="floor")
    g = (step - s * blocks) * rows - lead
    _, (bodies, offsets) = _run_loop(
        block,
        carry,
        [s, strip_x0.index_select(0, s), g],
        [fg, bg_padded, p.inv_norm, p.valid, p.paste, edges, wrapped, grid_shape, block_shape, share_shape],
    )
    # (strips*blocks, N, C, rows*r, (tx+1)*r) -> (N, C, blocks*rows*r, strips, (tx+1)*r); a
    # piece's last `rate` columns go to the next strip's first ones.
    pieces = bodies.view(strips, blocks, n, c, rows * r, (tx + 1) * r).permute(2, 3, 1, 4, 0, 5)
    pieces = pieces.reshape(n, c, blocks * rows * r, strips, (tx + 1) * r)
    main = pieces[..., 0 : tx * r].reshape(n, c, blocks * rows * r, strips * tx * r)
    right = F.pad(pieces[..., tx * r :], (0, tx * r - r)).reshape(n, c, blocks * rows * r, strips * tx * r)
    canvas = F.pad(main, (0, tx * r)) + F.pad(right, (tx * r, 0))
    # The canvas starts `lead + delay` foreground rows above the image.
    top, _ = tf_same_padding(height, 2 * r, r)
    left, _ = tf_same_padding(width, 2 * r, r)
    top += (lead + delay) * r
    y = canvas[:, :, top : top + height, left : left + width] / 4.0
    offsets = offsets.view(strips, blocks, n, 2, rows, tx).permute(2, 3, 1, 4, 0, 5)
    offsets = offsets.reshape(n, 2, blocks * rows, strips * tx)
    return y, offsets[:, :, lead + delay : lead + delay + h, 0:w].contiguous()
