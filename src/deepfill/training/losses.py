"""DeepFill v1 losses, as pure functions.

Conventions: images (N,3,H,W) in [-1,1]; masks (N,1,H,W) (or (1,1,H,W)), 1 = hole.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from deepfill.models.critics import Critic
from deepfill.models.generator import composite
from deepfill.models.layers import cached_tensor

__all__ = [
    "CriticLoss",
    "GeneratorLoss",
    "LossWeights",
    "ae_loss",
    "box_discount",
    "critic_loss",
    "crop_patches",
    "discounted_l1",
    "generator_loss",
    "gradient_penalty",
    "hole_boxes",
    "local_patches",
    "nearest_known_discount",
    "reconstruction_losses",
    "wgan_critic_loss",
    "wgan_generator_loss",
]

DiscountForm = Literal["box", "nearest_known"]


@dataclass(frozen=True)
class LossWeights:
    """Loss weights of the official configuration (inpaint.yml)."""

    coarse: float = 1.2  # COARSE_L1_ALPHA: stage-1 terms of the L1 and AE losses
    l1: float = 1.2  # L1_LOSS_ALPHA
    ae: float = 1.2  # AE_LOSS_ALPHA
    gan: float = 0.001  # GAN_LOSS_ALPHA
    global_wgan: float = 1.0  # GLOBAL_WGAN_LOSS_ALPHA
    gp: float = 10.0  # WGAN_GP_LAMBDA

    def __post_init__(self) -> None:
        for name, value in self.__dict__.items():
            if value < 0:
                raise ValueError(f"loss.{name} must be >= 0, got {value!r}")


def hole_boxes(mask: torch.Tensor) -> torch.Tensor:
    """Bounding box ``(top, left, bottom, right)`` (exclusive ends) of each sample's hole: (N,4) long.

    An empty mask gives the empty box (0, 0, 0, 0).
    """
    hole = mask[:, 0] > 0.5
    rows, cols = hole.any(dim=2), hole.any(dim=1)  # (N,H), (N,W)
    h, w = hole.shape[-2:]
    ar_h = torch.arange(h, device=mask.device)
    ar_w = torch.arange(w, device=mask.device)
    top = torch.where(rows, ar_h, h).amin(dim=1)
    bottom = torch.where(rows, ar_h + 1, 0).amax(dim=1)
    left = torch.where(cols, ar_w, w).amin(dim=1)
    right = torch.where(cols, ar_w + 1, 0).amax(dim=1)
    empty = ~rows.any(dim=1)
    boxes = torch.stack([top, left, bottom, right], dim=1)
    return torch.where(empty[:, None], torch.zeros_like(boxes), boxes)


@cached_tensor(maxsize=16)
def _box_discount_on(
    height: int, width: int, gamma: float, device: torch.device, dtype: torch.dtype
) -> torch.Tensor:
    # Cached per device: copying it to a GPU at every step would stall the queue.
    return _box_discount_cpu(height, width, gamma).to(device=device, dtype=dtype)


@cached_tensor(maxsize=16)
def _box_discount_cpu(height: int, width: int, gamma: float) -> torch.Tensor:
    i = torch.arange(height, dtype=torch.float64)
    j = torch.arange(width, dtype=torch.float64)
    di = torch.minimum(i, height - i)  # official: h - i, not h - 1 - i
    dj = torch.minimum(j, width - j)
    weight = torch.maximum(gamma ** di[:, None], gamma ** dj[None, :])
    return weight.float().view(1, 1, height, width)


def box_discount(
    height: int,
    width: int,
    gamma: float = 0.9,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """The official spatial discounting mask over a ``height x width`` local patch: (1,1,h,w).

    Pixel (i, j) weighs ``max(gamma**min(i, h-i), gamma**min(j, w-j))``: 1 on the patch border,
    falling towards its centre. The patch is the box the hole was carved from, so after the
    random shrink of the v1 masks the border rows are known pixels and the hole's edge weighs
    ``gamma**shrink`` (0.185 at a shrink of 16 px).
    """
    if not 0 < gamma <= 1:
        raise ValueError(f"gamma must be in (0, 1], got {gamma!r}")
    device = torch.device("cpu") if device is None else torch.device(device)
    return _box_discount_on(int(height), int(width), float(gamma), device, dtype)


def nearest_known_discount(
    mask: torch.Tensor, gamma: float = 0.9, distance: torch.Tensor | None = None
) -> torch.Tensor:
    """The paper's spatial discounting for holes of any shape: (N,1,H,W).

    A hole pixel weighs ``gamma**l`` with ``l`` its chessboard distance to the nearest known
    pixel (1 next to the boundary); known pixels weigh 0. The image border is not a known pixel.
    ``distance``: that distance precomputed per mask (:func:`deepfill.data.masks.hole_distance`, as
    the data module does in its workers), which spares one erosion pass, and on a GPU one host
    sync, per ring of the hole.
    """
    if not 0 < gamma <= 1:
        raise ValueError(f"gamma must be in (0, 1], got {gamma!r}")
    if distance is not None:
        hole = mask > 0.5
        weights = torch.pow(torch.as_tensor(gamma, dtype=distance.dtype, device=distance.device), distance)
        return torch.where(hole, weights, torch.zeros_like(weights)).to(mask.dtype)
    h, w = mask.shape[-2:]
    hole = (mask > 0.5).to(mask.dtype)
    distance = torch.zeros_like(hole)
    remaining = hole
    # Each erosion of the hole peels one ring: a pixel's ring number is its distance. Outside
    # the image counts as hole (the pooling ignores it), so borders do not act as known pixels.
    while True:
        distance = distance + remaining
        eroded = -F.max_pool2d(-remaining, 3, stride=1, padding=1) * hole
        if torch.equal(eroded, remaining):
            break  # all peeled (an all-hole mask never shrinks: it has no known pixel)
        remaining = eroded
    no_known = hole.flatten(1).all(dim=1).view(-1, *([1] * (hole.dim() - 1)))
    distance = torch.where(no_known, torch.full_like(distance, max(h, w) + 1), distance)
    return torch.where(hole > 0, gamma ** (distance - 1).clamp_min(0) * gamma, torch.zeros_like(hole))


def discounted_l1(target: torch.Tensor, prediction: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """``|target - prediction| * weights`` averaged over each sample's support (the pixels with
    a non-zero weight, times channels), then over the batch: the ``nearest_known`` form, whose
    weights cover the hole only. (The ``box`` form is a plain mean over the local patch.)"""
    support = (weights > 0).to(weights.dtype).sum(dim=(1, 2, 3)).clamp_min(1) * target.shape[1]
    per_sample = ((target - prediction).abs() * weights).sum(dim=(1, 2, 3)) / support
    return per_sample.mean()


def ae_loss(
    target: torch.Tensor,
    x_stage1: torch.Tensor,
    x_stage2: torch.Tensor | None,
    mask: torch.Tensor,
    coarse_weight: float = 1.2,
) -> torch.Tensor:
    """Official reconstruction loss on the known pixels, normalised by their fraction:
    ``(coarse_weight * mean(|gt-x1|*(1-m)) + mean(|gt-x2|*(1-m))) / mean(1-m)``."""
    known = 1.0 - mask
    loss = coarse_weight * ((target - x_stage1).abs() * known).mean()
    if x_stage2 is not None:
        loss = loss + ((target - x_stage2).abs() * known).mean()
    return loss / known.mean().clamp_min(1e-8)


def wgan_critic_loss(real_scores: torch.Tensor, fake_scores: torch.Tensor) -> torch.Tensor:
    """``mean(D(fake)) - mean(D(real))``."""
    return fake_scores.mean() - real_scores.mean()


def wgan_generator_loss(fake_scores: torch.Tensor) -> torch.Tensor:
    """``-mean(D(fake))``."""
    return -fake_scores.mean()


def gradient_penalty(
    critic: torch.nn.Module,
    real: torch.Tensor,
    fake: torch.Tensor,
    mask: torch.Tensor | None = None,
    alpha: torch.Tensor | None = None,
) -> torch.Tensor:
    """Masked WGAN-GP: ``mean((sqrt(sum(grad^2 * mask)) - 1)^2)`` at random interpolates.

    ``alpha`` (N,) in [0,1) is drawn uniformly per sample when not given. The critics of
    :mod:`deepfill.models.critics` give the input gradient as an explicit function of their
    weights (:meth:`~deepfill.models.critics.Critic.input_gradient`, the same values and weight
    gradients, faster); any other module goes through ``torch.autograd.grad``
    (``create_graph=True``). Both work under DDP.
    """
    n = real.shape[0]
    if alpha is None:
        alpha = torch.rand(n, device=real.device, dtype=real.dtype)
    alpha = alpha.view(n, 1, 1, 1)
    interpolates = real + alpha * (fake.detach() - real)
    if isinstance(critic, Critic):
        grad = critic.input_gradient(interpolates.detach())
    else:
        interpolates.requires_grad_(True)
        scores = critic(interpolates)
        (grad,) = torch.autograd.grad(scores.sum(), interpolates, create_graph=True)
    squared = grad.square()
    if mask is not None:
        squared = squared * mask
    slopes = squared.sum(dim=(1, 2, 3)).add(1e-12).sqrt()
    return (slopes - 1.0).square().mean()


def local_patches(mask: torch.Tensor, size: int) -> torch.Tensor:
    """Top-left corner (N,2) long of each sample's local patch: the ``size`` x ``size`` window
    centred on the bounding box of its hole, clamped to the image (the image centre for an
    empty mask).

    For the official v1 box masks (a ``size`` box shrunk by the same amount on opposite sides)
    this is exactly the box the hole was carved from, the official ``local_patch``.
    """
    _, _, h, w = mask.shape
    if size > min(h, w):
        raise ValueError(f"local patch size {size} exceeds the image size {h}x{w}")
    boxes = hole_boxes(mask)
    empty = boxes[:, 2] == 0
    cy = torch.where(empty, h // 2, (boxes[:, 0] + boxes[:, 2]) // 2)
    cx = torch.where(empty, w // 2, (boxes[:, 1] + boxes[:, 3]) // 2)
    top = (cy - size // 2).clamp(0, h - size)
    left = (cx - size // 2).clamp(0, w - size)
    return torch.stack([top, left], dim=1)


def crop_patches(origins: torch.Tensor, size: int, *tensors: torch.Tensor) -> list[torch.Tensor]:
    """The ``size`` x ``size`` crop at ``origins`` (N,2) of every tensor (N or 1,C,H,W), each
    sample at its own origin: a list of (N,C,size,size). Origins must keep the patch inside the
    image, as :func:`local_patches` does."""
    n = origins.shape[0]
    origins = origins.to(tensors[0].device)
    ar = torch.arange(size, device=origins.device)
    rows = (origins[:, 0:1] + ar).view(n, 1, size, 1)
    cols = (origins[:, 1:2] + ar).view(n, 1, 1, size)
    out = []
    for t in tensors:
        channels, h, w = t.shape[1:]
        picked = t.expand(n, channels, h, w).gather(2, rows.expand(n, channels, size, w))
        out.append(picked.gather(3, cols.expand(n, channels, size, size)))
    return out


# ---------------------------------------------------------------------- one training step
@dataclass
class CriticLoss:
    """The critics' loss of one step and its parts (0-dim tensors)."""

    total: torch.Tensor  # wgan_global + wgan_local + gp: what the critics minimise
    wgan_global: torch.Tensor
    wgan_local: torch.Tensor
    gp: torch.Tensor  # already weighted by WGAN_GP_LAMBDA
    gap_global: torch.Tensor  # mean(D(real)) - mean(D(fake)): the critics' Wasserstein estimates
    gap_local: torch.Tensor


