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
    """``forward(x) -> (N,)`` critic scores; ``x: (N,3,size,size)`` in [-1,1]."""

    def __init__(
        self,
        channels: Sequence[int],
        input_size: int,
        in_channels: int = 3,
        padding: PaddingMode = "tf_same",
        init: InitScheme = "glorot_uniform",
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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[-2:] != (self.input_size, self.input_size):
            raise ValueError(
                f"critic expects (N,C,{self.input_size},{self.input_size}) input, got {tuple(x.shape)}"
            )
        for conv in self.convs:
            x = F.leaky_relu(conv(x), 0.2)
        # The score in float32 also under bf16 autocast: WGAN scores grow large, and the logged
        # critic loss and gaps would be rounded to bf16's 8 bits of mantissa.
        with torch.autocast(device_type=x.device.type, enabled=False):
            features = x.flatten(1)
            return self.dense(features.to(self.dense.weight.dtype)).squeeze(1)


class GlobalCritic(Critic):
    """Official global critic: 64, 128, 256, 256 channels on the whole image (256 by default)."""

    def __init__(
        self,
        input_size: int = 256,
        cnum: int = 64,
        padding: PaddingMode = "tf_same",
        init: InitScheme = "glorot_uniform",
    ) -> None:
        super().__init__((cnum, 2 * cnum, 4 * cnum, 4 * cnum), input_size, padding=padding, init=init)


class LocalCritic(Critic):
    """Official local critic: 64, 128, 256, 512 channels on the crop around the hole (128 by default)."""

    def __init__(
        self,
        input_size: int = 128,
        cnum: int = 64,
        padding: PaddingMode = "tf_same",
        init: InitScheme = "glorot_uniform",
    ) -> None:
        super().__init__((cnum, 2 * cnum, 4 * cnum, 8 * cnum), input_size, padding=padding, init=init)
