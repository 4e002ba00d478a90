"""Building blocks shared by the generator, the critics and contextual attention.

The official model was written in TensorFlow 1: every convolution uses ``padding='SAME'`` and
every resize is ``resize_nearest_neighbor(..., align_corners=True)``. Both differ from the
PyTorch defaults, and both must be reproduced exactly for official weights to give official
outputs, so they live here once.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

PaddingMode = Literal["tf_same", "symmetric"]
InitScheme = Literal["glorot_uniform", "pytorch"]


def initialize_(module: nn.Module, scheme: InitScheme = "glorot_uniform") -> nn.Module:
    """Initialise every convolution and dense layer of ``module`` in place; returns it.

    ``"glorot_uniform"`` is the official one (TF ``tf.layers`` defaults): kernels uniform in
    ``+-sqrt(6 / (fan_in + fan_out))`` with fans counting the kernel's spatial size, biases 0.
    ``"pytorch"`` keeps PyTorch's defaults (Kaiming-uniform with ``a=sqrt(5)``, uniform biases:
    about 0.58x the spread, non-zero biases).
    """
    if scheme not in ("glorot_uniform", "pytorch"):
        raise ValueError(f"init must be 'glorot_uniform' or 'pytorch', got {scheme!r}")
    if scheme == "glorot_uniform":
        for layer in module.modules():
            if isinstance(layer, nn.Conv2d | nn.Linear):
                nn.init.xavier_uniform_(layer.weight)
                if layer.bias is not None:
                    nn.init.zeros_(layer.bias)
    return module


def tf_same_padding(size: int, kernel: int, stride: int = 1, dilation: int = 1) -> tuple[int, int]:
    """Padding (before, after) that TensorFlow's ``'SAME'`` adds along one axis.

    TF puts the odd extra pixel at the end (bottom/right), unlike a symmetric PyTorch pad.
    """
    effective = (kernel - 1) * dilation + 1
    if stride > 1 and _exporting():
        # Traced for every size at once: the exported graph takes sizes that are multiples of
        # the generator's (4 x the attention rate), so each strided layer sees a multiple of its
        # stride, and its padding is a constant. The general formula below (a max of a ceil)
        # would make every later size an expression the exporter's shape reasoning needs
        # minutes for; the assumption is checked by the graph itself.
        torch._check(size % stride == 0)
        total = max(effective - stride, 0)
        return total // 2, total - total // 2
    out = -(-size // stride)  # ceil in integers: also for a graph exporter's symbolic sizes
    total = max((out - 1) * stride + effective - size, 0)
    return total // 2, total - total // 2


def pad_same(x: torch.Tensor, kernel: int, stride: int = 1, dilation: int = 1) -> torch.Tensor:
    """Zero-pad ``x: (N,C,H,W)`` exactly as TF ``'SAME'`` would before a convolution."""
    top, bottom = tf_same_padding(x.shape[-2], kernel, stride, dilation)
    left, right = tf_same_padding(x.shape[-1], kernel, stride, dilation)
    if top == bottom == left == right == 0:
        return x
    return F.pad(x, (left, right, top, bottom))


def _box(index: tuple, shape: tuple[int, ...]) -> list[tuple[int, int]]:
    """(start, stop) per axis of a basic-slicing index (unit steps) into ``shape``."""
    box = []
    for axis, size in enumerate(shape):
        part = index[axis] if axis < len(index) else slice(None)
        if part.step not in (None, 1):
            raise ValueError("sum_into takes unit-step slices only")
        # slice.indices by hand: torch.compile traces this, not slice.indices.
        start = _clip_bound(part.start, size, 0)
        stop = _clip_bound(part.stop, size, size)
        box.append((start, max(start, stop)))
    return box


def _volume(box: list[tuple[int, int]]) -> int:
    volume = 1
    for start, stop in box:  # a loop: torch.compile does not trace math.prod over a generator
        volume *= stop - start
    return volume


def _clip_bound(bound: int | None, size: int, default: int) -> int:
    if bound is None:
        return default
    return min(max(bound + size if bound < 0 else bound, 0), size)


def _slabs(outer: list[tuple[int, int]], inner: list[tuple[int, int]]) -> list[list[tuple[int, int]]]:
    """Disjoint boxes that cover box ``outer`` minus box ``inner`` (``inner`` inside ``outer``)."""
    slabs = []
    for axis, ((o_lo, o_hi), (i_lo, i_hi)) in enumerate(zip(outer, inner, strict=True)):
        for lo, hi in ((o_lo, i_lo), (i_hi, o_hi)):
            if lo < hi:
                slabs.append([*inner[:axis], (lo, hi), *outer[axis + 1 :]])
    return slabs


def _index(box: list[tuple[int, int]], origin: list[tuple[int, int]] | None = None) -> tuple:
    """Slicing index of ``box``, relative to the start of box ``origin`` when given."""
    if origin is None:
        return tuple(slice(lo, hi) for lo, hi in box)
    return tuple(slice(lo - o, hi - o) for (lo, hi), (o, _) in zip(box, origin, strict=True))


def sum_into(out: torch.Tensor, pieces: list) -> torch.Tensor:
    """Fill ``out`` (uninitialised) with zeros plus every ``(index, value)`` piece added at
    ``out[index]`` (basic unit-step slicing); returns ``out``.

    The two largest pieces are added straight into ``out`` where they overlap (one pass that
    reads both and writes once, where a copy then an add makes two); the rest of their boxes is
    copied or added, and only what no piece covers is zeroed.
    """
    shape = tuple(out.shape)
    if not pieces:
        return out.zero_()
    boxes = [_box(index, shape) for index, _ in pieces]
    volumes = [_volume(box) for box in boxes]
    order = sorted(range(len(pieces)), key=volumes.__getitem__, reverse=True)
    first = order[0]
    whole = [(0, size) for size in shape]
    for slab in _slabs(whole, boxes[first]):
        out[_index(slab)].zero_()
    value = pieces[first][1]
    rest = order[1:]
    # add(out=) is not differentiable: pieces that need gradients (a double backward through a
    # caller's adjoint) take the copy-then-add path.
    tracked = torch.is_grad_enabled() and any(piece.requires_grad for _, piece in pieces)
    # torch.compile takes no out= view either; its fused kernels make the one pass anyway.
    if rest and not tracked and not torch.compiler.is_compiling():
        second = rest.pop(0)
        both = [(max(a, c), min(b, d)) for (a, b), (c, d) in zip(boxes[first], boxes[second], strict=True)]
        if all(lo < hi for lo, hi in both):
            torch.add(
                value[_index(both, boxes[first])],
                pieces[second][1][_index(both, boxes[second])],
                out=out[_index(both)],
            )
            for slab in _slabs(boxes[first], both):
                out[_index(slab)].copy_(value[_index(slab, boxes[first])])
            for slab in _slabs(boxes[second], both):
                out[_index(slab)] += pieces[second][1][_index(slab, boxes[second])]
        else:
            out[_index(boxes[first])].copy_(value)
            rest.insert(0, second)
    else:
        out[_index(boxes[first])].copy_(value)
    for k in rest:
        out[pieces[k][0]] += pieces[k][1]
    return out


def _exporting() -> bool:
    """Whether a graph exporter (``torch.export``, hence ONNX) is tracing: layers then take
    their plain formulation, valid at any input size, instead of the CPU-tuned one."""
    return torch.compiler.is_exporting()


def _is_channels_last(x: torch.Tensor) -> bool:
    return x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)


def _empty_in_layout_of(x: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """Uninitialised ``shape`` tensor of ``x``'s dtype and device, channels_last if ``x`` is."""
    layout = torch.channels_last if _is_channels_last(x) else torch.contiguous_format
    return torch.empty(shape, dtype=x.dtype, device=x.device, memory_format=layout)


