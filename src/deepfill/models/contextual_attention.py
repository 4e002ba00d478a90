"""Contextual attention (Yu et al. 2018, section 4): fill a hole by copying background patches.

For every foreground position the layer scores all background patches by cosine similarity,
propagates the scores along both image axes ("fuse"), takes a masked softmax and pastes the
full-resolution background patches weighted by it. This implementation computes exactly the
official function (TF 'SAME' patch padding, align-corners nearest resizes, eye-kernel fuse,
masked softmax with zeros, conv-transpose paste / 4) with three differences of engineering:

* the whole batch at once (batched matrix products, no Python loop over samples);
* an ``(N,1,H,W)`` mask gives each sample its own hole (the official code takes sample 0's);
* foreground rows are processed in chunks, so peak memory is O(chunk x L) instead of O(L^2).

The fuse step of the official code convolves the score matrix ``[fh*fw, bh*bw]`` with an
identity kernel, first in raster order of both axes, then in column-major order. On the
flattened axes that is a sum of diagonal shifts with zero fill, which is what is done here
(``_ShiftSum``); the column-major pass reads its neighbours across column boundaries exactly
like the official flattened convolution does.
"""

from __future__ import annotations

import math
from contextlib import nullcontext

import torch
import torch.nn.functional as F
from torch import nn

from ..utils.cpu import large_blocks_returned
from .attention_export import attend_export
from .attention_patches import NEGLIGIBLE_WEIGHT, Prepared, prepare, validate_attention_inputs
from .layers import sum_into, tf_same_padding

__all__ = ["CPU_CHUNK_BYTES_REUSED", "DEFAULT_CHUNK_BYTES", "ContextualAttention", "set_cpu_chunk_bytes"]

# Score-matrix budget per chunk when none is given (about 5 such buffers are alive per chunk).
# CPU: 16 MiB under glibc's default allocator, which unmaps every freed block over 32 MiB, so
# that larger chunks page-fault through fresh memory every time (1024²: 10.2 s vs 14.5 s with
# 256 MiB); 64 MiB once the commands keep freed memory for reuse
# (deepfill.utils.cpu.reuse_freed_memory): 1024² attention 4.7 s -> 3.7 s, 512² level
# (BENCHMARKS.md). GPU: a GPU step is launch-bound at this model's size, and a 16 MiB budget
# cuts a 256x256 batch of 16 into 64 chunks of a dozen kernels each; 256 MiB makes 4. Training
# keeps every chunk's scores for the backward anyway, so on a GPU the budget only bounds
# inference memory. Not yet measured on a GPU.
DEFAULT_CHUNK_BYTES = {"cpu": 16 * 2**20, "cuda": 256 * 2**20}
CPU_CHUNK_BYTES_REUSED = 64 * 2**20


def _flat_shift(shift: int, length: int) -> tuple[slice, slice] | None:
    """(destination, source) slices of ``out[..., j] += src[..., j + shift]`` with zero fill."""
    if abs(shift) >= length:
        return None
    if shift >= 0:
        return slice(0, length - shift), slice(shift, length)
    return slice(-shift, length), slice(0, length + shift)


class _ShiftSum(torch.autograd.Function):
    """``out[dst_k] += inputs[i_k][src_k]`` over all terms k, zeros elsewhere.

    Every step of the fuse and of the paste is a sum of shifted slices. As a plain autograd
    graph each slice costs a full-size zero-fill and copy in the backward pass; this linear map
    accumulates its adjoint in place instead and saves nothing for backward.
    """

    @staticmethod
    def forward(ctx, shape, terms, *inputs):
        out = sum_into(inputs[0].new_empty(shape), [(dst, inputs[i][src]) for i, dst, src in terms])
        ctx.terms = terms
        ctx.input_shapes = [x.shape for x in inputs]
        return out

    @staticmethod
    def backward(ctx, grad):
        needed = ctx.needs_input_grad[2:]
        grads = [
            sum_into(grad.new_empty(shape), [(src, grad[dst]) for j, dst, src in ctx.terms if j == i])
            if need
            else None
            for i, (shape, need) in enumerate(zip(ctx.input_shapes, needed, strict=True))
        ]
        return (None, None, *grads)


