"""Checkpoints: written atomically, the last and the best (by LPIPS, else PSNR), and one on
SIGTERM, Ctrl-C and the scheduler's requeue signal."""

from __future__ import annotations

import logging
import math
import os
import signal
import threading
import warnings
from pathlib import Path

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.plugins.io import TorchCheckpointIO

from deepfill.evaluation.metrics import higher_is_better, selection_metric
from deepfill.utils.files import save_torch

__all__ = [
    "AtomicCheckpointIO",
    "BestCheckpoint",
    "CheckpointOnSignal",
    "LastCheckpoint",
    "signal_number",
]

log = logging.getLogger(__name__)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint writer, writing to a temporary file in the target's folder and
    renaming it: a crash or a full disk never leaves half a checkpoint, and ``last.ckpt`` is
    either the old one or the new one. ``deepfill-train`` gives it to every trainer
    (``Trainer(plugins=[AtomicCheckpointIO()])``), so every checkpoint callback writes this way."""

    def save_checkpoint(self, checkpoint: dict, path, storage_options=None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options, got {storage_options!r}")
        # Streamed to the file (no second copy in memory); a full disk raises NoSpaceError.
        save_torch(checkpoint, path)


class LastCheckpoint(ModelCheckpoint):
    """``ModelCheckpoint`` for this module's manual optimisation (``last.ckpt`` every N batches)."""

    def on_train_batch_end(self, *args, **kwargs) -> None:
        with warnings.catch_warnings():
            # Lightning suggests keeping pre-step weights under manual optimisation; resuming
            # exactly needs the post-step weights with the post-step optimizer state, as saved.
            warnings.filterwarnings("ignore", message="Using ModelCheckpoint with manual optimization")
            super().on_train_batch_end(*args, **kwargs)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Lightning writes last.ckpt at the end of training only when it has never written one:
        # a run that stops on max_steps (or max_time) between two every_n_train_steps saves
        # would keep an older last.ckpt than its final weights.
        if self.save_last and not self._should_skip_saving_checkpoint(trainer):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
            return
        super().on_train_end(trainer, pl_module)


class BestCheckpoint(LastCheckpoint):
    """Keeps the best checkpoint by ``val/lpips`` (lower is better) when the model computes
    LPIPS, else by ``val/psnr`` (higher is better)."""

    def __init__(self, **kwargs) -> None:
        kwargs.setdefault("filename", "best-{epoch:03d}-{step:07d}")
        monitor = selection_metric(lpips=False)
        mode = "max" if higher_is_better(monitor) else "min"
        super().__init__(monitor=monitor, mode=mode, save_top_k=1, **kwargs)

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
    from deepfill.utils.errors import ConfigError

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

    The signal handlers only note the signal. At the end of the batch the ranks decide together
    (any rank that got one; one all-reduce under DDP), every rank joins the save, then all stop
    at the same point. Lightning's own SIGTERM handler is replaced while training: it broadcasts
    from inside the handler, which can meet another rank in a different collective and hang
    (seen with 2 processes); a save decided per rank would do the same.

    After SIGTERM every rank raises Lightning's ``SIGTERMException`` (the command exits 143).
    ``requeue_signal`` (e.g. ``"USR2"``, what submitit asks SLURM to send before the time
    limit): after the save, the handler that was installed before (submitit's: requeue the job
    from rank 0 and exit) runs on every rank; when it ends the job on any rank, all ranks stop,
    and when it returns on every rank, training goes on. With no handler before, the job ends
    (exit status 128 + the signal's number, as its default action would). Without this, submitit's
    handler exits rank 0 mid-batch without a checkpoint and the other ranks wait for it.
    A signal that comes during validation is acted on after it. Ctrl-C is saved from
    ``on_exception``.
    """

    def __init__(self, dirpath: str | os.PathLike, requeue_signal: str | int | None = None) -> None:
        self.dirpath = Path(dirpath)
        self.requeue_signal = None if requeue_signal is None else signal_number(requeue_signal)
        self._saved_step: int | None = None
        self._received: set[int] = set()
        self._previous: dict[signal.Signals, object] = {}

    def _save(self, trainer: pl.Trainer, why: str) -> None:
        if self._saved_step == trainer.global_step:
            return
        trainer.save_checkpoint(self.dirpath / "last.ckpt")  # every rank: it holds a barrier
        self._saved_step = trainer.global_step
        if trainer.is_global_zero:
            log.warning("stopping on %s: checkpoint saved to %s", why, self.dirpath / "last.ckpt")

    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        from pytorch_lightning.utilities.exceptions import SIGTERMException

        if isinstance(exception, KeyboardInterrupt):
            self._save(trainer, "Ctrl-C")
        elif isinstance(exception, SIGTERMException):  # raised by Lightning, not by this callback
            self._save(trainer, "SIGTERM")

    # ------------------------------------------------------------------ signal handlers
    def _note(self, signum: int, frame) -> None:
        # Only a flag: a signal can arrive inside a collective or a checkpoint write.
        self._received.add(signum)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Here, not in on_fit_start: Lightning installs its SIGTERM handler between the two.
        if threading.current_thread() is not threading.main_thread():
            return
        for signum in (signal.SIGTERM, self.requeue_signal):
            if signum is None or signum in self._previous:
                continue
            previous = signal.getsignal(signum)
            if previous == signal.SIG_IGN:
                continue  # the job chose to ignore it
            self._previous[signum] = previous
            signal.signal(signum, self._note)

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        for signum, previous in self._previous.items():
            if signal.getsignal(signum) == self._note:  # unless Lightning restored its own first
                signal.signal(signum, previous if previous is not None else signal.SIG_DFL)
        self._previous = {}

    def on_train_batch_end(self, trainer: pl.Trainer, *args, **kwargs) -> None:
        if not self._previous:
            return
        term = int(signal.SIGTERM in self._received)
        requeue = int(self.requeue_signal is not None and self.requeue_signal in self._received)
        if trainer.world_size > 1:
            # One decision for all ranks: a scheduler signals the tasks at different batches.
            flags = torch.tensor([term, requeue], device=trainer.strategy.root_device)
            term, requeue = trainer.strategy.reduce(flags, reduce_op="sum").tolist()
        if not (term or requeue):
            return
        self._received.clear()
        self._save(trainer, "SIGTERM" if term else self.requeue_signal.name)
        if requeue:
            self._hand_over(trainer)  # returns when the handler let the job go on (on every rank)
        if term:
            from pytorch_lightning.utilities.exceptions import SIGTERMException

            raise SIGTERMException()

    def _hand_over(self, trainer: pl.Trainer) -> None:
        """Run the requeue signal's previous handler; stop every rank when it stops any."""
        previous = self._previous.get(self.requeue_signal)
        stop: BaseException | None = None
        if not callable(previous):  # the signal's default action: the process ends
            stop = SystemExit(128 + int(self.requeue_signal))
        else:
            try:
                previous(int(self.requeue_signal), None)
            except BaseException as error:  # submitit requeues, then exits rank 0
                stop = error
        stopping = int(stop is not None)
        if trainer.world_size > 1:
            flag = torch.tensor([stopping], device=trainer.strategy.root_device)
            stopping = trainer.strategy.reduce(flag, reduce_op="sum").item()
        if stop is not None:
            raise stop
        if stopping:
            raise SystemExit(f"stopping: another rank ended the job on {self.requeue_signal.name}")
