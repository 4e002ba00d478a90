"""DeepFillModule: the two generator stages and the two WGAN-GP critics, trained as in the paper.

Manual optimisation with the official schedule: every batch makes one critic update (on
detached fakes); after every ``n_critic`` critic updates the same batch also makes one generator
update, with the critics frozen. So 10 batches with ``n_critic=5`` give 10 critic and 2
generator updates: five critic updates, each on a fresh batch, per generator update.

The module orchestrates; the maths lives in :mod:`deepfill.losses` and :mod:`deepfill.metrics`.
"""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
import torch
from torch.profiler import record_function

from .losses import (
    LossWeights,
    ae_loss,
    crop_around_holes,
    discount_weights,
    discounted_l1,
    gradient_penalty,
    wgan_critic_loss,
    wgan_generator_loss,
)
from .metrics import InpaintingMetrics, to_unit
from .models import GlobalCritic, InpaintGenerator, LocalCritic
from .visuals import COLUMNS, inpainting_grid, log_grid

__all__ = ["DeepFillModule", "NonFiniteLossError"]


class NonFiniteLossError(RuntimeError):
    """Too many consecutive non-finite losses."""


def _grad_norm(parameters) -> torch.Tensor:
    grads = [p.grad.detach().norm() for p in parameters if p.grad is not None]
    return torch.stack(grads).norm() if grads else torch.tensor(0.0)


