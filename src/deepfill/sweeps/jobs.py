"""One record per job: ``job.json`` in every training run's folder.

It holds the command-line overrides the run was started with, its status (running / finished /
stopped / failed), the devices it ran on and its final metrics. With ``resume=true`` (the sweep
presets set it) a job whose folder already holds a finished record returns the recorded metrics
without training, and an interrupted job continues from its ``checkpoints/last.ckpt``; rerunning
a sweep's command therefore only runs what is missing. A folder that holds a run of another
setting is never reused.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import DictConfig

from deepfill.sweeps.settings import EXTENT_KEYS, SEED_KEY, parse_override, setting_of
from deepfill.utils.errors import NoSpaceError, UserError
from deepfill.utils.files import atomic_path

__all__ = [
    "RECORD_NAME",
    "REPORTED_PREFIXES",
    "Job",
    "JobConflictError",
    "begin_job",
    "end_job",
    "finished_jobs",
    "job_order",
    "job_record",
    "read_record",
]

RECORD_NAME = "job.json"
# Metrics a job records: validation and test scores, not the per-batch training losses.
REPORTED_PREFIXES = ("val/", "test/")


class JobConflictError(UserError):
    """A run folder already holds a run started with other overrides."""


def _write_json(path: Path, data: dict) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def read_record(folder: str | os.PathLike) -> dict | None:
    """The ``job.json`` of a run folder, or None when there is none."""
    path = Path(folder) / RECORD_NAME
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: not a job record ({error})") from None


def job_order(job: str) -> tuple:
    # "10" after "9"; names of other shapes (Optuna's "<time>_<n>") sort without type clashes.
    return tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in job.replace("/", "_").split("_"))


def finished_jobs(sweep: str | os.PathLike) -> list[tuple[Path, DictConfig]]:
    """Every finished job of a sweep folder with its config (the project's resolvers registered,
    so its interpolations resolve), in job order."""
    from omegaconf import OmegaConf

    from deepfill.sweeps.resolvers import SWEEP_RESOLVERS
    from deepfill.utils.resolvers import register_resolvers

    register_resolvers(SWEEP_RESOLVERS)
    jobs = []
    for record_path in sorted(Path(sweep).glob(f"*/{RECORD_NAME}"), key=lambda p: job_order(p.parent.name)):
        folder = record_path.parent
        if (read_record(folder) or {}).get("status") == "finished":
            jobs.append((folder, OmegaConf.load(folder / ".hydra" / "config.yaml")))
    return jobs


def begin_job(folder: str | os.PathLike, overrides: Sequence[str], resume: bool) -> dict | None:
    """Record the start of a run in ``folder``; with ``resume``, return the metrics of a finished one.

    Returns the recorded metrics (skip the run) when ``resume`` is set and the folder holds a
    finished run with the same overrides; raises :class:`JobConflictError` when it holds a run
    with another setting or seed (:func:`~deepfill.sweeps.settings.setting_of`). How long it
    trains (``trainer.max_epochs``, ``max_steps``, ``max_time``) does not count: a finished run
    given more epochs continues.
    """
    folder = Path(folder)
    overrides = list(overrides)
    previous = read_record(folder)
    if resume and previous is not None:
        before, now = _identity(previous.get("overrides", [])), _identity(overrides)
        if before != now:
            raise JobConflictError(
                f"{folder}: holds a run with other settings (there: {sorted(before - now)}, "
                f"here: {sorted(now - before)}); give this sweep another sweep_name (or hydra.sweep.dir)"
            )
        extended = _extent(previous.get("overrides", [])) != _extent(overrides)
        if previous.get("status") == "finished" and not extended:
            return dict(previous.get("metrics") or {})
    folder.mkdir(parents=True, exist_ok=True)
    record = {
        "overrides": overrides,
        "status": "running",
        "started": time.time(),
        "attempts": int((previous or {}).get("attempts", 0)) + 1 if resume else 1,
        "devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
        "pid": os.getpid(),
    }
    _write_json(folder / RECORD_NAME, record)
    return None


def _identity(overrides: Sequence[str]) -> set[str]:
    """What makes a run the same job: its setting, less how long it trains, and its seed."""
    setting = setting_of(overrides)
    seeds = [f"{SEED_KEY}={v}" for k, v in map(parse_override, overrides) if k == SEED_KEY]
    return {f"{k}={v}" for k, v in setting.items() if k not in EXTENT_KEYS} | set(seeds)


def _extent(overrides: Sequence[str]) -> dict[str, str]:
    return dict(p for p in map(parse_override, overrides) if p[0] in EXTENT_KEYS)


def end_job(
    folder: str | os.PathLike, metrics: dict[str, float], status: str = "finished", error: str | None = None
) -> None:
    """Complete the record written by :func:`begin_job` with the final metrics and status."""
    folder = Path(folder)
    record = read_record(folder) or {}
    reported = {k: float(v) for k, v in metrics.items() if k.startswith(REPORTED_PREFIXES)}
    record |= {"status": status, "ended": time.time(), "metrics": reported}
    if error:
        record["error"] = error
    _write_json(folder / RECORD_NAME, record)


@dataclass
class Job:
    """What :func:`job_record` yields: ``finished`` holds the recorded metrics of a run that
    already finished (skip it); set ``metrics`` to what this run computed."""

    finished: dict | None = None
    metrics: dict[str, float] = field(default_factory=dict)


def _stopped(error: BaseException) -> bool:
    """A stop asked for from outside (Ctrl-C, SIGTERM, the scheduler's requeue), not a failure."""
    from pytorch_lightning.utilities.exceptions import SIGTERMException

    return isinstance(error, KeyboardInterrupt | SystemExit | SIGTERMException)


@contextlib.contextmanager
def job_record(
    folder: str | os.PathLike, overrides: Sequence[str], resume: bool, write: bool = True
) -> Iterator[Job]:
    """The ``job.json`` of one run around its body: ``running`` on entry, then ``finished`` with
    ``job.metrics``, ``stopped`` (Ctrl-C, SIGTERM, requeue: resumable) or ``failed``.

    ``write=False`` (the other DDP ranks) only reads: with ``resume`` they skip a run rank zero
    skips. A skipped run (``job.finished`` set) leaves the record as it was."""
    job = Job()
    if write:
        job.finished = begin_job(folder, overrides, resume)
    elif resume:
        record = read_record(folder) or {}
        job.finished = record.get("metrics") if record.get("status") == "finished" else None
    if job.finished is not None:
        yield job
        return
    try:
        yield job
    except BaseException as error:
        if write:
            status = "stopped" if _stopped(error) else "failed"
            # A full disk that stopped the run may refuse this too: the record then stays
            # "running", which a rerun with resume=true continues like a stopped one.
            with contextlib.suppress(NoSpaceError):
                end_job(folder, {}, status=status, error=f"{type(error).__name__}: {error}")
        raise
    if write:
        end_job(folder, job.metrics)