@dataclass
class GeneratorLoss:
    """The generator's loss of one step and its parts (0-dim tensors)."""

    total: torch.Tensor  # gan * adversarial + l1_weight * l1 + ae_weight * ae
    l1: torch.Tensor  # coarse * L1(x1) + L1(x2), spatially discounted
    ae: torch.Tensor
    adversarial: torch.Tensor  # global_wgan * g_global + g_local (0 without critics)


def critic_loss(
    global_critic: torch.nn.Module,
    local_critic: torch.nn.Module,
    real: torch.Tensor,
    fake: torch.Tensor,
    mask: torch.Tensor,
    origins: torch.Tensor,
    alpha_global: torch.Tensor,
    alpha_local: torch.Tensor,
    gp_weight: float = 10.0,
) -> CriticLoss:
    """The official critics' loss: both WGAN losses (no global weight on this side) plus
    ``gp_weight`` times the sum of both masked gradient penalties.

    real: (N,3,H,W) in [-1,1]; fake: the completed images ``x2*mask + real*(1-mask)``, no
    gradient needed; mask: (N or 1,1,H,W), 1 = hole; origins: (N,2) local patches (the local
    critic's input size is the patch side); alpha_global, alpha_local: (N,) interpolation
    factors of the penalties in [0,1).
    """
    fake = fake.detach()
    size = local_critic.input_size
    mask_local, real_local, fake_local = crop_patches(origins, size, mask, real, fake)
    n = real.shape[0]
    # Each critic scores real and fake in one call, as the official graph does.
    scores_global = global_critic(torch.cat([real, fake]))
    scores_local = local_critic(torch.cat([real_local, fake_local]))
    wgan_global = wgan_critic_loss(scores_global[:n], scores_global[n:])
    wgan_local = wgan_critic_loss(scores_local[:n], scores_local[n:])
    gp_local = gradient_penalty(local_critic, real_local, fake_local, mask_local, alpha_local)
    gp_global = gradient_penalty(global_critic, real, fake, mask, alpha_global)
    gp = gp_weight * (gp_local + gp_global)
    return CriticLoss(
        total=wgan_global + wgan_local + gp,
        wgan_global=wgan_global,
        wgan_local=wgan_local,
        gp=gp,
        gap_global=-wgan_global.detach(),
        gap_local=-wgan_local.detach(),
    )


