"""The SN-PatchGAN critic of DeepFill v2 (Yu et al. 2019) and its spectral normalisation.

Six 5x5 stride-2 'SAME' convolutions (64, 128, 256, 256, 256, 256 channels) with leaky ReLU
(0.2, the last layer too) on ``[image, mask]``; every value of the last feature map is one
patch's score, and the hinge losses average them all. Each kernel is divided by its largest
singular value, estimated as the official code (neuralgym's ``kernel_spectral_norm``) does:
one power iteration per forward from a stored ``u``, gradients flowing through the iteration
as in the official graph (``torch.nn.utils.spectral_norm`` stops them at ``u`` and ``v``, which
gives other gradients).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .layers import InitScheme, PaddingMode, SameConv2d, initialize_

__all__ = ["SNPatchGANCritic", "SpectralNormConv2d", "spectral_norm_power_iteration"]


def _l2_normalize(x: torch.Tensor, eps: float) -> torch.Tensor:
    # neuralgym adds eps to the norm (not max(norm, eps) as torch.nn.functional.normalize).
    return x / (x.square().sum().sqrt() + eps)


def spectral_norm_power_iteration(
    weight: torch.Tensor, u: torch.Tensor, eps: float = 1e-12
) -> tuple[torch.Tensor, torch.Tensor]:
    """One power iteration of neuralgym's spectral norm: ``(sigma, u_new)``.

    weight: (C_out, ...) kernel, read as the matrix W (C_out, K); u: (1, C_out).
    ``v = l2n(u W)``, ``u_new = l2n(v W^T)``, ``sigma = v W^T u_new^T`` (a 0-dim tensor).
    Differentiable in ``weight`` through ``v`` and ``u_new`` with the official graph's gradient,
    which has a quirk: there ``u`` is a TF1 reference variable that the same step overwrites
    with ``u_new``, and the gradient of ``u W`` reads the overwritten value. So the backward of
    that product uses ``u_new`` here too (the forward uses ``u``): the official step's critic
    gradients are reproduced to float rounding, where the textbook gradient differs from them
    by up to 1% of their largest value. (The official kernel is HWIO, its matrix's rows ordered
    (h, w, i) where these are (i, h, w): sigma and ``u_new`` do not depend on that order.)"""
    matrix = weight.flatten(1)
    with torch.no_grad():
        u_next = _l2_normalize(_l2_normalize(u @ matrix, eps) @ matrix.t(), eps)
    # Value u W, gradient with respect to W through u_next (the official graph's read).
    product = u_next @ matrix + ((u - u_next) @ matrix).detach()
    v = _l2_normalize(product, eps)
    u_new = _l2_normalize(v @ matrix.t(), eps)
    sigma = (v @ matrix.t() @ u_new.t()).squeeze()
    return sigma, u_new


class SpectralNormConv2d(SameConv2d):
    """neuralgym's ``conv2d_spectral_norm``: a 'SAME' convolution whose kernel is divided by
    its spectral norm (:func:`spectral_norm_power_iteration`). The buffer ``u`` (1, C_out),
    drawn from a unit normal truncated at 2 (TF's ``truncated_normal_initializer``), takes the
    iteration's new value at every forward in training mode (in eval mode it is read only)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 5,
        stride: int = 2,
        same: PaddingMode = "tf_same",
        eps: float = 1e-12,
    ) -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride, same=same)
        self.eps = eps
        u = torch.empty(1, out_channels)
        nn.init.trunc_normal_(u, std=1.0, a=-2.0, b=2.0)
        self.register_buffer("u", u)

    def normalized_weight(self) -> torch.Tensor:
        """The kernel divided by its estimated spectral norm (``u`` updated in training mode)."""
        # A copy: autograd keeps the ``u`` this iteration read, which the update overwrites.
        sigma, u_new = spectral_norm_power_iteration(self.weight, self.u.clone(), self.eps)
        if self.training:
            with torch.no_grad():
                self.u.copy_(u_new)
        return self.weight / sigma

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.convolve(x, self.normalized_weight())


class SNPatchGANCritic(nn.Module):
    """The SN-PatchGAN critic: ``forward(image, mask) -> (N, K)`` patch scores.

    image: (N,3,H,W) in [-1,1]; mask: (1 or N,1,H,W), 1 = hole (the official ``gan_with_mask``
    input). K = 256 * ceil(H/64) * ceil(W/64) at ``cnum=64``; any size works, ``input_size``
    is the side the training runs on (the data's image size).

    Args:
        input_size: the training images' side.
        cnum: the first layer's channels (64 in the paper).
        padding, init: as the generator's (official: TF 'SAME', Glorot-uniform kernels and
            zero biases).
        channels_last: NHWC weights and activations (the scores are the same).
    """

    def __init__(
        self,
        input_size: int = 256,
        cnum: int = 64,
        padding: PaddingMode = "tf_same",
        init: InitScheme = "glorot_uniform",
        channels_last: bool = True,
    ) -> None:
        super().__init__()
        if input_size < 1:
            raise ValueError(f"input_size must be positive, got {input_size!r}")
        # Constructor arguments, saved with checkpoints.
        self.config = {
            "input_size": input_size,
            "cnum": cnum,
            "padding": padding,
            "init": init,
            "channels_last": channels_last,
        }
        widths = (cnum, 2 * cnum, 4 * cnum, 4 * cnum, 4 * cnum, 4 * cnum)
        previous, layers = 4, []
        for width in widths:
            layers.append(SpectralNormConv2d(previous, width, 5, 2, same=padding))
            previous = width
        self.convs = nn.ModuleList(layers)
        self.input_size = input_size
        initialize_(self, init)
        self.channels_last = channels_last
        if channels_last:
            self.to(memory_format=torch.channels_last)

    def forward(self, image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if image.dim() != 4 or image.shape[1] != 3:
            raise ValueError(f"critic expects an (N,3,H,W) image, got {tuple(image.shape)}")
        mask = mask.to(image.dtype).expand(image.shape[0], 1, *image.shape[-2:])
        x = torch.cat([image, mask], dim=1)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        for conv in self.convs:
            x = F.leaky_relu(conv(x), 0.2)
        # Every patch's score; the order (NCHW here, NHWC officially) does not enter the
        # losses, which average them.
        return x.flatten(1).float()
