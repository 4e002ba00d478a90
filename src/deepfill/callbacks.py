"""Training callbacks: atomic checkpoints, best-by-LPIPS-or-PSNR, a checkpoint on SIGTERM."""

from __future__ import annotations

import math
import os
import warnings
from pathlib import Path

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import ModelCheckpoint

from .files import atomic_path
from .metrics import higher_is_better, selection_metric

__all__ = ["AtomicModelCheckpoint", "BestCheckpoint", "CheckpointOnSignal", "atomic_save_checkpoint"]


def atomic_save_checkpoint(
    trainer: pl.Trainer, filepath: str | os.PathLike, weights_only: bool = False
) -> None:
    """Write a checkpoint to a temporary file, then rename: a crash never leaves half a file."""
    path = Path(filepath)
    if not trainer.is_global_zero:
        # Only rank zero writes; the others still join save_checkpoint's barrier.
        trainer.save_checkpoint(path, weights_only)
        return
    with atomic_path(path) as tmp:
        trainer.save_checkpoint(tmp, weights_only)


class AtomicModelCheckpoint(ModelCheckpoint):
    """``ModelCheckpoint`` whose files are written atomically."""

    def on_train_batch_end(self, *args, **kwargs) -> None:
        with warnings.catch_warnings():
            # Lightning suggests keeping pre-step weights under manual optimisation; resuming
            # exactly needs the post-step weights with the post-step optimizer state, as saved.
            warnings.filterwarnings("ignore", message="Using ModelCheckpoint with manual optimization")
            super().on_train_batch_end(*args, **kwargs)

    def _save_checkpoint(self, trainer: pl.Trainer, filepath: str) -> None:
        atomic_save_checkpoint(trainer, filepath, self.save_weights_only)
        self._last_global_step_saved = trainer.global_step
        self._last_checkpoint_saved = filepath
        if trainer.is_global_zero:
            for logger in trainer.loggers:
                logger.after_save_checkpoint(self)


class BestCheckpoint(AtomicModelCheckpoint):
    """Keeps the best checkpoint by ``val/lpips`` (lower is better) when the model computes
    LPIPS, else by ``val/psnr`` (higher is better)."""

    def __init__(self, **kwargs) -> None:
        kwargs.setdefault("filename", "best-{epoch:03d}-{step:07d}")
        super().__init__(monitor=selection_metric(lpips=False), mode="max", save_top_k=1, **kwargs)

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        metrics = getattr(pl_module, "val_metrics", None)
        if metrics is not None and getattr(metrics, "lpips", None) is not None:
            self.monitor = selection_metric(lpips=True)
            self.mode = "max" if higher_is_better(self.monitor) else "min"
            self.kth_value = torch.tensor(-math.inf if self.mode == "max" else math.inf)
            self.best_model_score = None
        super().setup(trainer, pl_module, stage)


class CheckpointOnSignal(pl.Callback):
    """Save ``<dirpath>/last.ckpt`` when the run stops on SIGTERM (a preempted job) or Ctrl-C,
    so that it resumes from where it stopped (``ckpt_path=<dirpath>/last.ckpt``).

    Lightning notes SIGTERM at once and raises ``SIGTERMException`` after the current batch;
    under DDP it first broadcasts rank 0's flag, so every rank raises at the same batch. Saving
    from that one decision (``on_exception``) keeps the ranks' collectives in step: a save
    decided per rank (each rank's own flag) would put one rank in the checkpoint barrier while
    another waits in the next batch's broadcast.
    """

    def __init__(self, dirpath: str | os.PathLike) -> None:
        self.dirpath = Path(dirpath)
        self._saved_step: int | None = None

    def _save(self, trainer: pl.Trainer) -> None:
        if self._saved_step == trainer.global_step:
            return
        atomic_save_checkpoint(trainer, self.dirpath / "last.ckpt")
        self._saved_step = trainer.global_step
        if trainer.is_global_zero:
            print(f"stopping on signal: checkpoint saved to {self.dirpath / 'last.ckpt'}", flush=True)

    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        from pytorch_lightning.utilities.exceptions import SIGTERMException

        if isinstance(exception, SIGTERMException | KeyboardInterrupt):
            self._save(trainer)
