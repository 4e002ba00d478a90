"""The DeepFill generators: a coarse network and a refinement network with contextual attention,
v1 (Yu et al. 2018: ELU convolutions) and v2 (Yu et al. 2019: gated convolutions, ``gated=True``).

Attribute names are the official layer names (``conv1`` ... ``conv17`` in the coarse stage;
``xconv*`` dilated branch, ``pmconv*`` attention branch and ``allconv*`` merge in the refinement
stage), so the TF variable ``inpaint_net/<layer>/kernel`` maps to ``<stage>.<layer>.weight``
(upsampling layers: ``inpaint_net/<layer>/<layer>_conv/kernel`` to ``<stage>.<layer>.conv.weight``).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from .contextual_attention import ContextualAttention
from .layers import (
    InitScheme,
    PaddingMode,
    SameConv2d,
    elu,
    elu_,
    gated_activation,
    initialize_,
    resize_is_repeat,
    resize_nearest,
    upsample_conv3x3,
)

__all__ = [
    "CoarseGenerator",
    "InpaintGenerator",
    "RefineGenerator",
    "check_generator_inputs",
    "inpaint_padded",
]


class GenConv(SameConv2d):
    """Official ``gen_conv``: a 'SAME' convolution followed by ELU (or another activation).

    ``gated=True`` is v2's gated convolution: the convolution makes ``2 * out_channels``
    channels, and the layer returns ``activation(first half) * sigmoid(second half)``
    (``out_channels``); the official code names such a layer by its ``2 * out_channels``.
    A layer without activation is never gated (v2's output convolutions)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        dilation: int = 1,
        activation: str | None = "elu",
        same: PaddingMode = "tf_same",
        gated: bool = False,
    ) -> None:
        gated = gated and activation is not None
        channels = 2 * out_channels if gated else out_channels
        super().__init__(in_channels, channels, kernel_size, stride, dilation, same=same)
        if activation not in ("elu", "relu", None):
            raise ValueError(f"activation must be 'elu', 'relu' or None, got {activation!r}")
        self.activation = activation
        self.gated = gated

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.activate(super().forward(x))

    def activate(self, x: torch.Tensor) -> torch.Tensor:
        """The layer's activation of its convolution's fresh output ``x`` (overwritten)."""
        if self.gated:
            return gated_activation(x, self.activation)
        needs_grad = torch.is_grad_enabled() and x.requires_grad
        if self.activation == "elu":
            # The convolution's output is fresh: without autograd it can be activated in place.
            return elu(x) if needs_grad else elu_(x)
        if self.activation == "relu":
            return F.relu(x)
        return x


class GenDeconv(nn.Module):
    """Official ``gen_deconv``: x2 nearest upsampling (align-corners) then a 3x3 ``GenConv``."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        same: PaddingMode = "tf_same",
        align_corners: bool = True,
        gated: bool = False,
    ) -> None:
        super().__init__()
        self.align_corners = align_corners
        self.conv = GenConv(in_channels, out_channels, 3, same=same, gated=gated)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[-2:]
        size = (height * 2, width * 2)
        # TF's align-corners x2 resize is a plain pixel repeat: source index
        # round(i * (h-1)/(2h-1)) is i // 2 with a margin of 0.5/(2h-1) to the rounding point,
        # far above float32 error for any practical size (checked per size; an exported graph,
        # whose sizes are symbolic, relies on it up to 2048 pixels, which a test checks). Then
        # the 3x3 convolution of the repeated pixels is four 2x2 convolutions.
        if not self.align_corners or torch.compiler.is_exporting() or resize_is_repeat((height, width), size):
            return self.conv.activate(upsample_conv3x3(x, self.conv.weight, self.conv.bias))
        return self.conv(resize_nearest(x, size, self.align_corners))


def _with_mask(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Network input ``concat[x, ones, ones*mask]`` (5 channels), as in the official code."""
    ones = torch.ones_like(x[:, :1])
    return torch.cat([x, ones, ones * mask], dim=1)


def _check_dilations(dilations: Sequence[int]) -> tuple[int, ...]:
    values = tuple(int(d) for d in dilations)
    if not values or any(d < 1 for d in values):
        raise ValueError(f"dilations must be a non-empty sequence of positive integers, got {dilations!r}")
    return values