def pad_zeros(x: torch.Tensor, pad: tuple[int, int, int, int]) -> torch.Tensor:
    """``F.pad(x, pad)`` (zeros; ``pad = (left, right, top, bottom) >= 0``) in the layout of ``x``.

    Without autograd the result is written once: ``F.pad`` fills the whole output with zeros
    before copying ``x`` in, a second pass over memory that only the border needs.
    """
    if (x.requires_grad and torch.is_grad_enabled()) or x.dim() != 4 or min(pad) < 0 or _exporting():
        return F.pad(x, pad)
    left, right, top, bottom = pad
    n, c, height, width = x.shape
    out = _empty_in_layout_of(x, (n, c, top + height + bottom, left + width + right))
    inside = (slice(None), slice(None), slice(top, top + height), slice(left, left + width))
    return sum_into(out, [(inside, x)])


class SameConv2d(nn.Conv2d):
    """``nn.Conv2d`` with TF ``'SAME'`` padding computed from the input size.

    When the padding is symmetric (every stride-1 layer) it is passed to the convolution itself,
    so no padded copy of the input is made; only the asymmetric case (stride 2 on even sizes)
    pads explicitly. ``same="symmetric"`` (the generator's ``padding``) gives the plain PyTorch layout instead
    (``(k-1)*d//2`` on both sides), which is what a model trained from scratch may prefer.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        dilation: int = 1,
        bias: bool = True,
        same: PaddingMode = "tf_same",
    ) -> None:
        super().__init__(
            in_channels, out_channels, kernel_size, stride=stride, padding=0, dilation=dilation, bias=bias
        )
        if same not in ("tf_same", "symmetric"):
            raise ValueError(f"padding mode must be 'tf_same' or 'symmetric', got {same!r}")
        self.same = same

    def _padding(self, height: int, width: int) -> tuple[int, int, int, int]:
        k, s, d = self.kernel_size[0], self.stride[0], self.dilation[0]
        if self.same == "symmetric":
            p = (k - 1) * d // 2
            return p, p, p, p
        top, bottom = tf_same_padding(height, k, s, d)
        left, right = tf_same_padding(width, k, s, d)
        return top, bottom, left, right

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.convolve(x, self.weight)

    def convolve(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """The layer's convolution of ``x`` with ``weight`` in place of its own (same shape)."""
        top, bottom, left, right = self._padding(x.shape[-2], x.shape[-1])
        if top == bottom and left == right:
            return F.conv2d(x, weight, self.bias, self.stride, (top, left), self.dilation)
        x = pad_zeros(x, (left, right, top, bottom))
        return F.conv2d(x, weight, self.bias, self.stride, 0, self.dilation)