def _shift_sum(shape: tuple[int, ...], terms: list, *inputs: torch.Tensor) -> torch.Tensor:
    return _ShiftSum.apply(shape, terms, *inputs)


def _at_least_float32(x: torch.Tensor) -> torch.Tensor:
    return x if x.dtype in (torch.float32, torch.float64) else x.float()


class ContextualAttention(nn.Module):
    """Contextual attention layer.

    Args:
        ksize: matching patch size (on the 1/rate grid).
        stride: patch stride; the official fuse only supports 1.
        rate: dilation: matching happens on features downscaled by ``rate``, pasting uses
            ``2*rate`` patches of the full-resolution background.
        fuse_k: size of the identity kernel of attention propagation.
        softmax_scale: temperature of the softmax over background patches (10 in the paper).
        fuse: enable attention propagation.
        chunk_size: foreground positions per chunk (rounded to whole rows); ``None`` picks it
            from ``chunk_bytes``. Smaller chunks bound memory, results do not change.
        chunk_bytes: memory budget of one chunk's score matrix when ``chunk_size`` is None;
            ``None``: by device, 16 MiB on a CPU, 256 MiB on a GPU (``DEFAULT_CHUNK_BYTES``);
            the CPU's default is changed with :func:`set_cpu_chunk_bytes`.

    ``forward(f, b, mask) -> (y, offsets)``:
        f, b: (N,C,H,W) foreground and background features (the generator passes the same
        tensor twice), H and W divisible by ``rate``. mask: (1 or N,1,H,W), 1 = hole, or None.
        y: (N,C,H,W). offsets: (N,2,H/rate,W/rate) int64, (dy, dx) from each position to the
        background patch with the largest attention, on the 1/rate grid;
        :func:`flow_to_image` colours them.
    """

    def __init__(
        self,
        ksize: int = 3,
        stride: int = 1,
        rate: int = 2,
        fuse_k: int = 3,
        softmax_scale: float = 10.0,
        fuse: bool = True,
        chunk_size: int | None = None,
        chunk_bytes: int | None = None,
    ) -> None:
        super().__init__()
        for name, value in (("ksize", ksize), ("rate", rate), ("fuse_k", fuse_k)):
            if int(value) != value or value < 1:
                raise ValueError(f"attention.{name} must be a positive integer, got {value!r}")
        if stride != 1:
            raise ValueError(f"attention.stride must be 1 (the official fuse assumes it), got {stride!r}")
        if softmax_scale <= 0:
            raise ValueError(f"attention.softmax_scale must be > 0, got {softmax_scale!r}")
        if chunk_size is not None and chunk_size < 1:
            raise ValueError(f"attention.chunk_size must be >= 1 or None, got {chunk_size!r}")
        if chunk_bytes is not None and chunk_bytes < 1:
            raise ValueError(f"attention.chunk_bytes must be >= 1 or None, got {chunk_bytes!r}")
        self.ksize = int(ksize)
        self.stride = 1
        self.rate = int(rate)
        self.fuse_k = int(fuse_k)
        self.softmax_scale = float(softmax_scale)
        self.fuse = bool(fuse)
        self.chunk_size = chunk_size
        self.chunk_bytes = None if chunk_bytes is None else int(chunk_bytes)
        # The CPU budget when chunk_bytes is None; what the process's allocator favours, so set
        # by the program (set_cpu_chunk_bytes), not by the model's configuration.
        self.cpu_chunk_bytes = DEFAULT_CHUNK_BYTES["cpu"]
        # The block budget of the exported (ONNX) form, set by the exporter (None: its default).
        self.export_chunk_bytes: int | None = None

    def extra_repr(self) -> str:
        return (
            f"ksize={self.ksize}, rate={self.rate}, fuse_k={self.fuse_k}, "
            f"softmax_scale={self.softmax_scale}, fuse={self.fuse}, chunk_size={self.chunk_size}"
        )

    def _paste(self, p: Prepared, attn: torch.Tensor, rows: int) -> torch.Tensor:
        """Paste background for ``rows`` foreground rows: (N, C, (rows+1)*r, (w+1)*r) canvas strip."""
        n, h, w, r = attn.shape[0], p.h, p.w, self.rate
        if p.order == "column":
            grid = attn.view(n, rows, w, w, h)
            shape = (n, rows + 1, w + 1, w + 1, h + 1)
        else:
            grid = attn.view(n, rows, w, h, w)
            shape = (n, rows + 1, w + 1, h + 1, w + 1)
        # A' = sum over s in {0,1}^2 of attn shifted by s on both grids (zero where shifted out).
        terms = []
        for sy, sx in ((0, 0), (0, 1), (1, 0), (1, 1)):
            fg = (slice(None), slice(sy, sy + rows), slice(sx, sx + w))
            bg = (
                (slice(sx, sx + w), slice(sy, sy + h))
                if p.order == "column"
                else (slice(sy, sy + h), slice(sx, sx + w))
            )
            terms.append((0, fg + bg, (slice(None),)))
        shifted = _shift_sum(shape, terms, grid)
        shifted = shifted.view(n, (rows + 1) * (w + 1), (h + 1) * (w + 1))
        out = torch.bmm(shifted.to(p.paste.dtype), p.paste)  # (N, (rows+1)*(w+1), C*r*r)
        c = out.shape[-1] // (r * r)
        out = out.view(n, rows + 1, w + 1, c, r, r).permute(0, 3, 1, 4, 2, 5)
        return out.reshape(n, c, (rows + 1) * r, (w + 1) * r)

    def _rows_per_chunk(
        self, n: int, h: int, w: int, itemsize: int, device: torch.device
    ) -> tuple[int, bool]:
        """(foreground rows per chunk, whether one row's scores exceed the byte budget)."""
        if self.chunk_size is not None:
            return max(1, min(h, math.ceil(self.chunk_size / w))), False
        budget = self.chunk_bytes
        if budget is None:
            budget = self.cpu_chunk_bytes if device.type == "cpu" else DEFAULT_CHUNK_BYTES["cuda"]
        row_bytes = n * w * (h * w) * itemsize
        return max(1, min(h, budget // max(row_bytes, 1))), row_bytes > budget

    # ------------------------------------------------------------------ scores
    def _scores(self, p: Prepared, start: int, stop: int) -> torch.Tensor:
        """Cosine scores of foreground raster positions [start, stop): (N, stop-start, Lb).

        The score of foreground patch p and background patch q is
        sum_u <f(p+u), b(q+u)> / ||patch(q)|| over the k x k offsets u, pixels outside the image
        being zero. So it is a sum of k*k shifted copies of the pixel Gram matrix F^T B, which
        costs k^2 times fewer multiply-adds than multiplying the unfolded patch matrices.
        """
        n, h, w, k = p.fg.shape[0], p.h, p.w, self.ksize
        before = (k - 1) // 2  # TF 'SAME' padding before, stride 1
        row_lo, row_hi = start // w, -(-stop // w)  # whole rows covering [start, stop)
        g_lo = max(row_lo - before, 0)
        g_hi = min(row_hi + k - 1 - before, h)
        gram = torch.bmm(p.fg[:, g_lo * w : g_hi * w], p.bg).view(n, g_hi - g_lo, w, h, w)
        rows = row_hi - row_lo
        all_ = slice(None)
        # The offsets' bounds factor into a column part and a row part, so the k*k shifted sum
        # is separable: k column shifts, then k row shifts (2k terms instead of k*k).
        terms = []
        for ux in range(-before, k - before):
            x = slice(max(0, -ux), min(w, w - ux))
            if x.start < x.stop:
                x_src = slice(x.start + ux, x.stop + ux)
                terms.append((0, (all_, all_, x, all_, x), (all_, all_, x_src, all_, x_src)))
        by_columns = _shift_sum(gram.shape, terms, gram)
        del gram  # one score-sized buffer fewer at the peak
        terms = []
        for uy in range(-before, k - before):
            y_lo, y_hi = max(row_lo, -uy), min(row_hi, h - uy)  # output rows with row + uy inside
            qy = slice(max(0, -uy), min(h, h - uy))
            if y_lo >= y_hi or qy.start >= qy.stop:
                continue
            qy_src = slice(qy.start + uy, qy.stop + uy)
            dst = (all_, slice(y_lo - row_lo, y_hi - row_lo), all_, qy)
            src = (all_, slice(y_lo + uy - g_lo, y_hi + uy - g_lo), all_, qy_src)
            terms.append((0, dst, src))
        scores = _shift_sum((n, rows, w, h, w), terms, by_columns).view(n, rows * w, h * w)
        # Per background patch: 1 / its norm (in place when no gradient is needed).
        scores = scores * p.inv_norm if scores.requires_grad else scores.mul_(p.inv_norm)
        offset = start - row_lo * w
        return scores[:, offset : offset + stop - start]

    def _fuse_raster(self, p: Prepared, row_lo: int, row_hi: int) -> torch.Tensor:
        """First fuse pass (raster order) for foreground rows [row_lo, row_hi): (N, rows*w, Lb)."""
        k, before = self.fuse_k, (self.fuse_k - 1) // 2
        total = p.h * p.w
        lo, hi = row_lo * p.w, row_hi * p.w
        s_lo, s_hi = max(lo - before, 0), min(hi + k - 1 - before, total)
        scores = self._scores(p, s_lo, s_hi)
        lb = scores.shape[-1]
        terms = []
        for a in range(k):
            d = a - before
            # out[i] += scores[i + d] (both axes shifted by d), rows present only where i + d is.
            i_lo, i_hi = max(lo, s_lo - d), min(hi, s_hi - d)
            cols = _flat_shift(d, lb)
            if i_lo < i_hi and cols is not None:
                dst = (slice(None), slice(i_lo - lo, i_hi - lo), cols[0])
                src = (slice(None), slice(i_lo + d - s_lo, i_hi + d - s_lo), cols[1])
                terms.append((0, dst, src))
        return _shift_sum((scores.shape[0], hi - lo, lb), terms, scores)

    def _fused_chunk(self, p: Prepared, r0: int, r1: int, cache: list) -> torch.Tensor:
        """Fused scores of foreground rows [r0, r1), background axis column-major: (N, rows*w, Lb)."""
        n, h, w = p.fg.shape[0], p.h, p.w
        k, before = self.fuse_k, (self.fuse_k - 1) // 2
        lb = h * w
        # Column-major neighbour of (row, col) at distance d is (row+d, col) when it stays in the
        # column, else it continues in the next/previous column: extended row e maps to row
        # e mod h of column col + e // h.
        e_lo, e_hi = r0 - before, r1 + k - 1 - before
        blocks, terms = [], []
        all_ = slice(None)
        e = e_lo
        while e < e_hi:
            shift = e // h
            seg_hi = min(e_hi, (shift + 1) * h)
            src_lo = e - shift * h
            for part_lo, part in self._cached_rows(p, src_lo, seg_hi - shift * h, cache):
                rows_in = part.shape[1] // w
                blocks.append(part.view(n, rows_in, w, h, w).transpose(-1, -2))  # raster -> column bg
                start = part_lo + shift * h - e_lo
                cols = _flat_shift(shift, w)  # extended[e, col] = P[row, col + shift]
                if cols is not None:
                    dst = (all_, slice(start, start + rows_in), cols[0])
                    terms.append((len(blocks) - 1, dst, (all_, all_, cols[1])))
            e = seg_hi
        extended = _shift_sum((n, e_hi - e_lo, w, w, h), terms, *blocks).view(n, e_hi - e_lo, w, lb)
        rows = r1 - r0
        terms = []
        for a in range(k):
            bg = _flat_shift(a - before, lb)
            if bg is not None:
                terms.append((0, (all_, all_, all_, bg[0]), (all_, slice(a, a + rows), all_, bg[1])))
        return _shift_sum((n, rows, w, lb), terms, extended).view(n, rows * w, lb)

    def _cached_rows(self, p: Prepared, lo: int, hi: int, cache: list) -> list[tuple[int, torch.Tensor]]:
        """First-pass rows [lo, hi) as (first row, (N, rows*w, Lb)) pieces, reusing earlier chunks'."""
        parts = []
        cur = lo
        for c_lo, c_hi, block in sorted(cache, key=lambda item: item[0]):
            if c_lo <= cur < c_hi:
                stop = min(hi, c_hi)
                parts.append((cur, block[:, (cur - c_lo) * p.w : (stop - c_lo) * p.w]))
                cur = stop
            if cur >= hi:
                break
        if cur < hi:
            fresh = self._fuse_raster(p, cur, hi)
            cache.append((cur, hi, fresh))
            parts.append((cur, fresh))
        return parts

    # ------------------------------------------------------------------ forward
    def forward(
        self, f: torch.Tensor, b: torch.Tensor, mask: torch.Tensor | None = None, check_mask: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor]:
        # check_mask=False skips reading the mask's values back (a host sync on GPUs) for masks
        # that are binary by construction, as the generator's.
        validate_attention_inputs(f, b, mask, self.rate, check_mask)
        # Float32 also inside a bf16 autocast region: the Gram scores and the softmax compare
        # thousands of patches, and in bf16 about a fifth of the chosen offsets in a hole change
        # (measured with the official weights). Only the paste product (attention weights times
        # background pixels, accumulated in float32) then takes bf16 operands: its result goes
        # into the next bf16 convolution, which rounds it to bf16 anyway.
        device = f.device.type
        paste_dtype = None
        if torch.is_autocast_enabled(device) and torch.get_autocast_dtype(device) == torch.bfloat16:
            paste_dtype = torch.bfloat16
        with torch.autocast(device_type=device, enabled=False):
            wide = [None if x is None else _at_least_float32(x) for x in (f, b, mask)]
            y, offsets = (
                attend_export(
                    *wide,
                    rate=self.rate,
                    ksize=self.ksize,
                    fuse_k=self.fuse_k,
                    softmax_scale=self.softmax_scale,
                    fuse=self.fuse,
                    chunk_bytes=self.export_chunk_bytes,
                )
                if torch.compiler.is_exporting()
                else self._attend(*wide, paste_dtype=paste_dtype)
            )
        # A half-precision model (no autocast) goes on in its own precision.
        return (y if paste_dtype is not None else y.to(f.dtype)), offsets

    def _attend(
        self,
        f: torch.Tensor,
        b: torch.Tensor,
        mask: torch.Tensor | None,
        paste_dtype: torch.dtype | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        n, c, height, width = f.shape
        r = self.rate
        p = prepare(f, b, mask, self.rate, self.ksize, self.fuse, paste_dtype)
        h, w = p.h, p.w
        rows_per_chunk, oversized = self._rows_per_chunk(n, h, w, f.element_size(), f.device)
        # A chunk is at least one row, whose scores grow with the cube of the side (64 MiB at
        # 256x256 here, 512 MiB at 512x512). Blocks that large fragment the heap that the commands
        # keep for reuse (a 4096² image grew it past 24 GB): on a CPU they get their own mappings
        # while the loop runs (10.8 GiB; 1.8x slower there, BENCHMARKS.md).
        returned = large_blocks_returned() if oversized and f.device.type == "cpu" else nullcontext()
        # Pasted patches are summed on a padded canvas, then cropped like TF's 'SAME' transpose.
        canvas = f.new_zeros(n, c, (h - 1) * r + 2 * r, (w - 1) * r + 2 * r)
        offsets = torch.empty(n, 2, h * w, dtype=torch.long, device=f.device)
        cache: list = []
        grad = torch.is_grad_enabled() and (f.requires_grad or b.requires_grad)
        with returned:
            for r0 in range(0, h, rows_per_chunk):
                self._attend_chunk(p, r0, min(h, r0 + rows_per_chunk), cache, grad, canvas, offsets)
        top, _ = tf_same_padding(height, 2 * r, r)
        left, _ = tf_same_padding(width, 2 * r, r)
        y = canvas[:, :, top : top + height, left : left + width] / 4.0
        return y, offsets.view(n, 2, h, w)

    def _attend_chunk(
        self,
        p: Prepared,
        r0: int,
        r1: int,
        cache: list,
        grad: bool,
        canvas: torch.Tensor,
        offsets: torch.Tensor,
    ) -> None:
        """Foreground rows [r0, r1): their offsets into ``offsets`` (N, 2, h*w) and their pasted
        patches added onto ``canvas`` (N, C, (h+1)*rate, (w+1)*rate)."""
        h, w, r = p.h, p.w, self.rate
        if self.fuse:
            scores = self._fused_chunk(p, r0, r1, cache)
            # Rows below r0 (minus the fuse halo) are never needed again.
            keep_from = r1 - (self.fuse_k - 1) // 2
            cache[:] = [item for item in cache if item[1] > keep_from]
        else:
            scores = self._scores(p, r0 * w, r1 * w)
        # Official masked softmax: invalid scores are zeroed (they stay in the denominator),
        # then the attention of invalid patches is zeroed again.
        if grad:
            attn = torch.softmax(scores * (p.valid * self.softmax_scale), dim=-1) * p.valid
        else:  # the chunk's buffers are ours: work in place
            attn = torch.softmax(scores.mul_(p.valid * self.softmax_scale), dim=-1).mul_(p.valid)
        # (N, rows*w), background index in `order`. max() gives the same first index of
        # the largest value as argmax() and on CPUs is about 4x faster (vectorised).
        index = attn.max(dim=-1).indices
        if p.order == "column":
            src_row, src_col = index % h, index // h
        else:
            src_row, src_col = index // w, index % w
        pos = torch.arange(r0 * w, r1 * w, device=offsets.device)
        offsets[:, 0, r0 * w : r1 * w] = src_row - pos // w
        offsets[:, 1, r0 * w : r1 * w] = src_col - pos % w
        # Weights below 2^-64 are zeroed before the paste. Where every known patch scores
        # far below the (zeroed) hole scores, the softmax leaves the known patches weights
        # in or near float32's subnormal range, and their paste too; subnormal operands make
        # x86 CPUs several times slower unless the process flushes them, as the commands do
        # and a user's script does not (generator at 256^2: 1.4x). A weight above 2^-64
        # times a feature above 2^-62 stays normal, and the zeroed weights of a row sum to
        # at most (h*w) * 2^-64 (2^-48 at 1024^2), below float32 rounding of any row with a
        # weight above 2^-24. The offsets above still come from the unchanged weights. In
        # place also with autograd (attn is a fresh product): no second score-sized tensor
        # kept for the backward.
        F.threshold_(attn, NEGLIGIBLE_WEIGHT, 0.0)
        strip = self._paste(p, attn, r1 - r0)
        canvas[:, :, r0 * r : r0 * r + strip.shape[-2]] += strip


def set_cpu_chunk_bytes(module: nn.Module, chunk_bytes: int | None) -> nn.Module:
    """Give every contextual attention layer in ``module`` the CPU chunk budget ``chunk_bytes``
    (``None``: the default, 16 MiB), used where the layer's own ``chunk_bytes`` is not set. A
    program that keeps freed memory for reuse (:func:`deepfill.utils.cpu.configure_cpu`)
    passes :data:`CPU_CHUNK_BYTES_REUSED`. Returns ``module``."""
    for layer in module.modules():
        if isinstance(layer, ContextualAttention):
            layer.cpu_chunk_bytes = DEFAULT_CHUNK_BYTES["cpu"] if chunk_bytes is None else int(chunk_bytes)
    return module