def reconstruction_losses(
    image: torch.Tensor,
    mask: torch.Tensor,
    x1: torch.Tensor,
    x2: torch.Tensor | None,
    origins: torch.Tensor,
    local_size: int,
    coarse_weight: float = 1.2,
    discount: DiscountForm = "box",
    gamma: float = 0.9,
    distance: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The spatially discounted L1 loss and the AE loss: ``(l1, ae)``.

    ``l1 = coarse_weight * L1(x1) + L1(x2)`` (no ``x2`` term when ``x2`` is None: coarse
    pre-training). ``discount="box"`` is the official form: the :func:`box_discount` mask over
    the local patch at ``origins``, plain mean over patch and channels. ``"nearest_known"``
    weighs the hole by :func:`nearest_known_discount` over the whole image, averaged over the
    hole (right for free-form holes, which need not fit any patch); ``distance`` is its
    precomputed hole distance (N,1,H,W), when the data module supplies it.
    """
    outputs = [(coarse_weight, x1)] + ([(1.0, x2)] if x2 is not None else [])
    if discount == "box":
        crops = crop_patches(origins, local_size, image, *(x for _, x in outputs))
        weights = box_discount(local_size, local_size, gamma, image.device, image.dtype)
        l1 = sum(
            w * ((crops[0] - x).abs() * weights).mean() for (w, _), x in zip(outputs, crops[1:], strict=True)
        )
    elif discount == "nearest_known":
        weights = nearest_known_discount(mask.expand(image.shape[0], *mask.shape[1:]), gamma, distance)
        l1 = sum(w * discounted_l1(image, x, weights) for w, x in outputs)
    else:
        raise ValueError(f"discount must be 'box' or 'nearest_known', got {discount!r}")
    return l1, ae_loss(image, x1, x2, mask, coarse_weight)


def generator_loss(
    image: torch.Tensor,
    mask: torch.Tensor,
    x1: torch.Tensor,
    x2: torch.Tensor | None,
    origins: torch.Tensor,
    local_size: int,
    weights: LossWeights,
    discount: DiscountForm = "box",
    gamma: float = 0.9,
    critics: tuple[torch.nn.Module, torch.nn.Module] | None = None,
    distance: torch.Tensor | None = None,
) -> GeneratorLoss:
    """The official generator loss ``gan * (global_wgan * g_global + g_local) + l1 * L1 + ae * AE``.

    image: (N,3,H,W) in [-1,1]; mask: (N or 1,1,H,W), 1 = hole; x1, x2: the two stages' outputs;
    origins: (N,2) local patches of side ``local_size``. ``critics = (global, local)`` adds the
    adversarial term on the completed image ``x2*mask + image*(1-mask)``; without them (coarse
    pre-training, ``x2=None``, or a reconstruction-only phase) the term is 0. ``distance``: see
    :func:`reconstruction_losses`.
    """
    l1, ae = reconstruction_losses(
        image, mask, x1, x2, origins, local_size, weights.coarse, discount, gamma, distance
    )
    adversarial = torch.zeros((), device=image.device, dtype=l1.dtype)
    if critics is not None and x2 is not None:
        global_critic, local_critic = critics
        fake = composite(x2, image, mask)
        (fake_local,) = crop_patches(origins, local_size, fake)
        g_global = wgan_generator_loss(global_critic(fake))
        g_local = wgan_generator_loss(local_critic(fake_local))
        adversarial = weights.global_wgan * g_global + g_local
    total = weights.gan * adversarial + weights.l1 * l1 + weights.ae * ae
    return GeneratorLoss(total=total, l1=l1, ae=ae, adversarial=adversarial)