def align_corners_index(in_size: int, out_size: int, device: torch.device | None = None) -> torch.Tensor:
    """Source indices of TF1 ``resize_nearest_neighbor(align_corners=True)``.

    TF computes ``roundf(float32(dst) * float32((in-1)/(out-1)))``: float32 arithmetic and
    rounding half away from zero. Both matter: float64 or round-half-even pick other pixels.
    """
    if out_size > 1:
        # The division is float32 in TF too.
        f32 = torch.float32
        scale = torch.tensor(in_size - 1, dtype=f32) / torch.tensor(out_size - 1, dtype=f32)
    else:
        scale = torch.tensor(0.0, dtype=torch.float32)
    product = torch.arange(out_size, dtype=torch.float32) * scale  # float32 product, as in TF
    index = torch.floor(product.double() + 0.5).long().clamp_(max=in_size - 1)
    return index.to(device) if device is not None else index


def _traced_align_corners_index(in_size, out_size, device: torch.device) -> torch.Tensor:
    """:func:`align_corners_index` from tensor operations only, for sizes that an exporter keeps
    symbolic (the same float32 product and rounding; a 1-pixel output reads pixel 0)."""
    one = torch.ones((), dtype=torch.float32, device=device)
    scale = (one * (in_size - 1)) / (one * (out_size - 1)).clamp_min(1.0)
    product = torch.arange(out_size, device=device).to(torch.float32) * scale
    index = torch.floor(product.double() + 0.5).long()
    return torch.minimum(index, torch.ones((), dtype=torch.long, device=device) * (in_size - 1))