class CoarseGenerator(nn.Module):
    """Stage 1: encoder, dilated convolutions, decoder.

    ``forward(x, mask) -> x_stage1``; ``x: (N,3,H,W)`` in [-1,1] with the hole already blanked,
    ``mask: (1 or N,1,H,W)``, 1 = hole. Output (N,3,H,W) in [-1,1]: clipped (v1) or through
    ``tanh`` (v2, ``gated=True``). ``cnum``: the width of the layers' outputs (v2 counts the
    convolutions' channels, twice that).
    """

    def __init__(
        self,
        cnum: int = 32,
        dilations: Sequence[int] = (2, 4, 8, 16),
        same: PaddingMode = "tf_same",
        align_corners: bool = True,
        gated: bool = False,
    ) -> None:
        super().__init__()
        dilations = _check_dilations(dilations)
        c = cnum
        self.gated = gated
        conv = functools.partial(GenConv, same=same, gated=gated)
        self.conv1 = conv(5, c, 5)
        self.conv2_downsample = conv(c, 2 * c, 3, 2)
        self.conv3 = conv(2 * c, 2 * c, 3)
        self.conv4_downsample = conv(2 * c, 4 * c, 3, 2)
        self.conv5 = conv(4 * c, 4 * c, 3)
        self.conv6 = conv(4 * c, 4 * c, 3)
        # Official names are conv7_atrous .. conv10_atrous for the default four dilations.
        self.atrous_names = [f"conv{7 + i}_atrous" for i in range(len(dilations))]
        for name, d in zip(self.atrous_names, dilations, strict=True):
            self.add_module(name, conv(4 * c, 4 * c, 3, dilation=d))
        self.conv11 = conv(4 * c, 4 * c, 3)
        self.conv12 = conv(4 * c, 4 * c, 3)
        self.conv13_upsample = GenDeconv(4 * c, 2 * c, same, align_corners, gated)
        self.conv14 = conv(2 * c, 2 * c, 3)
        self.conv15_upsample = GenDeconv(2 * c, c, same, align_corners, gated)
        self.conv16 = conv(c, c // 2, 3)
        self.conv17 = conv(c // 2, 3, 3, activation=None)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = self.conv1(_with_mask(x, mask))
        for layer in (self.conv2_downsample, self.conv3, self.conv4_downsample, self.conv5, self.conv6):
            x = layer(x)
        for name in self.atrous_names:
            x = getattr(self, name)(x)
        for layer in (self.conv11, self.conv12, self.conv13_upsample, self.conv14, self.conv15_upsample):
            x = layer(x)
        return _output(self.conv17(self.conv16(x)), self.gated)


def _output(x: torch.Tensor, gated: bool) -> torch.Tensor:
    """A stage's image: v2 squashes with tanh, v1 clips."""
    return torch.tanh(x) if gated else x.clamp(-1.0, 1.0)


class RefineGenerator(nn.Module):
    """Stage 2: a dilated branch and a contextual-attention branch, merged and decoded.

    ``forward(x, mask) -> (x_stage2, offsets)``; ``x: (N,3,H,W)`` in [-1,1] (coarse result pasted
    into the hole), ``mask: (1 or N,1,H,W)``, 1 = hole; ``offsets: (N,2,H/(4*rate),W/(4*rate))``.
    v1 sees ``[x, ones, mask]``, v2 (``gated=True``) the 3 channels of ``x`` alone.
    """

    def __init__(
        self,
        cnum: int = 32,
        dilations: Sequence[int] = (2, 4, 8, 16),
        attention: ContextualAttention | None = None,
        same: PaddingMode = "tf_same",
        align_corners: bool = True,
        contextual_attention: bool = True,
        gated: bool = False,
    ) -> None:
        super().__init__()
        dilations = _check_dilations(dilations)
        c = cnum
        self.align_corners = align_corners
        self.contextual_attention = contextual_attention
        self.gated = gated
        conv = functools.partial(GenConv, same=same, gated=gated)
        inputs = 3 if gated else 5
        # Dilated ("hallucination") branch.
        self.xconv1 = conv(inputs, c, 5)
        self.xconv2_downsample = conv(c, c, 3, 2)
        self.xconv3 = conv(c, 2 * c, 3)
        self.xconv4_downsample = conv(2 * c, 2 * c, 3, 2)
        self.xconv5 = conv(2 * c, 4 * c, 3)
        self.xconv6 = conv(4 * c, 4 * c, 3)
        self.atrous_names = [f"xconv{7 + i}_atrous" for i in range(len(dilations))]
        for name, d in zip(self.atrous_names, dilations, strict=True):
            self.add_module(name, conv(4 * c, 4 * c, 3, dilation=d))
        # Attention branch.
        self.pmconv1 = conv(inputs, c, 5)
        self.pmconv2_downsample = conv(c, c, 3, 2)
        self.pmconv3 = conv(c, 2 * c, 3)
        self.pmconv4_downsample = conv(2 * c, 4 * c, 3, 2)
        self.pmconv5 = conv(4 * c, 4 * c, 3)
        self.pmconv6 = conv(4 * c, 4 * c, 3, activation="relu")
        self.attention = attention if attention is not None else ContextualAttention(rate=2)
        self.pmconv9 = conv(4 * c, 4 * c, 3)
        self.pmconv10 = conv(4 * c, 4 * c, 3)
        # Merge.
        self.allconv11 = conv(8 * c, 4 * c, 3)
        self.allconv12 = conv(4 * c, 4 * c, 3)
        self.allconv13_upsample = GenDeconv(4 * c, 2 * c, same, align_corners, gated)
        self.allconv14 = conv(2 * c, 2 * c, 3)
        self.allconv15_upsample = GenDeconv(2 * c, c, same, align_corners, gated)
        self.allconv16 = conv(c, c // 2, 3)
        self.allconv17 = conv(c // 2, 3, 3, activation=None)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        xnow = x if self.gated else _with_mask(x, mask)
        h = self.xconv1(xnow)
        for layer in (self.xconv2_downsample, self.xconv3, self.xconv4_downsample, self.xconv5, self.xconv6):
            h = layer(h)
        for name in self.atrous_names:
            h = getattr(self, name)(h)
        p = self.pmconv1(xnow)
        for layer in (
            self.pmconv2_downsample,
            self.pmconv3,
            self.pmconv4_downsample,
            self.pmconv5,
            self.pmconv6,
        ):
            p = layer(p)
        if self.contextual_attention:
            # The official code resizes the mask to the 1/4 feature size with align-corners nearest.
            mask_small = resize_nearest(mask, p.shape[-2:], self.align_corners)
            # Binary by construction (a nearest resize of the checked input mask).
            p, offsets = self.attention(p, p, mask_small, check_mask=False)
        else:  # ablation: the branch's features go on unchanged, nothing is copied
            rate = self.attention.rate
            offsets = p.new_zeros(p.shape[0], 2, p.shape[-2] // rate, p.shape[-1] // rate, dtype=torch.long)
        p = self.pmconv10(self.pmconv9(p))
        x = torch.cat([h, p], dim=1)
        for layer in (
            self.allconv11,
            self.allconv12,
            self.allconv13_upsample,
            self.allconv14,
            self.allconv15_upsample,
            self.allconv16,
        ):
            x = layer(x)
        return _output(self.allconv17(x), self.gated), offsets


class InpaintGenerator(nn.Module):
    """DeepFill generator (coarse + refinement): v1, 3,601,542 parameters at ``cnum=32``, or v2
    (``gated=True``), 4,052,478 parameters at ``cnum=48``.

    Args:
        cnum: base channel count (v1: 32; v2: 48, counted as the official code does, before the
            gates halve it, so a multiple of 4).
        dilations: dilation schedule of both dilated stacks (2, 4, 8, 16 in the paper).
        attention: keyword arguments of :class:`ContextualAttention` (ksize, rate, fuse_k,
            softmax_scale, fuse, chunk_size); the paper uses rate 2.
        padding: ``"tf_same"`` (official, needed for official weights) or ``"symmetric"``.
        align_corners: TF1 align-corners nearest upsampling (official) or plain nearest.
        init: ``"glorot_uniform"`` (official: Glorot-uniform kernels, zero biases) or
            ``"pytorch"`` (PyTorch's layer defaults); see :func:`deepfill.models.layers.initialize_`.
        contextual_attention: ``False`` removes the attention layer (the ablation of the paper's
            claim): the attention branch's features pass on unchanged; same parameters.
        channels_last: keep the weights and activations in NHWC layout (the faster one for
            these convolutions; ``False`` for the plain NCHW layout). Results are the same.
        gated: DeepFill v2 (Yu et al. 2019): gated convolutions, ``tanh`` outputs, stage 2 on
            the 3-channel composite alone (:attr:`family` ``"v2"``).

    ``forward(image, mask) -> (x_stage1, x_stage2, offsets)``:
        image: (N,3,H,W) in [-1,1], RGB, H and W divisible by :attr:`multiple` (``4 * rate``, 8
        by default; known pixels; the hole content
        is ignored). mask: (1 or N,1,H,W), 1 = hole. x_stage1, x_stage2: (N,3,H,W) in [-1,1].
        offsets: (N,2,H/4/rate,W/4/rate) attention offsets (see :func:`deepfill.flow_to_image`).
    """

    # Dict arguments forwarded as keyword arguments: config validation checks their keys.
    nested_arguments: ClassVar[dict[str, type]] = {"attention": ContextualAttention}

    def __init__(
        self,
        cnum: int = 32,
        dilations: Sequence[int] = (2, 4, 8, 16),
        attention: dict | None = None,
        padding: PaddingMode = "tf_same",
        align_corners: bool = True,
        init: InitScheme = "glorot_uniform",
        contextual_attention: bool = True,
        channels_last: bool = True,
        gated: bool = False,
    ) -> None:
        super().__init__()
        if gated and (cnum < 4 or cnum % 4):
            raise ValueError(f"cnum of a gated (v2) generator must be a multiple of 4, got {cnum!r}")
        if cnum < 2 or cnum % 2:
            raise ValueError(f"cnum must be an even integer >= 2, got {cnum!r}")
        attention_kwargs = {"rate": 2, **(attention or {})}
        # Constructor arguments, saved with checkpoints so the generator can be rebuilt.
        self.config = {
            "cnum": cnum,
            "dilations": list(dilations),
            "attention": dict(attention_kwargs),
            "padding": padding,
            "align_corners": align_corners,
            "init": init,
            "contextual_attention": contextual_attention,
            "channels_last": channels_last,
            "gated": gated,
        }
        self.channels_last = channels_last
        self.gated = gated
        self.multiple = 4 * attention_kwargs["rate"]
        # A gated layer's output is half its convolution's channels.
        width = cnum // 2 if gated else cnum
        self.coarse = CoarseGenerator(width, dilations, padding, align_corners, gated)
        self.refine = RefineGenerator(
            width,
            dilations,
            ContextualAttention(**attention_kwargs),
            padding,
            align_corners,
            contextual_attention,
            gated,
        )
        initialize_(self, init)
        if channels_last:
            # NHWC convolutions: about 1.2x faster inference and training steps on a 2-core
            # CPU, measured side by side (BENCHMARKS.md); results equal NCHW to float rounding.
            self.to(memory_format=torch.channels_last)

    @property
    def family(self) -> str:
        """``"v1"`` (contextual attention, Yu et al. 2018) or ``"v2"`` (gated convolution, 2019)."""
        return "v2" if self.gated else "v1"

    def compile_stages(self, **options) -> InpaintGenerator:
        """``torch.compile`` both stages in place (``options``: its arguments, e.g.
        ``backend="aot_eager"``, ``mode="max-autotune"``); returns ``self``.

        Each stage traces to one graph, without breaks, in inference and in training (a test
        keeps it so). The stages rather than the whole generator: the coarse pre-training
        calls the coarse stage alone. Weights and their names are unchanged (checkpoints load
        either way); the first call of each input size compiles."""
        self.coarse.compile(**options)
        self.refine.compile(**options)
        return self

    def check_inputs(self, image: torch.Tensor, mask: torch.Tensor, check_mask: bool = True) -> None:
        """Raise one clear ``ValueError`` line for inputs the generator cannot take.

        ``check_mask=False`` skips the test that the mask is binary: it reads the mask's values
        back to the host, which stalls a GPU's queue; for masks binary by construction."""
        check_generator_inputs(image, mask, self.multiple, check_mask)

    def _blank(
        self, image: torch.Tensor, mask: torch.Tensor, check_mask: bool
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The checked inputs as the coarse stage takes them: the hole blanked to 0, the mask in
        the image's dtype."""
        self.check_inputs(image, mask, check_mask)
        if self.channels_last:
            image = image.contiguous(memory_format=torch.channels_last)
        mask = mask.to(image.dtype)
        return image * (1 - mask), mask

    def coarse_only(self, image: torch.Tensor, mask: torch.Tensor, check_mask: bool = True) -> torch.Tensor:
        """Stage 1 alone, as :meth:`forward` runs it: x_stage1 (N,3,H,W) in [-1,1] (the official
        coarse pre-training trains this). Inputs as :meth:`forward`."""
        x_in, mask = self._blank(image, mask, check_mask)
        return self.coarse(x_in, mask)

    def forward(
        self, image: torch.Tensor, mask: torch.Tensor, check_mask: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """image: (N,3,H,W) in [-1,1]; mask: (1 or N,1,H,W), 1 = hole (binary; ``check_mask=False``
        skips that test, see :meth:`check_inputs`). Returns x_stage1, x_stage2 (N,3,H,W) and the
        attention offsets (N,2,H/(4*rate),W/(4*rate))."""
        x_in, mask = self._blank(image, mask, check_mask)
        x_stage1 = self.coarse(x_in, mask)
        # Gradients flow from stage 2 into stage 1 through the pasted coarse result.
        x = composite(x_stage1, x_in, mask)
        x_stage2, offsets = self.refine(x, mask)
        return x_stage1, x_stage2, offsets


def check_generator_inputs(
    image: torch.Tensor, mask: torch.Tensor, multiple: int, check_mask: bool = True
) -> None:
    """One clear ``ValueError`` line for inputs a generator with size ``multiple`` cannot take:
    image (N,3,H,W), mask (1 or N,1,H,W) of the same size and binary, H and W multiples."""
    if image.dim() != 4 or image.shape[1] != 3:
        raise ValueError(f"image must be (N,3,H,W), got {tuple(image.shape)}")
    if mask.dim() != 4 or mask.shape[1] != 1 or mask.shape[0] not in (1, image.shape[0]):
        raise ValueError(f"mask must be (1 or N,1,H,W) with N={image.shape[0]}, got {tuple(mask.shape)}")
    if mask.shape[-2:] != image.shape[-2:]:
        raise ValueError(
            f"mask size {tuple(mask.shape[-2:])} does not match image size {tuple(image.shape[-2:])}"
        )
    height, width = image.shape[-2:]
    if height % multiple or width % multiple:
        raise ValueError(
            f"image height and width must be divisible by {multiple}, got {height}x{width}; "
            "use deepfill.models.inpaint_padded for other sizes"
        )
    # Reading values back is a graph break for torch.compile and impossible while exporting:
    # compiled callers pass binary masks by construction (the training step) or checked them.
    tracing = torch.compiler.is_compiling() or torch.compiler.is_exporting()
    if check_mask and not tracing and not torch.all((mask == 0) | (mask == 1)):
        raise ValueError("mask must be binary (0 = known, 1 = hole)")


def composite(output: torch.Tensor, image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The completed image: ``output`` inside the hole, ``image`` outside.

    output, image: (N,C,H,W); mask: (N or 1,1,H,W), 1 = hole (soft values blend)."""
    return output * mask + image * (1 - mask)


@torch.no_grad()
def inpaint_padded(
    generator: InpaintGenerator, image: torch.Tensor, mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Run the generator on any H, W: pad to a multiple of ``generator.multiple`` (``4 * rate``,
    reflect), run, crop back.

    image: (N,3,H,W) in [-1,1]; mask: (1 or N,1,H,W), 1 = hole. Returns (x_stage1, x_stage2,
    completed, offsets): images (N,3,H,W), ``completed`` keeping the known pixels of ``image``
    exactly, and the attention offsets of the padded input.
    """
    height, width = image.shape[-2:]
    m = generator.multiple
    pad_h, pad_w = (-height) % m, (-width) % m
    if pad_h or pad_w:
        mode = "reflect" if pad_h < height and pad_w < width else "replicate"
        image_p = F.pad(image, (0, pad_w, 0, pad_h), mode=mode)
        mask_p = F.pad(mask.to(image.dtype), (0, pad_w, 0, pad_h), mode="constant", value=0.0)
    else:
        image_p, mask_p = image, mask.to(image.dtype)
    x1, x2, offsets = generator(image_p, mask_p)
    x1, x2 = x1[..., :height, :width], x2[..., :height, :width]
    mask = mask.to(image.dtype)
    return x1, x2, composite(x2, image, mask), offsets
