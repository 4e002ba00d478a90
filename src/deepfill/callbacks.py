"""Training callbacks: atomic checkpoints, best-by-LPIPS-or-PSNR, a checkpoint on SIGTERM, Ctrl-C
and the scheduler's requeue signal."""

from __future__ import annotations

import math
import os
import signal
import threading
import warnings
from pathlib import Path

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import ModelCheckpoint

from .files import atomic_path
from .metrics import higher_is_better, selection_metric

__all__ = [
    "AtomicModelCheckpoint",
    "BestCheckpoint",
    "CheckpointOnSignal",
    "atomic_save_checkpoint",
    "signal_number",
]


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


def signal_number(name: str | int) -> signal.Signals:
    """``"USR2"``, ``"SIGUSR2"`` or ``12`` -> ``signal.SIGUSR2``; one line naming the value otherwise."""
    from .errors import ConfigError

    try:
        if isinstance(name, int) and not isinstance(name, bool):
            return signal.Signals(name)
        text = str(name).upper()
        return signal.Signals[text if text.startswith("SIG") else f"SIG{text}"]
    except (KeyError, ValueError):
        raise ConfigError(
            f"callbacks.signal.requeue_signal: {name!r} is not a signal of this system (e.g. USR2, USR1)"
        ) from None


class CheckpointOnSignal(pl.Callback):
    """Save ``<dirpath>/last.ckpt`` when the run stops on SIGTERM (a preempted job), Ctrl-C or the
    scheduler's requeue signal, so that it resumes from where it stopped
    (``ckpt_path=<dirpath>/last.ckpt``, or ``resume=true``).

    SIGTERM: Lightning notes it at once and raises ``SIGTERMException`` after the current batch;
    under DDP it first broadcasts rank 0's flag, so every rank raises at the same batch. Saving
    from that one decision (``on_exception``) keeps the ranks' collectives in step: a save
    decided per rank (each rank's own flag) would put one rank in the checkpoint barrier while
    another waits in the next batch's broadcast.

    ``requeue_signal`` (e.g. ``"USR2"``, what submitit asks SLURM to send before the time limit):
    the handler only notes the signal; at the end of the batch the ranks decide together (any
    rank that got it), every rank joins the save, then the handler that was installed before
    (submitit's: requeue the job from rank 0 and exit) runs on every rank. When it ends the job
    on any rank, all ranks stop; with no handler before, the signal's default action follows.
    Without this, submitit's handler exits rank 0 mid-batch without a checkpoint and the other
    ranks wait for it until the job is killed.
    """

    def __init__(self, dirpath: str | os.PathLike, requeue_signal: str | int | None = None) -> None:
        self.dirpath = Path(dirpath)
        self.requeue_signal = None if requeue_signal is None else signal_number(requeue_signal)
        self._saved_step: int | None = None
        self._requested = False
        self._previous_handler = None
        self._installed = False

    def _save(self, trainer: pl.Trainer, why: str = "signal") -> None:
        if self._saved_step == trainer.global_step:
            return
        atomic_save_checkpoint(trainer, self.dirpath / "last.ckpt")
        self._saved_step = trainer.global_step
        if trainer.is_global_zero:
            print(f"stopping on {why}: checkpoint saved to {self.dirpath / 'last.ckpt'}", flush=True)

    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        from pytorch_lightning.utilities.exceptions import SIGTERMException

        if isinstance(exception, SIGTERMException | KeyboardInterrupt):
            self._save(trainer)

    # ------------------------------------------------------------------ requeue signal
    def _note_requeue(self, signum: int, frame) -> None:
        # Only a flag: a signal can arrive inside a collective or a checkpoint write.
        self._requested = True

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.requeue_signal is None or threading.current_thread() is not threading.main_thread():
            return
        previous = signal.getsignal(self.requeue_signal)
        if previous == signal.SIG_IGN:
            return  # the job chose to ignore it
        self._previous_handler = previous
        signal.signal(self.requeue_signal, self._note_requeue)
        self._installed = True

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if self._installed:
            signal.signal(self.requeue_signal, self._previous_handler or signal.SIG_DFL)
            self._installed = False

    def on_train_batch_end(self, trainer: pl.Trainer, *args, **kwargs) -> None:
        if not self._installed:
            return
        requested = self._requested
        if trainer.world_size > 1:
            # One decision for all ranks: the scheduler signals every task, not at the same batch.
            requested = trainer.strategy.reduce_boolean_decision(requested, all=False)
        if not requested:
            return
        self._save(trainer, f"{self.requeue_signal.name}")
        self._requested = False
        self._hand_over(trainer)

    def _hand_over(self, trainer: pl.Trainer) -> None:
        """Run the handler that was there before ours; stop every rank when it stops any."""
        previous = self._previous_handler
        if previous in (None, signal.SIG_DFL):
            stop: BaseException | None = SystemExit(128 + int(self.requeue_signal))
        else:
            stop = None
            try:
                previous(int(self.requeue_signal), None)
            except BaseException as error:  # submitit requeues, then exits rank 0
                stop = error
        stopping = stop is not None
        if trainer.world_size > 1:
            stopping = trainer.strategy.reduce_boolean_decision(stopping, all=False)
        if stop is not None:
            raise stop
        if stopping:
            raise SystemExit(f"stopping: another rank ended the job on {self.requeue_signal.name}")