class DeepFillModule(pl.LightningModule):
    """DeepFill v1 training.

    Args:
        generator: :class:`InpaintGenerator`.
        global_critic, local_critic: the WGAN critics (their input sizes set the image size and
            the local crop size).
        loss: :class:`LossWeights` or a dict of its fields.
        lr, betas: Adam settings of both optimisers (paper: 1e-4, (0.5, 0.9)).
        n_critic: critic updates per generator update (paper: 5).
        pretrain_coarse_steps: first K batches train stage 1 alone with L1 + AE (no critics).
        discount: spatial discount form, ``"box"`` (official) or ``"nearest_known"`` (paper,
            right for free-form holes); gamma: its base (0.9).
        max_nonfinite: stop after this many non-finite losses in a row (each one is skipped).
        log_images_every_n_steps: image grids every N generator updates (0: never).
        lpips, lpips_required, lpips_pretrained: see :class:`deepfill.metrics.InpaintingMetrics`.
        seed: seeds the gradient penalty's interpolation factors by ``(seed, critic step)``, so a
            resumed run draws what the uninterrupted run would have drawn.
    """

    def __init__(
        self,
        generator: InpaintGenerator,
        global_critic: GlobalCritic,
        local_critic: LocalCritic,
        loss: LossWeights | dict | None = None,
        lr: float = 1e-4,
        betas: tuple[float, float] = (0.5, 0.9),
        n_critic: int = 5,
        pretrain_coarse_steps: int = 0,
        discount: str = "box",
        gamma: float = 0.9,
        max_nonfinite: int = 10,
        log_images_every_n_steps: int = 500,
        lpips: bool = True,
        lpips_required: bool = False,
        lpips_pretrained: bool = True,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if n_critic < 1:
            raise ValueError(f"model.n_critic must be >= 1, got {n_critic!r}")
        if discount not in ("box", "nearest_known"):
            raise ValueError(f"model.discount must be 'box' or 'nearest_known', got {discount!r}")
        if lr <= 0:
            raise ValueError(f"model.lr must be > 0, got {lr!r}")
        self.automatic_optimization = False
        self.generator = generator
        self.global_critic = global_critic
        self.local_critic = local_critic
        self.weights = loss if isinstance(loss, LossWeights) else LossWeights(**(loss or {}))
        self.lr, self.betas = lr, tuple(betas)
        self.n_critic, self.pretrain_coarse_steps = n_critic, pretrain_coarse_steps
        self.discount, self.gamma = discount, gamma
        self.max_nonfinite = max_nonfinite
        self.seed = seed
        self.log_images_every_n_steps = log_images_every_n_steps
        self.metrics = InpaintingMetrics(lpips, lpips_required, lpips_pretrained)
        # Schedule state lives in buffers so checkpoints carry it and resume continues exactly.
        self.register_buffer("critic_steps", torch.zeros((), dtype=torch.long))
        self.register_buffer("generator_steps", torch.zeros((), dtype=torch.long))
        self.register_buffer("critic_since_generator", torch.zeros((), dtype=torch.long))
        self.register_buffer("nonfinite_streak", torch.zeros((), dtype=torch.long))
        self.save_hyperparameters(
            {
                "generator": generator.config,
                "global_critic_size": global_critic.input_size,
                "local_critic_size": local_critic.input_size,
                "loss": self.weights.__dict__,
                "lr": lr,
                "betas": list(self.betas),
                "n_critic": n_critic,
                "pretrain_coarse_steps": pretrain_coarse_steps,
                "discount": discount,
                "gamma": gamma,
            }
        )

    # ------------------------------------------------------------------ setup
    def configure_optimizers(self):
        critics = list(self.global_critic.parameters()) + list(self.local_critic.parameters())
        opt_g = torch.optim.Adam(self.generator.parameters(), lr=self.lr, betas=self.betas)
        opt_d = torch.optim.Adam(critics, lr=self.lr, betas=self.betas)
        return [opt_g, opt_d]

    def forward(self, image: torch.Tensor, mask: torch.Tensor):
        return self.generator(image, mask)

    @staticmethod
    def generator_from_checkpoint(path: str, map_location: str | torch.device = "cpu") -> InpaintGenerator:
        """Rebuild the trained generator from a Lightning checkpoint of this module."""
        checkpoint = torch.load(path, map_location=map_location, weights_only=False)
        config = checkpoint.get("hyper_parameters", {}).get("generator")
        if config is None:
            raise ValueError(f"{path}: not a DeepFillModule checkpoint (no generator hyper-parameters)")
        generator = InpaintGenerator(**config)
        prefix = "generator."
        state = {k[len(prefix) :]: v for k, v in checkpoint["state_dict"].items() if k.startswith(prefix)}
        generator.load_state_dict(state)
        return generator.eval()

    # ------------------------------------------------------------------ helpers
    @property
    def local_size(self) -> int:
        return self.local_critic.input_size

    def _composite(self, image, mask, x2):
        return x2 * mask + image * (1 - mask)

    def _finite(self, loss: torch.Tensor, name: str) -> bool:
        """Skip an update whose loss is NaN/Inf; stop after ``max_nonfinite`` in a row."""
        if bool(torch.isfinite(loss)):
            self.nonfinite_streak.zero_()
            return True
        self.nonfinite_streak += 1
        self.log("train/nonfinite_skipped", self.nonfinite_streak.float(), on_step=True)
        if int(self.nonfinite_streak) >= self.max_nonfinite:
            raise NonFiniteLossError(
                f"{int(self.nonfinite_streak)} non-finite {name} values in a row (max_nonfinite="
                f"{self.max_nonfinite}); stopping, the last checkpoint written before them is kept"
            )
        return False

    # ------------------------------------------------------------------ training
    def training_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        image, mask = batch["image"], batch["mask"]
        opt_g, opt_d = self.optimizers()
        if int(self.generator_steps) < self.pretrain_coarse_steps:
            self._pretrain_step(image, mask, opt_g)
            return
        self._critic_step(image, mask, opt_d)
        self.critic_since_generator += 1
        if int(self.critic_since_generator) >= self.n_critic:
            self.critic_since_generator.zero_()
            self._generator_step(image, mask, opt_g, batch_idx)

    def _critic_scores(self, real, fake, mask):
        """Global and local critic scores of real and fake, each critic run once on both."""
        mask_local, real_local, fake_local = crop_around_holes(mask, self.local_size, real, fake)
        n = real.shape[0]
        scores_global = self.global_critic(torch.cat([real, fake]))
        scores_local = self.local_critic(torch.cat([real_local, fake_local]))
        return (
            scores_global[:n],
            scores_global[n:],
            scores_local[:n],
            scores_local[n:],
            (
                mask_local,
                real_local,
                fake_local,
            ),
        )

    def _critic_step(self, image, mask, opt_d) -> None:
        # record_function ranges name the parts of a step in profiles (free when not profiling).
        with torch.no_grad(), record_function("deepfill/critic_step/generator_forward"):
            _, x2, _ = self.generator(image, mask)
            fake = self._composite(image, mask, x2)
        with record_function("deepfill/critic_step/critics"):
            real_g, fake_g, real_l, fake_l, (mask_local, image_local, fake_local) = self._critic_scores(
                image, fake, mask
            )
        d_global = wgan_critic_loss(real_g, fake_g)
        d_local = wgan_critic_loss(real_l, fake_l)
        draw = torch.Generator().manual_seed(self.seed * 1_000_003 + int(self.critic_steps))
        alpha = torch.rand(2, image.shape[0], generator=draw).to(image.device, image.dtype)
        with record_function("deepfill/critic_step/gradient_penalty"):
            gp_global = gradient_penalty(self.global_critic, image, fake, mask, alpha[0])
            gp_local = gradient_penalty(self.local_critic, image_local, fake_local, mask_local, alpha[1])
        gp = self.weights.gp * (gp_global + gp_local)
        d_loss = d_global + d_local + gp  # official: no global weight on the critic side
        opt_d.zero_grad(set_to_none=True)
        if not self._finite(d_loss.detach(), "critic loss"):
            return
        with record_function("deepfill/critic_step/backward"):
            self.manual_backward(d_loss)
        grad_norm = _grad_norm(list(self.global_critic.parameters()) + list(self.local_critic.parameters()))
        opt_d.step()
        self.critic_steps += 1
        self.log_dict(
            {
                "train/d_loss": d_loss.detach(),
                "train/d_global": d_global.detach(),
                "train/d_local": d_local.detach(),
                "train/gp": gp.detach(),
                "train/critic_gap_global": (real_g.mean() - fake_g.mean()).detach(),
                "train/critic_gap_local": (real_l.mean() - fake_l.mean()).detach(),
                "train/grad_norm_d": grad_norm,
            },
            on_step=True,
            prog_bar=False,
        )

    def _reconstruction(self, image, mask, x1, x2):
        weights = discount_weights(mask, self.gamma, self.discount)
        w = self.weights
        l1 = w.coarse * discounted_l1(image, x1, weights)
        if x2 is not None:
            l1 = l1 + discounted_l1(image, x2, weights)
        ae = ae_loss(image, x1, x2, mask, w.coarse)
        return l1, ae

    def _generator_step(self, image, mask, opt_g, batch_idx: int) -> None:
        self.toggle_optimizer(opt_g)  # critics frozen: their weights get no gradient
        try:
            with record_function("deepfill/generator_step/forward"):
                x1, x2, offsets = self.generator(image, mask)
            fake = self._composite(image, mask, x2)
            l1, ae = self._reconstruction(image, mask, x1, x2)
            _, fake_local = crop_around_holes(mask, self.local_size, fake)
            g_global = wgan_generator_loss(self.global_critic(fake))
            g_local = wgan_generator_loss(self.local_critic(fake_local))
            w = self.weights
            g_adv = w.global_wgan * g_global + g_local
            g_loss = w.gan * g_adv + w.l1 * l1 + w.ae * ae
            opt_g.zero_grad(set_to_none=True)
            if not self._finite(g_loss.detach(), "generator loss"):
                return
            with record_function("deepfill/generator_step/backward"):
                self.manual_backward(g_loss)
            grad_norm = _grad_norm(self.generator.parameters())
            opt_g.step()
        finally:
            self.untoggle_optimizer(opt_g)
        self.generator_steps += 1
        self.log_dict(
            {
                "train/g_loss": g_loss.detach(),
                "train/l1": l1.detach(),
                "train/ae": ae.detach(),
                "train/g_adv": g_adv.detach(),
                "train/grad_norm_g": grad_norm,
                "train/generator_steps": self.generator_steps.float(),
            },
            on_step=True,
            prog_bar=True,
        )
        self._maybe_log_images("train/samples", image, mask, x1, x2, offsets)

    def _pretrain_step(self, image, mask, opt_g) -> None:
        x1 = self.generator.coarse(image * (1 - mask), mask)
        l1, ae = self._reconstruction(image, mask, x1, None)
        loss = self.weights.l1 * l1 + self.weights.ae * ae
        opt_g.zero_grad(set_to_none=True)
        if not self._finite(loss.detach(), "pre-training loss"):
            return
        self.manual_backward(loss)
        opt_g.step()
        self.generator_steps += 1
        self.log_dict({"train/pretrain_loss": loss.detach(), "train/l1": l1.detach()}, on_step=True)

    def _maybe_log_images(self, key, image, mask, x1, x2, offsets, force: bool = False) -> None:
        every = self.log_images_every_n_steps
        step = int(self.generator_steps)
        if not self.trainer.is_global_zero or (not force and (every <= 0 or step % every != 0)):
            return
        with torch.no_grad():
            grid = inpainting_grid(image, mask, x1, x2, offsets)
        log_grid(self.trainer, key, grid, " | ".join(COLUMNS), self.global_step)

    # ------------------------------------------------------------------ validation
    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        image, mask = batch["image"], batch["mask"]
        x1, x2, offsets = self.generator(image, mask)
        completed = self._composite(image, mask, x2)
        self.metrics.update(to_unit(completed), to_unit(image), mask)
        for name, metric in self.metrics.metrics().items():
            self.log(f"val/{name}", metric, on_step=False, on_epoch=True, prog_bar=name in ("psnr", "lpips"))
        if batch_idx == 0:
            self._maybe_log_images("val/samples", image, mask, x1, x2, offsets, force=True)

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        image, mask = batch["image"], batch["mask"]
        _, x2, _ = self.generator(image, mask)
        self.metrics.update(to_unit(self._composite(image, mask, x2)), to_unit(image), mask)
        for name, metric in self.metrics.metrics().items():
            self.log(f"test/{name}", metric, on_step=False, on_epoch=True)
