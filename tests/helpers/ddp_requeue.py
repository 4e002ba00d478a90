"""Run by tests/test_distributed.py: 2 CPU ranks (gloo) under submitit's own signal handler.

Each rank installs the handler submitit's job process installs (its local executor's job
environment: rank 0 requeues, i.e. exits with code 144; the other ranks only log). Like SLURM
before a time limit, the requeue signal (SIGUSR2) then reaches one task (rank 1, at its third
batch). Every rank must join one checkpoint at the same step, then submitit's handler runs on
every rank and both stop. Each rank writes ``rank<r>.txt``:
``<step the handler ran at> <step training stopped at> <how it ended>``."""

from __future__ import annotations

import logging
import os
import signal
import sys
from pathlib import Path

import pytorch_lightning as pl
from ddp_tiny import tiny_run

from deepfill.training.callbacks import CheckpointOnSignal

RANK = int(os.environ.get("LOCAL_RANK", "0"))
seen: dict[str, int] = {}


class Requeueable:
    """The job function submitit resubmits after a requeue (what Hydra's launcher passes)."""

    def __call__(self) -> None:
        raise AssertionError("not run here")

    def checkpoint(self):
        from submitit.helpers import DelayedSubmission

        seen["handler"] = seen["step"]
        return DelayedSubmission(self)


def install_submitit_handler(out_dir: str) -> None:
    from submitit.core.job_environment import JobPaths
    from submitit.core.utils import DelayedSubmission
    from submitit.local.local import LocalJobEnvironment

    os.environ.update(
        SUBMITIT_LOCAL_JOB_ID="1",
        SUBMITIT_LOCAL_NTASKS="2",
        SUBMITIT_LOCAL_JOB_NUM_NODES="1",
        SUBMITIT_LOCAL_NODEID="0",
        SUBMITIT_LOCAL_GLOBALID=str(RANK),
        SUBMITIT_LOCAL_LOCALID=str(RANK),
    )
    Path(out_dir, "submitit").mkdir(exist_ok=True)
    delayed = DelayedSubmission(Requeueable())
    delayed.set_timeout(60, 3)
    LocalJobEnvironment()._handle_signals(JobPaths(Path(out_dir, "submitit"), job_id="1"), delayed)


class SendRequeueSignal(pl.Callback):
    """Rank 1 signals itself during its third batch; notes each batch's step once it is done
    (before the checkpoint callback, which comes after this one)."""

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        seen["step"] = trainer.global_step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if RANK == 1 and batch_idx == 2:
            os.kill(os.getpid(), signal.SIGUSR2)


def main(out_dir: str) -> None:
    logging.basicConfig(level=logging.INFO, stream=sys.stdout)  # the callback logs its save
    install_submitit_handler(out_dir)
    callbacks = [SendRequeueSignal(), CheckpointOnSignal(Path(out_dir, "checkpoints"), requeue_signal="USR2")]
    model, data, trainer = tiny_run(out_dir, length=40, callbacks=callbacks)
    ended = "finished"
    try:
        trainer.fit(model, datamodule=data)
    except SystemExit as stop:
        ended = f"exit({stop.code})"
        raise
    finally:
        line = f"{seen.get('handler', -1)} {trainer.global_step} {ended.split('(')[0]}\n"
        Path(out_dir, f"rank{trainer.global_rank}.txt").write_text(line)


if __name__ == "__main__":
    main(sys.argv[1])
