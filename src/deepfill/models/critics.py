"""WGAN-GP critics of DeepFill v1: a global one on the whole image, a local one on the hole's crop.

Both are stacks of 5x5 stride-2 'SAME' convolutions with leaky ReLU (0.2), flattened into one
dense output, with no normalisation (the gradient penalty needs a per-sample critic). The dense
layer reads the features flattened channel-first (NCHW); the official one read them NHWC, which
:func:`deepfill.official.convert.official_critic_state_dict` accounts for. Initialised as the official
code (Glorot-uniform kernels, zero biases) unless ``init="pytorch"``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .layers import InitScheme, PaddingMode, SameConv2d, initialize_

__all__ = ["Critic", "GlobalCritic", "LocalCritic"]


class Critic(nn.Module):
    """``forward(x) -> (N,)`` critic scores; ``x: (N,3,size,size)`` in [-1,1].

    ``channels_last`` (default) keeps weights and activations in NHWC; the scores are the same
    (the dense layer still reads the features in NCHW order)."""

    def __init__(
        self,
        channels: Sequence[int],
        input_size: int,
        in_channels: int = 3,
        padding: PaddingMode = "tf_same",
        init: InitScheme = "glorot_uniform",
        channels_last: bool = True,
    ) -> None:
        super().__init__()
        if input_size < 1:
            raise ValueError(f"input_size must be positive, got {input_size!r}")
        layers = []
        previous = in_channels
        for out in channels:
            layers.append(SameConv2d(previous, out, 5, stride=2, same=padding))
            previous = out
        self.convs = nn.ModuleList(layers)
        self.input_size = input_size
        side = input_size
        for _ in channels:
            side = -(-side // 2)  # 'SAME' stride 2 rounds up
        self.dense = nn.Linear(previous * side * side, 1)
        initialize_(self, init)
        # NHWC: oneDNN runs these 5x5 stride-2 convolutions and their gradients about 1.3x
        # faster than NCHW on CPUs (measured), as in the generator.
        self.channels_last = channels_last
        if channels_last:
            self.to(memory_format=torch.channels_last)

    def _checked(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` after the shape check, in the critic's memory layout."""
        if x.dim() != 4 or x.shape[-2:] != (self.input_size, self.input_size):
            raise ValueError(
                f"critic expects (N,C,{self.input_size},{self.input_size}) input, got {tuple(x.shape)}"
            )
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self._checked(x)
        for conv in self.convs:
            x = F.leaky_relu(conv(x), 0.2)
        # The score in float32 also under bf16 autocast: WGAN scores grow large, and the logged
        # critic loss and gaps would be rounded to bf16's 8 bits of mantissa.
        with torch.autocast(device_type=x.device.type, enabled=False):
            features = x.flatten(1)
            return self.dense(features.to(self.dense.weight.dtype)).squeeze(1)

    def input_gradient(self, x: torch.Tensor) -> torch.Tensor:
        """``d(sum of scores)/dx`` for ``x: (N,C,size,size)``, as a function of the weights that
        autograd can differentiate: what the gradient penalty needs, without a double backward.

        The gradient is the chain of transposed convolutions of the dense weights, each step
        scaled by the leaky ReLU's slope (1 or 0.2) at that layer's pre-activation. The slopes
        are piecewise constant in ``x`` and the weights, so the forward pass that finds them
        runs without a graph, and the weights' gradient of any function of the result is the
        one ``torch.autograd.grad(..., create_graph=True)`` gives (tested), for about 0.7x the
        time of the critic step: PyTorch's double backward of a convolution transposes and
        copies its operands, the transposed convolution's own backward does not. ``x`` gets
        no gradient (the penalty's interpolates need none).
        """
        x = self._checked(x)
        slopes, sizes = [], []
        with torch.no_grad():
            h = x
            for conv in self.convs:
                sizes.append(h.shape[-2:])
                pre = conv(h)
                slopes.append(torch.where(pre > 0, 1.0, 0.2).to(pre.dtype))
                h = F.leaky_relu_(pre, 0.2)
        n = x.shape[0]
        # The scores' gradient with respect to the last features: the dense weights, per sample.
        grad = self.dense.weight.view(1, *h.shape[1:]).expand(n, *h.shape[1:])
        for conv, slope, (height, width) in zip(
            reversed(self.convs), reversed(slopes), reversed(sizes), strict=True
        ):
            grad = grad * slope
            top, bottom, left, right = conv._padding(height, width)
            grad = F.conv_transpose2d(
                grad,
                conv.weight,
                stride=conv.stride,
                output_padding=_output_padding(
                    conv, grad.shape[-2:], (height + top + bottom, width + left + right)
                ),
                dilation=conv.dilation,
            )
            grad = grad[..., top : top + height, left : left + width]  # drop the 'SAME' padding
        return grad.to(x.dtype)


def _output_padding(conv: nn.Conv2d, out_size, padded_size) -> tuple[int, int]:
    """The transposed convolution's output padding that gives back the padded input's size (a
    strided convolution maps several input sizes to one output size)."""
    pads = []
    for out, padded, k, s, d in zip(
        out_size, padded_size, conv.kernel_size, conv.stride, conv.dilation, strict=True
    ):
        pads.append(padded - ((out - 1) * s + d * (k - 1) + 1))
    return pads[0], pads[1]


class GlobalCritic(Critic):
    """Official global critic: 64, 128, 256, 256 channels on the whole image (256 by default)."""

    def __init__(
        self,
        input_size: int = 256,
        cnum: int = 64,
        padding: PaddingMode = "tf_same",
        init: InitScheme = "glorot_uniform",
        channels_last: bool = True,
    ) -> None:
        super().__init__(
            (cnum, 2 * cnum, 4 * cnum, 4 * cnum),
            input_size,
            padding=padding,
            init=init,
            channels_last=channels_last,
        )


class LocalCritic(Critic):
    """Official local critic: 64, 128, 256, 512 channels on the crop around the hole (128 by default)."""

    def __init__(
        self,
        input_size: int = 128,
        cnum: int = 64,
        padding: PaddingMode = "tf_same",
        init: InitScheme = "glorot_uniform",
        channels_last: bool = True,
    ) -> None:
        super().__init__(
            (cnum, 2 * cnum, 4 * cnum, 8 * cnum),
            input_size,
            padding=padding,
            init=init,
            channels_last=channels_last,
        )
