"""DeepFill losses, as pure functions: v1's (spatially discounted L1, AE, WGAN-GP on a global
and a local critic) and v2's (plain L1 on both stages, hinge loss on the SN-PatchGAN critic).

Conventions: images (N,3,H,W) in [-1,1]; masks (N,1,H,W) (or (1,1,H,W)), 1 = hole.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F

from deepfill.models.critics import Critic
from deepfill.models.generator import composite
from deepfill.models.layers import cached_tensor
from deepfill.models.sn_patchgan import SNPatchGANCritic

__all__ = [
    "GENERATOR_TERMS",
    "Loss",
    "LossConfig",
    "LossTerm",
    "LossWeights",
    "StepOutputs",
    "adversarial_term",
    "ae_loss",
    "ae_term",
    "box_discount",
    "critic_loss",
    "crop_patches",
    "discounted_l1",
    "discounted_mean",
    "generator_loss",
    "gradient_penalty",
    "hinge_critic_loss",
    "hinge_generator_loss",
    "hole_boxes",
    "l1_term",
    "l2_term",
    "local_patches",
    "nearest_known_discount",
    "patch_critic_loss",
    "wgan_critic_loss",
    "wgan_generator_loss",
]

DiscountForm = Literal["box", "nearest_known", "none"]


@dataclass(frozen=True)
class LossWeights:
    """Loss weights of the official configuration (inpaint.yml)."""

    coarse: float = 1.2  # COARSE_L1_ALPHA: stage-1 terms of the L1 and AE losses
    l1: float = 1.2  # L1_LOSS_ALPHA
    ae: float = 1.2  # AE_LOSS_ALPHA
    l2: float = 0.0  # not in the papers: the same hole term with squared errors (see l2_term)
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


def discounted_mean(error: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """``error * weights`` averaged over each sample's support (the pixels with a non-zero
    weight, times channels), then over the batch. error: (N,C,H,W) per-pixel errors; weights:
    (N,1,H,W) >= 0."""
    support = (weights > 0).to(weights.dtype).sum(dim=(1, 2, 3)).clamp_min(1) * error.shape[1]
    return ((error * weights).sum(dim=(1, 2, 3)) / support).mean()


def discounted_l1(target: torch.Tensor, prediction: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """``|target - prediction| * weights`` averaged over each sample's support (the pixels with
    a non-zero weight, times channels), then over the batch: the ``nearest_known`` form, whose
    weights cover the hole only. (The ``box`` form is a plain mean over the local patch.)"""
    return discounted_mean((target - prediction).abs(), weights)


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


def hinge_critic_loss(real_scores: torch.Tensor, fake_scores: torch.Tensor) -> torch.Tensor:
    """SN-PatchGAN's critic loss: ``0.5 * mean(relu(1 - D(real))) + 0.5 * mean(relu(1 + D(fake)))``
    over every patch score (neuralgym's ``gan_hinge_loss``)."""
    return 0.5 * F.relu(1.0 - real_scores).mean() + 0.5 * F.relu(1.0 + fake_scores).mean()


def hinge_generator_loss(fake_scores: torch.Tensor) -> torch.Tensor:
    """SN-PatchGAN's generator loss ``-mean(D(fake))`` over every patch score."""
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
@dataclass(frozen=True)
class LossConfig:
    """What the training losses read, checked once: the weights, the spatial discount and the
    local patch side.

    discount: ``"box"`` (official v1: :func:`box_discount` over the local patch),
    ``"nearest_known"`` (the paper's form for holes of any shape, :func:`nearest_known_discount`)
    or ``"none"`` (official v2: a plain mean over the whole image);
    gamma: its base in (0, 1]; patch_size: the local patch side (the local critic's input).
    """

    weights: LossWeights = LossWeights()
    discount: DiscountForm = "box"
    gamma: float = 0.9
    patch_size: int = 128

    def __post_init__(self) -> None:
        if self.discount not in ("box", "nearest_known", "none"):
            raise ValueError(
                f"model.discount must be 'box', 'nearest_known' or 'none', got {self.discount!r}"
            )
        if not 0 < self.gamma <= 1:
            raise ValueError(f"model.gamma must be in (0, 1], got {self.gamma!r}")
        if self.patch_size < 1:
            raise ValueError(f"the local patch size must be >= 1, got {self.patch_size!r}")


@dataclass(frozen=True)
class StepOutputs:
    """One batch through the generator and what every loss reads from it, computed once.

    image: (N,3,H,W) in [-1,1]; mask: (N or 1,1,H,W), 1 = hole; x1, x2: the stages' outputs
    (N,3,H,W) (``x2`` None in the coarse pre-training); offsets: the attention offsets (or None);
    origins: (N,2) the local patches' corners; completed: ``x2*mask + image*(1-mask)`` (None
    without ``x2``); distance: the precomputed hole distance (N,1,H,W) for the ``nearest_known``
    discount, or None. Build it with :meth:`of`.
    """

    image: torch.Tensor
    mask: torch.Tensor
    x1: torch.Tensor
    x2: torch.Tensor | None
    offsets: torch.Tensor | None
    origins: torch.Tensor
    completed: torch.Tensor | None
    distance: torch.Tensor | None = None
    # The nearest_known discount weights by gamma, made once per step for every hole term
    # (without ``distance`` they cost an erosion pass per ring of the hole).
    _discounts: dict[float, torch.Tensor] = field(default_factory=dict, repr=False, compare=False)

    def discount_weights(self, gamma: float) -> torch.Tensor:
        """:func:`nearest_known_discount` of this step's holes, (N,1,H,W), computed once."""
        if gamma not in self._discounts:
            mask = self.mask.expand(self.image.shape[0], *self.mask.shape[1:])
            self._discounts[gamma] = nearest_known_discount(mask, gamma, self.distance)
        return self._discounts[gamma]

    @classmethod
    def of(
        cls,
        image: torch.Tensor,
        mask: torch.Tensor,
        x1: torch.Tensor,
        x2: torch.Tensor | None,
        patch_size: int,
        offsets: torch.Tensor | None = None,
        distance: torch.Tensor | None = None,
    ) -> StepOutputs:
        """The step's outputs, with the local patches (side ``patch_size``) and the composite."""
        origins = local_patches(mask.expand(image.shape[0], *mask.shape[1:]), patch_size)
        completed = None if x2 is None else composite(x2, image, mask)
        return cls(image, mask, x1, x2, offsets, origins, completed, distance)


@dataclass
class Loss:
    """A loss to minimise and its named parts, logged as ``train/<name>`` (0-dim tensors).

    total: what the optimiser minimises, logged as ``train/<total_name>``; terms: the parts (the
    weighted terms before their weights, and diagnostics such as the critics' gaps).
    """

    total_name: str
    total: torch.Tensor
    terms: dict[str, torch.Tensor]

    def __getitem__(self, name: str) -> torch.Tensor:
        return self.total if name == self.total_name else self.terms[name]

    def logged(self, prefix: str = "train/") -> dict[str, torch.Tensor]:
        """Every value, detached, keyed ``<prefix><name>``: what the training step logs."""
        values = {self.total_name: self.total, **self.terms}
        return {f"{prefix}{name}": value.detach() for name, value in values.items()}


def _hole_term(
    step: StepOutputs, config: LossConfig, error: Callable[[torch.Tensor], torch.Tensor]
) -> torch.Tensor:
    """``coarse * E(x1) + E(x2)`` (no ``x2`` term in the coarse pre-training), where ``E`` is
    the spatially discounted mean of ``error(image - x)`` in the form ``config.discount`` names."""
    outputs = [(config.weights.coarse, step.x1)] + ([(1.0, step.x2)] if step.x2 is not None else [])
    image, size = step.image, config.patch_size
    if config.discount == "none":
        return sum(w * error(image - x).mean() for w, x in outputs)
    if config.discount == "box":
        crops = crop_patches(step.origins, size, image, *(x for _, x in outputs))
        weights = box_discount(size, size, config.gamma, image.device, image.dtype)
        pairs = zip(outputs, crops[1:], strict=True)
        return sum(w * (error(crops[0] - x) * weights).mean() for (w, _), x in pairs)
    weights = step.discount_weights(config.gamma)
    return sum(w * discounted_mean(error(image - x), weights) for w, x in outputs)


def l1_term(step: StepOutputs, config: LossConfig, critics=None) -> torch.Tensor:
    """The spatially discounted L1 loss ``coarse * L1(x1) + L1(x2)`` (no ``x2`` term in the
    coarse pre-training).

    ``box`` (official): :func:`box_discount` over the local patch at ``step.origins``, a plain
    mean over patch and channels. ``nearest_known``: :func:`nearest_known_discount` over the whole
    image, averaged over the hole (right for free-form holes, which need not fit any patch).
    ``none`` (v2): ``mean |image - x|`` over the whole image, hole and known pixels alike.
    """
    return _hole_term(step, config, torch.abs)


def l2_term(step: StepOutputs, config: LossConfig, critics=None) -> torch.Tensor:
    """:func:`l1_term` with squared errors, ``coarse * L2(x1) + L2(x2)``, same discount and
    support. Not in the papers: L1 pulls an uncertain pixel to the median of what could be there,
    squared errors to the mean, which is what PSNR rewards; a short run that is still uncertain
    over much of a hole scores higher on PSNR and SSIM with it (docs/training.md)."""
    return _hole_term(step, config, torch.square)


def ae_term(step: StepOutputs, config: LossConfig, critics=None) -> torch.Tensor:
    """The AE loss on the known pixels (:func:`ae_loss`)."""
    return ae_loss(step.image, step.x1, step.x2, step.mask, config.weights.coarse)


Critics = tuple[torch.nn.Module, torch.nn.Module] | SNPatchGANCritic


def adversarial_term(step: StepOutputs, config: LossConfig, critics: Critics | None = None) -> torch.Tensor:
    """v1, ``critics = (global, local)``: ``global_wgan * -mean(D_global(completed)) -
    mean(D_local(completed patch))``; v2, an :class:`SNPatchGANCritic`: the hinge generator loss
    ``-mean(D(completed, mask))``. 0 without critics or without ``x2`` (the reconstruction
    phases)."""
    if critics is None or step.completed is None:
        return torch.zeros((), device=step.image.device, dtype=step.x1.dtype)
    if isinstance(critics, SNPatchGANCritic):
        return hinge_generator_loss(critics(step.completed, step.mask))
    global_critic, local_critic = critics
    (fake_local,) = crop_patches(step.origins, config.patch_size, step.completed)
    g_global = wgan_generator_loss(global_critic(step.completed))
    g_local = wgan_generator_loss(local_critic(fake_local))
    return config.weights.global_wgan * g_global + g_local


@dataclass(frozen=True)
class LossTerm:
    """A generator loss term: its function and the :class:`LossWeights` field that weighs it."""

    function: Callable[..., torch.Tensor]  # (step, config, critics) -> 0-dim tensor
    weight: str
    # Not in the papers: computed and logged only when its weight is not 0, so that the papers'
    # runs log and compute what the official code does.
    optional: bool = False


# The generator's loss is the weighted sum of these terms, each logged as train/<name>: a new
# term is one function, one LossWeights field and one entry here.
GENERATOR_TERMS: dict[str, LossTerm] = {
    "l1": LossTerm(l1_term, "l1"),
    "ae": LossTerm(ae_term, "ae"),
    "l2": LossTerm(l2_term, "l2", optional=True),
    "g_adv": LossTerm(adversarial_term, "gan"),
}


def generator_loss(step: StepOutputs, config: LossConfig, critics: Critics | None = None) -> Loss:
    """The official generator loss (``g_loss``), the weighted sum of :data:`GENERATOR_TERMS`:
    v1 ``gan * (global_wgan * g_global + g_local) + l1 * L1 + ae * AE``; v2 (discount ``none``,
    ``ae = 0``, an SN-PatchGAN critic) ``gan * g_hinge + l1 * (mean|x - x1| + mean|x - x2|)``;
    plus ``l2 * L2`` (:func:`l2_term`, weight 0 in both papers).

    ``critics``: ``(global, local)`` or an :class:`SNPatchGANCritic`, adds the adversarial term
    on ``step.completed``; without them (the reconstruction phases) it is 0.
    """
    weights = config.weights
    terms = {
        name: term.function(step, config, critics)
        for name, term in GENERATOR_TERMS.items()
        if not term.optional or getattr(weights, term.weight) != 0
    }
    total = sum(getattr(weights, GENERATOR_TERMS[name].weight) * value for name, value in terms.items())
    return Loss("g_loss", total, terms)


def critic_loss(
    global_critic: torch.nn.Module,
    local_critic: torch.nn.Module,
    step: StepOutputs,
    config: LossConfig,
    alpha_global: torch.Tensor,
    alpha_local: torch.Tensor,
) -> Loss:
    """The official critics' loss (``d_loss``): both WGAN losses (``d_global``, ``d_local``, no
    global weight on this side) plus ``gp``, the gradient-penalty weight times the sum of both
    masked penalties. Also ``critic_gap_global`` / ``_local``, ``mean(D(real)) - mean(D(fake))``:
    the critics' Wasserstein estimates.

    The fakes are ``step.completed`` (no gradient needed); alpha_global, alpha_local: (N,)
    interpolation factors of the penalties in [0,1).
    """
    real, fake, mask = step.image, step.completed.detach(), step.mask
    mask_local, real_local, fake_local = crop_patches(step.origins, config.patch_size, mask, real, fake)
    n = real.shape[0]
    # Each critic scores real and fake in one call, as the official graph does.
    scores_global = global_critic(torch.cat([real, fake]))
    scores_local = local_critic(torch.cat([real_local, fake_local]))
    wgan_global = wgan_critic_loss(scores_global[:n], scores_global[n:])
    wgan_local = wgan_critic_loss(scores_local[:n], scores_local[n:])
    gp_local = gradient_penalty(local_critic, real_local, fake_local, mask_local, alpha_local)
    gp_global = gradient_penalty(global_critic, real, fake, mask, alpha_global)
    gp = config.weights.gp * (gp_local + gp_global)
    terms = {
        "d_global": wgan_global,
        "d_local": wgan_local,
        "gp": gp,
        "critic_gap_global": -wgan_global.detach(),
        "critic_gap_local": -wgan_local.detach(),
    }
    return Loss("d_loss", wgan_global + wgan_local + gp, terms)


def patch_critic_loss(critic: SNPatchGANCritic, step: StepOutputs) -> Loss:
    """The official v2 critic loss (``d_loss``): the hinge loss of the SN-PatchGAN critic on the
    real images and the completed ones, each with the mask as a fourth channel, scored in one
    call as the official graph does (real first). Also ``critic_gap``,
    ``mean(D(real)) - mean(D(fake))``. The fakes (``step.completed``) need no gradient."""
    real, fake = step.image, step.completed.detach()
    mask = step.mask.expand(real.shape[0], *step.mask.shape[1:])
    scores = critic(torch.cat([real, fake]), torch.cat([mask, mask]))
    n = real.shape[0]
    hinge = hinge_critic_loss(scores[:n], scores[n:])
    gap = (scores[:n].mean() - scores[n:].mean()).detach()
    return Loss("d_loss", hinge, {"d_hinge": hinge.detach(), "critic_gap": gap})
