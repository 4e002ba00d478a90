"""DeepFillModule: the two generator stages and their critics, trained as in the papers: v1's two
WGAN-GP critics (global and local), or v2's SN-PatchGAN critic with the hinge loss.

Manual optimisation with the official schedule (neuralgym's ``SecondaryTrainer``): each
generator iteration makes ``n_critic`` critic updates, each on its own batch (fakes detached),
then one generator update on a fresh batch with the critics frozen. So 12 batches with
``n_critic=5`` give 10 critic and 2 generator updates (v2's official schedule: ``n_critic=1``).
A critic update skipped for a non-finite loss does not count towards the ``n_critic``.

Two optional phases come first, each one generator update per batch and no critic cost:
``pretrain_coarse_steps`` of the official coarse pre-training (stage 1 alone on the
reconstruction losses), then ``reconstruction_steps`` of both stages on the reconstruction
losses. Short runs (the quickstart) use them to learn to fill before the adversarial phase.

The module orchestrates; the maths lives in :mod:`deepfill.training.losses` and
:mod:`deepfill.evaluation.metrics`.
"""

from __future__ import annotations

import copy
import functools
import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import pytorch_lightning as pl
import torch
from torch.profiler import record_function

from deepfill.evaluation.means import InpaintingMetrics
from deepfill.evaluation.metrics import METRICS
from deepfill.models import GlobalCritic, InpaintGenerator, LocalCritic, SNPatchGANCritic
from deepfill.training.losses import (
    Loss,
    LossConfig,
    LossWeights,
    StepOutputs,
    critic_loss,
    generator_loss,
    patch_critic_loss,
)
from deepfill.training.resume import normalize_loops
from deepfill.training.visuals import COLUMNS, inpainting_grid, log_grid
from deepfill.utils.errors import UserError
from deepfill.utils.images import to_unit

__all__ = ["DeepFillModule", "NonFiniteLossError"]


class NonFiniteLossError(UserError, RuntimeError):
    """Too many consecutive non-finite losses: the settings (learning rate, loss weights,
    precision) make the run diverge; reported in one line, the last good checkpoint kept."""


def _describe(factory) -> dict:
    """An optimiser factory as plain hyper-parameters: its class and keyword arguments."""
    target = getattr(factory, "func", factory)
    described = {"class": f"{target.__module__}.{target.__qualname__}"}
    for key, value in getattr(factory, "keywords", {}).items():
        described[key] = list(value) if isinstance(value, tuple | list) else value
    return described


_COUNTERS = ("critic_steps", "generator_steps", "critic_since_generator", "nonfinite_streak")