def _is_plain_repeat(index: torch.Tensor, factor: int) -> bool:
    return torch.equal(index, torch.arange(index.numel(), device=index.device) // factor)


@functools.lru_cache(maxsize=64)
def _resize_plan(in_h: int, in_w: int, out_h: int, out_w: int) -> tuple[int, int] | None:
    """Integer factors when the align-corners resize is a plain repeat, else None (gathers).
    Cached: the generator resizes the same few sizes every step."""
    if out_h % in_h or out_w % in_w:
        return None
    fh, fw = out_h // in_h, out_w // in_w
    rows, cols = align_corners_index(in_h, out_h), align_corners_index(in_w, out_w)
    return (fh, fw) if _is_plain_repeat(rows, fh) and _is_plain_repeat(cols, fw) else None


def _assume_constant_result(function: Callable) -> Callable:
    """What ``torch.compiler.assume_constant_result`` does: mark ``function`` for dynamo, which
    reads the mark when it traces a call. The public decorator imports ``torch._dynamo`` to set
    it (2.5 s at the import of every command that loads this module, most of which never
    compile). ``tests/test_compile.py`` fails should a PyTorch release read another mark."""
    function._dynamo_marked_constant = True  # type: ignore[attr-defined]
    return function


@_assume_constant_result
def _constant_resize_plan(in_h: int, in_w: int, out_h: int, out_w: int) -> tuple[int, int] | None:
    # A function of the sizes alone: torch.compile runs it once and keeps the result instead
    # of tracing its index comparisons (data-dependent to the tracer).
    return _resize_plan(in_h, in_w, out_h, out_w)


def resize_is_repeat(size: tuple[int, int], out_size: tuple[int, int]) -> bool:
    """Whether TF's align-corners nearest resize from ``size`` to ``out_size`` repeats each pixel
    an integer number of times (PyTorch's plain nearest mode)."""
    return _constant_resize_plan(int(size[0]), int(size[1]), int(out_size[0]), int(out_size[1])) is not None


def cached_tensor(maxsize: int) -> Callable:
    """``functools.lru_cache`` for a function of plain values that returns a tensor (a constant
    of the model: resize indices, a discount mask), made once per arguments and device.

    The tensor is made outside inference mode even when first asked for inside it: a cached
    inference tensor could not be saved for a later backward (inpaint, then train, in one
    process). Under torch.compile the function is traced instead (dynamo ignores lru_cache)."""

    def decorate(function: Callable) -> Callable:
        cached = functools.lru_cache(maxsize=maxsize)(function)

        @functools.wraps(function)
        def call(*args):
            if torch.compiler.is_compiling():
                return function(*args)
            with torch.inference_mode(False):
                return cached(*args)

        call.cache_clear = cached.cache_clear
        return call

    return decorate


@cached_tensor(maxsize=64)
def _device_index(in_size: int, out_size: int, device: torch.device) -> torch.Tensor:
    # One host-to-device copy per size and device, not one per forward (a copy stalls a GPU).
    return align_corners_index(in_size, out_size, device)


def resize_nearest(x: torch.Tensor, size: tuple[int, int], align_corners: bool = True) -> torch.Tensor:
    """Nearest-neighbour resize of ``x: (N,C,H,W)`` to ``size = (h, w)``.

    ``align_corners=True`` reproduces TF1's ``resize_nearest_neighbor(align_corners=True)``, the
    resize of the official code; ``False`` is PyTorch's ``mode="nearest"``.
    """
    height, width = x.shape[-2:]
    if _exporting():
        # Sizes are symbolic: the indices are computed in the graph (no size-specific plan).
        if not align_corners:
            return F.interpolate(x, size=tuple(size), mode="nearest")
        rows = _traced_align_corners_index(height, size[0], x.device)
        cols = _traced_align_corners_index(width, size[1], x.device)
        return x.index_select(-2, rows).index_select(-1, cols)
    out_h, out_w = int(size[0]), int(size[1])
    if (out_h, out_w) == (height, width):
        return x
    if not align_corners:
        return F.interpolate(x, size=(out_h, out_w), mode="nearest")
    # Integer upscales (the generator's x2) map dst -> dst // factor exactly, which is
    # PyTorch's nearest mode: use its kernel, several times faster than two gathers.
    factors = _constant_resize_plan(height, width, out_h, out_w)
    if factors is not None:
        return F.interpolate(x, scale_factor=factors, mode="nearest")
    rows = _device_index(height, out_h, x.device)
    cols = _device_index(width, out_w, x.device)
    return x.index_select(-2, rows).index_select(-1, cols)


def _phase_kernels(weight: torch.Tensor) -> torch.Tensor:
    """The four 2x2 kernels that a 3x3 kernel applies to a x2 nearest-upsampled input.

    weight: (Co,Ci,3,3) -> (4*Co,Ci,2,2), phases (row, column) in the order (0,0), (0,1), (1,0),
    (1,1). Along one axis, output pixel 2i+a of the upsampled convolution sees low-resolution
    pixels (i-1, i, i) for a = 0 and (i, i, i+1) for a = 1, so its three taps collapse to two:
    (w0, w1+w2) and (w0+w1, w2).
    """
    w0, w1, w2 = weight.unbind(2)
    kernels = []
    for rows in (torch.stack([w0, w1 + w2], 2), torch.stack([w0 + w1, w2], 2)):
        c0, c1, c2 = rows.unbind(3)
        kernels += [torch.stack([c0, c1 + c2], 3), torch.stack([c0 + c1, c2], 3)]
    return torch.cat(kernels)


def _phase_views(phases: torch.Tensor, image: torch.Tensor) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Matching views of ``phases: (N,4C,H+1,W+1)`` and ``image: (N,C,2H,2W)``: phase (a, b)'s
    pixels [a:a+H, b:b+W] are the image's pixels (2i+a, 2j+b). Made one pair at a time: a view
    taken before an earlier in-place write under autograd would be stale."""
    channels, height, width = image.shape[1], image.shape[2] // 2, image.shape[3] // 2
    for phase in range(4):
        a, b = divmod(phase, 2)
        block = phases[:, phase * channels : (phase + 1) * channels, a : a + height, b : b + width]
        yield block, image[:, :, a::2, b::2]


class _Interleave(torch.autograd.Function):
    """Phase results (N,4C,H+1,W+1) -> the image (N,C,2H,2W); its backward is the adjoint."""

    @staticmethod
    def forward(ctx, y: torch.Tensor, channels: int) -> torch.Tensor:
        n, _, height, width = y.shape
        out = _empty_in_layout_of(y, (n, channels, 2 * (height - 1), 2 * (width - 1)))
        for block, pixels in _phase_views(y, out):
            pixels.copy_(block)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        n, channels, height, width = grad.shape
        out = _empty_in_layout_of(grad, (n, 4 * channels, height // 2 + 1, width // 2 + 1)).zero_()
        for block, pixels in _phase_views(out, grad):
            block.copy_(pixels)
        return out, None


def upsample_conv3x3(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``conv2d(upsample_nearest_x2(x), weight, bias, padding=1)`` without the upsampled tensor.

    x: (N,Ci,H,W); weight: (Co,Ci,3,3); returns (N,Co,2H,2W) in the layout of ``x``. Each of
    the four output phases is a 2x2 convolution of ``x`` (:func:`_phase_kernels`), computed
    as one convolution with 4*Co outputs and interleaved: 2.25x fewer multiply-adds and no
    x2 copy of the input. Equal to the direct form up to float rounding; differentiable.
    """
    kernels = _phase_kernels(weight)
    if _is_channels_last(x):
        kernels = kernels.contiguous(memory_format=torch.channels_last)
    y = F.conv2d(x, kernels, None if bias is None else bias.repeat(4), padding=1)
    if _exporting():
        return _interleave(y, weight.shape[0])
    return _Interleave.apply(y, weight.shape[0])


def _interleave(y: torch.Tensor, channels: int) -> torch.Tensor:
    """:class:`_Interleave`'s forward from views and one reshape (for graph exporters)."""
    n, _, height, width = y.shape
    height, width = height - 1, width - 1
    blocks = []
    for phase in range(4):
        a, b = divmod(phase, 2)
        blocks.append(y[:, phase * channels : (phase + 1) * channels, a : a + height, b : b + width])
    # Channel c*4 + a*2 + b goes to pixel (2y + a, 2x + b): pixel_shuffle, which exports to one
    # DepthToSpace (about 2.4x faster in onnxruntime than the equivalent 6-D Transpose).
    return F.pixel_shuffle(torch.stack(blocks, dim=2).reshape(n, 4 * channels, height, width), 2)


_ELU_CHUNK = 1 << 18  # elements per piece: 1 MiB of float32 stays in the L2 cache


def _dense_view(x: torch.Tensor) -> torch.Tensor | None:
    """``x`` as one flat view of its memory (contiguous or channels_last), else None."""
    if x.is_contiguous():
        return x.view(-1)
    if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last):
        return x.permute(0, 2, 3, 1).view(-1)
    return None