def _resized(
    image: torch.Tensor, mask: torch.Tensor, distance: torch.Tensor | None, scale: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """A batch at ``scale`` times its side: the image averaged over each block (``area``), the
    hole every block with a hole pixel in it (what the network must fill stays a hole), and the
    hole distance recomputed on that hole when the batch has one. image: (N,3,H,W); mask:
    (N or 1,1,H,W), 1 = hole; distance: (N,1,H,W) or None."""
    size = (round(image.shape[-2] * scale), round(image.shape[-1] * scale))
    image = torch.nn.functional.interpolate(image, size=size, mode="area")
    mask = (torch.nn.functional.interpolate(mask.to(image.dtype), size=size, mode="area") > 0).to(mask.dtype)
    if distance is not None:
        from deepfill.data.masks import hole_distance

        distance = torch.stack([hole_distance(m.cpu()) for m in mask]).to(distance.device, distance.dtype)
    return image, mask, distance


def _grad_norm(parameters) -> torch.Tensor:
    grads = [p.grad.detach().norm() for p in parameters if p.grad is not None]
    return torch.stack(grads).norm() if grads else torch.tensor(0.0)


class DeepFillModule(pl.LightningModule):
    """DeepFill training, v1 or v2 (the critics given choose the adversarial loss).

    Args:
        generator: :class:`InpaintGenerator` (v1, or v2 with ``gated=True``).
        global_critic, local_critic: v1's WGAN-GP critics (their input sizes set the image size
            and the local crop size); or
        critic: v2's :class:`SNPatchGANCritic` (hinge loss on ``[image, mask]``; its
            ``input_size`` is the image size), instead of those two.
        loss: :class:`LossWeights` or a dict of its fields.
        optimizer: makes one optimiser from parameters (``functools.partial`` of a
            ``torch.optim`` class, as Hydra's ``_partial_: true`` gives); one for the generator,
            one for both critics. Default: the paper's Adam, lr 1e-4, betas (0.5, 0.9).
        lr_decay_steps: cosine decay of both learning rates from their initial value to 0 over this many
            generator updates (all phases counted); 0 keeps them constant (paper).
        lr_restart: with a coarse pre-training inside ``lr_decay_steps``, two cosines instead of
            one: from 1 to 0 over the pre-training, and again from 1 to 0 over the rest, so that
            stage 2, untrained until the pre-training ends, starts at the full rate (not in the
            paper; for short runs).
        n_critic: critic updates per generator update (paper: 5).
        pretrain_coarse_steps: the first K generator updates train stage 1 alone with L1 + AE,
            one per batch, no critics (official PRETRAIN_COARSE_NETWORK).
        coarse_scale: those K updates see each batch resized by this factor (1: as it comes;
            0.5: half the side, a quarter of the work per update, so a short run affords more
            of them; the coarse network is fully convolutional). The hole is shrunk to every
            block that held a hole pixel.
        reconstruction_steps: the next R generator updates train both stages with L1 + AE
            alone, one per batch, no critics (not in the paper; for short runs).
        ema_decay: keep an exponential moving average of the generator's weights
            (``generator_ema``) with this decay per generator update (0: none; warmed up as
            ``min(ema_decay, (1 + t) / (10 + t))`` after t updates, so that it follows the first
            updates closely). Validation, test and the checkpoints' generator
            (:func:`deepfill.inference.generator_from_checkpoint`) use the average.
        discount: spatial discount form, ``"box"`` (official) or ``"nearest_known"`` (paper,
            right for free-form holes); gamma: its base (0.9).
        max_nonfinite: stop after this many non-finite losses in a row (each one is skipped).
        log_images_every_n_steps: image grids every N generator updates (0: never).
        lpips, lpips_required, lpips_pretrained: see :class:`deepfill.evaluation.means.InpaintingMetrics`.
        seed: seeds the gradient penalty's interpolation factors by ``(seed, critic step)``, so a
            resumed run draws what the uninterrupted run would have drawn.
        compile: ``torch.compile`` the generator's stages and both critics, with
            ``compile_options`` (its arguments, e.g. ``{"backend": "aot_eager"}``); each traces
            to one graph, and a compiled step gives the eager step's losses (tests). For GPUs;
            on a CPU, a benchmark question.
    """

    def __init__(
        self,
        generator: InpaintGenerator,
        global_critic: GlobalCritic | None = None,
        local_critic: LocalCritic | None = None,
        loss: LossWeights | dict | None = None,
        optimizer: Callable[[Iterable[torch.nn.Parameter]], torch.optim.Optimizer] | None = None,
        n_critic: int = 5,
        pretrain_coarse_steps: int = 0,
        reconstruction_steps: int = 0,
        lr_decay_steps: int = 0,
        lr_restart: bool = False,
        coarse_scale: float = 1.0,
        ema_decay: float = 0.0,
        discount: str = "box",
        gamma: float = 0.9,
        max_nonfinite: int = 10,
        log_images_every_n_steps: int = 500,
        lpips: bool = True,
        lpips_required: bool = False,
        lpips_pretrained: bool = True,
        seed: int = 0,
        compile: bool = False,
        compile_options: dict | None = None,
        critic: SNPatchGANCritic | None = None,
    ) -> None:
        super().__init__()
        if n_critic < 1:
            raise ValueError(f"model.n_critic must be >= 1, got {n_critic!r}")
        if (critic is None) == (global_critic is None or local_critic is None) or (
            critic is not None and (global_critic, local_critic) != (None, None)
        ):
            raise ValueError(
                "model: give either model.global_critic and model.local_critic (DeepFill v1) or "
                "model.critic (DeepFill v2's SN-PatchGAN), not both or neither"
            )
        size = critic.input_size if critic is not None else global_critic.input_size
        # The local patch: the local critic's input; v2 has none, and its losses need none
        # (a box discount, should a v2 run ask for one, reads the official box, half the side).
        patch = local_critic.input_size if local_critic is not None else size // 2
        if size % generator.multiple:
            raise ValueError(
                f"data.image_size must be divisible by 4 * attention rate = {generator.multiple}, got {size}"
            )
        for name, value in (
            ("pretrain_coarse_steps", pretrain_coarse_steps),
            ("reconstruction_steps", reconstruction_steps),
            ("lr_decay_steps", lr_decay_steps),
        ):
            if value < 0:
                raise ValueError(f"model.{name} must be >= 0, got {value!r}")
        if not (isinstance(coarse_scale, int | float) and 0 < coarse_scale <= 1):
            raise ValueError(f"model.coarse_scale must be in (0, 1], got {coarse_scale!r}")
        coarse_size = round(size * coarse_scale)
        if coarse_size < 4 or coarse_size % 4:
            raise ValueError(
                f"model.coarse_scale={coarse_scale} gives the coarse pre-training images of side "
                f"{coarse_size}; it must be a positive multiple of 4 (data.image_size={size})"
            )
        if not (isinstance(ema_decay, int | float) and 0 <= ema_decay < 1):
            raise ValueError(f"model.ema_decay must be in [0, 1), got {ema_decay!r}")
        if not isinstance(compile, bool):
            raise ValueError(f"model.compile must be true or false, got {compile!r}")
        if not isinstance(lr_restart, bool):
            raise ValueError(f"model.lr_restart must be true or false, got {lr_restart!r}")
        if not isinstance(compile_options, Mapping | None):
            raise ValueError(
                f"model.compile_options must be a mapping of torch.compile arguments, got {compile_options!r}"
            )
        self.automatic_optimization = False
        # The average is a copy of the eager generator (made before compiling), never trained.
        self.ema_decay = float(ema_decay)
        self.generator_ema = copy.deepcopy(generator).requires_grad_(False) if ema_decay else None
        if compile:
            # In place: parameter names, and so checkpoints, stay those of the eager modules.
            options = dict(compile_options or {})
            generator.compile_stages(**options)
            for network in (global_critic, local_critic, critic):
                if network is not None:
                    network.compile(**options)
        self.generator = generator
        self.global_critic = global_critic
        self.local_critic = local_critic
        self.critic = critic
        weights = loss if isinstance(loss, LossWeights) else LossWeights(**(loss or {}))
        # One loss configuration; the local patch side is the local critic's input size.
        self.loss_config = LossConfig(weights, discount, gamma, patch)
        # The coarse pre-training's local patch shrinks with its images.
        self.coarse_scale = float(coarse_scale)
        self.coarse_loss_config = LossConfig(weights, discount, gamma, max(1, round(patch * coarse_scale)))
        self.optimizer_factory = optimizer or functools.partial(torch.optim.Adam, lr=1e-4, betas=(0.5, 0.9))
        try:  # its own checks (a negative lr, betas out of range), here rather than at fit time
            self.optimizer_factory([torch.nn.Parameter(torch.zeros(1))])
        except (ValueError, TypeError) as error:
            raise ValueError(f"model.optimizer: {error}") from None
        self.n_critic, self.pretrain_coarse_steps = n_critic, pretrain_coarse_steps
        self.reconstruction_steps, self.lr_decay_steps = reconstruction_steps, lr_decay_steps
        self.lr_restart = lr_restart
        self.max_nonfinite = max_nonfinite
        self.seed = seed
        self.log_images_every_n_steps = log_images_every_n_steps
        # Separate objects: a test run after validation must not mix in validation's images.
        self.val_metrics = InpaintingMetrics(lpips, lpips_required, lpips_pretrained)
        with_lpips = self.val_metrics.lpips is not None  # asked once: one warning, not two
        self.test_metrics = InpaintingMetrics(with_lpips, lpips_required, lpips_pretrained)
        # Schedule state lives in buffers so checkpoints carry it and resume continues exactly.
        # The steps read Python copies (`_counts`, read from the buffers once per fit): reading a
        # buffer on a GPU would stall its queue at every batch.
        for name in _COUNTERS:
            self.register_buffer(name, torch.zeros((), dtype=torch.long))
        self._counts = dict.fromkeys(_COUNTERS, 0)
        # Every argument, as the config gave it (seed, max_nonfinite, compile, the LPIPS flags,
        # ...); the networks, the loss weights and the optimiser factory as plain values a
        # checkpoint can be read and rebuilt from.
        self.save_hyperparameters(
            ignore=["generator", "global_critic", "local_critic", "critic", "loss", "optimizer"]
        )
        from omegaconf import DictConfig, ListConfig, OmegaConf

        # Plain containers: a checkpoint must load with torch.load(weights_only=True), which
        # refuses OmegaConf's classes (Hydra passes mappings such as compile_options as them).
        plain = {
            key: OmegaConf.to_container(value, resolve=True)
            if isinstance(value, DictConfig | ListConfig)
            else value
            for key, value in self.hparams.items()
        }
        self.save_hyperparameters(
            {
                **plain,
                "generator": generator.config,
                # v2's critic as its settings; v1's critics as their sizes.
                "critic": critic.config if critic is not None else None,
                **(
                    {}
                    if critic is not None
                    else {
                        "global_critic_size": global_critic.input_size,
                        "local_critic_size": local_critic.input_size,
                    }
                ),
                "loss": weights.__dict__,
                "optimizer": _describe(self.optimizer_factory),
            }
        )

    # ------------------------------------------------------------------ setup
    def configure_optimizers(self):
        optimizers = [
            self.optimizer_factory(self.generator.parameters()),
            self.optimizer_factory(self.critic_parameters()),
        ]
        for optimizer in optimizers:
            for group in optimizer.param_groups:
                group.setdefault("initial_lr", group["lr"])  # what the cosine decay scales
        return optimizers

    # ------------------------------------------------------------------ helpers
    @property
    def adversary(self) -> SNPatchGANCritic | tuple[GlobalCritic, LocalCritic]:
        """What the adversarial losses take: v2's critic, or v1's (global, local) pair."""
        return self.critic if self.critic is not None else (self.global_critic, self.local_critic)

    def critic_parameters(self) -> list[torch.nn.Parameter]:
        """Every critic's parameters (the critics' optimiser updates them together)."""
        critics = (self.critic,) if self.critic is not None else (self.global_critic, self.local_critic)
        return [p for critic in critics for p in critic.parameters()]

    def critic_loss(self, step: StepOutputs, critic_steps: int) -> Loss:
        """The critics' loss on ``step`` (its completed images as the fakes): v2's hinge loss, or
        v1's WGAN-GP, whose penalty interpolates with factors seeded by ``(seed, critic_steps)``
        (drawn where they are used, no copy to a GPU), so a resumed run draws what the
        uninterrupted run would have drawn."""
        if self.critic is not None:
            return patch_critic_loss(self.critic, step)
        image = step.image
        draw = torch.Generator(device=image.device)
        draw.manual_seed(self.seed * 1_000_003 + critic_steps)
        alpha = torch.rand(2, image.shape[0], generator=draw, device=image.device).to(image.dtype)
        return critic_loss(self.global_critic, self.local_critic, step, self.loss_config, alpha[0], alpha[1])

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # Before Lightning restores its loops from it: a checkpoint taken after an epoch ended
        # resumes as the next epoch's start, one taken after a stop part-way through an epoch
        # as that epoch under way, whether the run counts steps or epochs.
        normalize_loops(checkpoint)
        # Checkpoints written before the optimiser became configurable lack the initial rate
        # the cosine decay scales: take the configured one.
        initial = getattr(self.optimizer_factory, "keywords", {}).get("lr")
        for state in checkpoint.get("optimizer_states", []):
            for group in state.get("param_groups", []):
                group.setdefault("initial_lr", initial if initial is not None else group["lr"])

    def on_train_start(self) -> None:
        # After any checkpoint restore: the one read of the counters per fit.
        self._counts = {name: int(getattr(self, name)) for name in _COUNTERS}

    def _set_count(self, name: str, value: int) -> None:
        self._counts[name] = value
        getattr(self, name).fill_(value)  # a write, queued like any kernel: no host sync

    def _finite_or_skip(self, loss: torch.Tensor, name: str, optimizer) -> bool:
        """Skip an update whose loss is NaN/Inf (after its backward: the decision is the step's
        one read back to the host, made once the backward is queued); stop after
        ``max_nonfinite`` in a row.

        Under DDP the ranks decide together (skip when any rank's loss is not finite): a rank
        that skipped alone would leave the others waiting in the next gradient all-reduce."""
        finite = bool(torch.isfinite(loss))
        distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
        if distributed and torch.distributed.get_world_size() > 1:
            finite = self.trainer.strategy.reduce_boolean_decision(finite, all=True)
        streak = 0 if finite else self._counts["nonfinite_streak"] + 1
        if streak != self._counts["nonfinite_streak"]:
            self._set_count("nonfinite_streak", streak)
        if finite:
            return True
        optimizer.zero_grad(set_to_none=True)
        self.log("train/nonfinite_skipped", float(streak), on_step=True)
        if streak >= self.max_nonfinite:
            raise NonFiniteLossError(
                f"{streak} non-finite {name} values in a row (max_nonfinite="
                f"{self.max_nonfinite}); stopping, the last checkpoint written before them is kept"
            )
        return False

    # ------------------------------------------------------------------ training
    def lr_factor(self, generator_steps: int) -> float:
        """The learning rates after ``generator_steps`` generator updates, as a fraction of their
        initial values: a cosine from 1 to 0 over ``lr_decay_steps`` (1 when that is 0); with
        ``lr_restart``, one over the coarse pre-training and one over the rest."""
        if self.lr_decay_steps <= 0:
            return 1.0
        start, length = 0, self.lr_decay_steps
        pretrain = self.pretrain_coarse_steps
        if self.lr_restart and 0 < pretrain < self.lr_decay_steps:
            start, length = (0, pretrain) if generator_steps < pretrain else (pretrain, length - pretrain)
        progress = min((generator_steps - start) / length, 1.0)
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        image, mask = batch["image"], batch["mask"]
        distance = batch.get("hole_distance")  # precomputed by the data module's workers
        opt_g, opt_d = self.optimizers()
        steps = self._counts["generator_steps"]
        if self.lr_decay_steps:
            # A function of the step count (saved in checkpoints), so resume continues exactly.
            for optimizer in (opt_g, opt_d):
                for group in optimizer.param_groups:
                    group["lr"] = group["initial_lr"] * self.lr_factor(steps)
        if steps < self.pretrain_coarse_steps:
            self._generator_step(image, mask, opt_g, "coarse", distance)
        elif steps < self.pretrain_coarse_steps + self.reconstruction_steps:
            self._generator_step(image, mask, opt_g, "reconstruction", distance)
        elif self._counts["critic_since_generator"] < self.n_critic:
            # A skipped (non-finite) critic update does not count towards the n_critic.
            if self._critic_step(image, mask, opt_d):
                self._set_count("critic_since_generator", self._counts["critic_since_generator"] + 1)
        elif self._generator_step(image, mask, opt_g, "adversarial", distance):
            self._set_count("critic_since_generator", 0)

    def phase_outputs(
        self, generator: InpaintGenerator, image, mask, phase: str = "adversarial", distance=None
    ) -> StepOutputs:
        """``generator`` on a batch as the training step of ``phase`` runs it (stage 1 alone in
        the coarse phase, on the batch resized by ``coarse_scale``), with what the losses of
        :meth:`loss_config_for` that phase read. ``distance``: the batch's hole distance for the
        ``nearest_known`` discount, or None."""
        config = self.loss_config_for(phase)
        # The data module's masks are binary by construction: no check (a host sync).
        if phase == "coarse":
            if self.coarse_scale != 1.0:
                image, mask, distance = _resized(image, mask, distance, self.coarse_scale)
            x1, x2, offsets = generator.coarse_only(image, mask, check_mask=False), None, None
        else:
            x1, x2, offsets = generator(image, mask, check_mask=False)
        return StepOutputs.of(image, mask, x1, x2, config.patch_size, offsets, distance)

    def loss_config_for(self, phase: str) -> LossConfig:
        """What the losses of ``phase`` read: the coarse pre-training's local patch is scaled
        with its images."""
        return self.coarse_loss_config if phase == "coarse" else self.loss_config

    def _forward(self, image, mask, phase: str = "adversarial", distance=None) -> StepOutputs:
        return self.phase_outputs(self.generator, image, mask, phase, distance)

    def _critic_step(self, image, mask, opt_d) -> bool:
        # record_function ranges name the parts of a step in profiles (free when not profiling).
        with torch.no_grad(), record_function("deepfill/critic_step/generator_forward"):
            step = self._forward(image, mask)
        with record_function("deepfill/critic_step/critics"):
            loss = self.critic_loss(step, self._counts["critic_steps"])
        opt_d.zero_grad(set_to_none=True)
        with record_function("deepfill/critic_step/backward"):
            self.manual_backward(loss.total)
        if not self._finite_or_skip(loss.total.detach(), "critic loss", opt_d):
            return False
        grad_norm = _grad_norm(self.critic_parameters())
        opt_d.step()
        self._set_count("critic_steps", self._counts["critic_steps"] + 1)
        self.log_dict({**loss.logged("train/"), "train/grad_norm_d": grad_norm}, on_step=True, prog_bar=False)
        return True

    def _generator_step(self, image, mask, opt_g, phase: str = "adversarial", distance=None) -> bool:
        """One generator update; False when it was skipped (non-finite loss). ``distance``: the
        batch's precomputed hole distance, for the ``nearest_known`` discount (or None).

        ``phase``: ``"coarse"`` (official PRETRAIN_COARSE_NETWORK: stage 1 alone on the
        reconstruction losses), ``"reconstruction"`` (both stages, reconstruction losses) or
        ``"adversarial"`` (the full loss).
        """
        self.toggle_optimizer(opt_g)  # critics frozen: their weights get no gradient
        try:
            with record_function("deepfill/generator_step/forward"):
                step = self._forward(image, mask, phase, distance)
            critics = self.adversary if phase == "adversarial" else None
            loss = generator_loss(step, self.loss_config_for(phase), critics)
            opt_g.zero_grad(set_to_none=True)
            with record_function("deepfill/generator_step/backward"):
                self.manual_backward(loss.total)
            if not self._finite_or_skip(loss.total.detach(), f"{phase} generator loss", opt_g):
                return False
            grad_norm = _grad_norm(self.generator.parameters())
            opt_g.step()
            self._update_ema()
        finally:
            self.untoggle_optimizer(opt_g)
        self._set_count("generator_steps", self._counts["generator_steps"] + 1)
        extra = {"train/grad_norm_g": grad_norm, "train/generator_steps": self.generator_steps.float()}
        self.log_dict({**loss.logged("train/"), **extra}, on_step=True, prog_bar=True)
        if step.x2 is not None:
            self._maybe_log_images("train/samples", step)
        return True

    @torch.no_grad()
    def _update_ema(self) -> None:
        """Move the average towards the generator's new weights (after its optimiser step)."""
        if self.generator_ema is None:
            return
        done = self._counts["generator_steps"]  # updates before this one
        decay = min(self.ema_decay, (1 + done) / (10 + done))
        averaged = list(self.generator_ema.parameters())
        torch._foreach_lerp_(averaged, [p.detach() for p in self.generator.parameters()], 1 - decay)
        for average, buffer in zip(self.generator_ema.buffers(), self.generator.buffers(), strict=True):
            average.copy_(buffer)

    @property
    def evaluated_generator(self) -> InpaintGenerator:
        """The generator that validation, test and the checkpoints' users see: the average of its
        weights when the run keeps one (``ema_decay``), else the trained one."""
        return self.generator_ema if self.generator_ema is not None else self.generator

    def _maybe_log_images(self, key: str, step: StepOutputs, force: bool = False) -> None:
        every = self.log_images_every_n_steps
        count = self._counts["generator_steps"]
        if not self.trainer.is_global_zero or (not force and (every <= 0 or count % every != 0)):
            return
        with torch.no_grad():
            grid = inpainting_grid(step.image, step.mask, step.x1, step.x2, step.offsets, step.completed)
        log_grid(self.trainer, key, grid, " | ".join(COLUMNS), self.global_step)

    # ------------------------------------------------------------------ validation
    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._evaluation_step(batch, batch_idx, "val", self.val_metrics)

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._evaluation_step(batch, batch_idx, "test", self.test_metrics)

    def _evaluation_step(
        self, batch: dict[str, Any], batch_idx: int, split: str, metrics: InpaintingMetrics
    ) -> None:
        """One batch of validation or test: the completed images scored into ``metrics``, logged
        per epoch as ``<split>/<metric>``; validation also shows its first batch's images."""
        step = self.phase_outputs(self.evaluated_generator, batch["image"], batch["mask"])
        metrics.update(to_unit(step.completed), to_unit(step.image), step.mask)
        shown = split == "val"
        for name, metric in metrics.metrics().items():
            self.log(
                f"{split}/{name}",
                metric,
                on_step=False,
                on_epoch=True,
                prog_bar=shown and METRICS[name].progress_bar,
            )
        if shown and batch_idx == 0:
            self._maybe_log_images("val/samples", step, force=True)