def elu_(x: torch.Tensor) -> torch.Tensor:
    """In-place ELU for inference, several times faster than ``F.elu`` on CPUs.

    PyTorch's CPU ELU calls a scalar ``expm1``. Here ``max(x, exp(min(x, 0)) - 1)`` (equal to
    the ELU since ``exp(x) - 1 >= x``) uses the vectorised ``exp`` and, done in cache-sized
    pieces through one scratch piece, costs about one pass over memory. Differs from ``F.elu``
    by at most a few float32 ulps. Not for tensors that need gradients (:func:`elu` is the one
    for training).
    """
    if _exporting():
        # Out of place: ONNX's own Elu. The in-place form is traced through its reference
        # decomposition, op by op over symbolic sizes (seconds per layer).
        return F.elu(x)
    flat = _dense_view(x) if x.device.type == "cpu" else None
    if flat is None:
        return F.elu_(x)
    scratch = flat.new_empty(min(flat.numel(), _ELU_CHUNK))
    for start in range(0, flat.numel(), _ELU_CHUNK):
        piece = flat[start : start + _ELU_CHUNK]
        negative = torch.clamp(piece, max=0, out=scratch[: piece.numel()]).exp_().sub_(1)
        torch.maximum(piece, negative, out=piece)
    return x


class _TrainingELU(torch.autograd.Function):
    """ELU in place on a fresh tensor, differentiated from its output (nothing else saved)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        elu_(x)
        ctx.mark_dirty(x)
        ctx.save_for_backward(x)
        return x

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        (y,) = ctx.saved_tensors
        # ATen's ELU gradient from the result: grad * (y + 1) where y <= 0, one vectorised
        # pass, and itself differentiable (a second derivative works).
        return torch.ops.aten.elu_backward(grad, 1.0, 1.0, 1.0, True, y)


def elu(x: torch.Tensor) -> torch.Tensor:
    """ELU of a *fresh* tensor (a convolution's output, used by nothing else), for training.

    On CPUs it runs :func:`elu_` in place (no new buffer: a fresh large buffer costs page
    faults on every step) and keeps only the output for the backward, which is ATen's own
    gradient from the result. Elsewhere it is ``F.elu``. Same values and gradients as
    ``F.elu`` to a few float32 ulps; ``x`` is overwritten.
    """
    if x.device.type != "cpu" or _exporting() or _dense_view(x) is None:
        return F.elu(x)
    return _TrainingELU.apply(x)


def _activated(features: torch.Tensor, activation: str) -> torch.Tensor:
    """ELU or ReLU of ``features`` into a new tensor, vectorised: the ELU as
    ``max(x, exp(min(x, 0)) - 1)`` (see :func:`elu_`), not PyTorch's scalar ``expm1``."""
    if activation == "relu":
        return torch.relu(features)
    if features.dtype in (torch.bfloat16, torch.float16):
        # exp(x) - 1 cancels near 0 in 8 or 11 bits of mantissa; ELU's expm1 does not.
        return F.elu(features)
    negative = torch.clamp(features, max=0).exp_().sub_(1)
    return torch.maximum(features, negative, out=negative)


class _GatedActivation(torch.autograd.Function):
    """``activation(x[:, :C]) * sigmoid(x[:, C:])`` with its gradient from the two halves'
    results (each half the size of ``x``): the ELU's slope is ``min(y + 1, 1)`` of its output
    ``y``, the ReLU's ``y > 0``, the sigmoid's ``s * (1 - s)``."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, activation: str) -> torch.Tensor:
        features, gate = x.chunk(2, dim=1)
        activated = _activated(features, activation)
        opened = torch.sigmoid(gate)
        ctx.activation = activation
        ctx.save_for_backward(activated, opened)
        return activated * opened

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        activated, opened = ctx.saved_tensors
        channels = activated.shape[1]
        layout = torch.channels_last if _is_channels_last(grad) or _is_channels_last(activated) else None
        shape = (activated.shape[0], 2 * channels, *activated.shape[2:])
        out = torch.empty(
            shape, dtype=grad.dtype, device=grad.device, memory_format=layout or torch.contiguous_format
        )
        if ctx.activation == "relu":
            slope = (activated > 0).to(grad.dtype)
        else:
            slope = torch.clamp(activated + 1, max=1)
        torch.mul(grad * opened, slope, out=out[:, :channels])
        torch.mul(grad * activated, opened * (1 - opened), out=out[:, channels:])
        return out, None


def gated_activation(x: torch.Tensor, activation: str = "elu") -> torch.Tensor:
    """DeepFill v2's gate: ``activation(x[:, :C]) * sigmoid(x[:, C:])`` for ``x: (N,2C,H,W)``, a
    convolution's fresh output (overwritten without autograd); ``activation`` ``"elu"`` or
    ``"relu"``. Returns (N,C,H,W). Values and gradients equal the plain formula to float
    rounding; without autograd the halves are activated in place and the product is the one new
    tensor."""
    if torch.compiler.is_exporting() or torch.compiler.is_compiling():
        features, gate = x.chunk(2, dim=1)
        act = F.elu(features) if activation == "elu" else F.relu(features)
        return act * torch.sigmoid(gate)
    if torch.is_grad_enabled() and x.requires_grad:
        return _GatedActivation.apply(x, activation)
    features, gate = x.chunk(2, dim=1)
    return _activated(features, activation).mul_(gate.sigmoid_())
