"""Sweeps: one record per job, resumable multiruns, and the results table of a sweep.

Every training run writes ``job.json`` into its folder: the command-line overrides it was
started with, its status (running / finished / stopped / failed), the devices it ran on, its final
metrics. With ``resume=true`` (the sweep presets set it) a job whose folder already holds a
finished record returns the recorded metrics without training, and an interrupted job
continues from its ``checkpoints/last.ckpt``; rerunning a sweep's command therefore only runs
what is missing. A folder that holds a run with other overrides is never reused.

At the end of a multirun, :class:`ResultsTable` (a Hydra callback) collects the records under
the sweep folder into ``results.csv`` and ``results.md``: one row per job with its swept
settings and final metrics, best first by ``optimized_metric``. ``deepfill-sweep-table DIR``
rebuilds the table of any sweep folder, e.g. one still running.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from deepfill.evaluation.metrics import higher_is_better, selection_metric
from deepfill.evaluation.tables import write_table
from deepfill.utils.errors import NoSpaceError, UserError
from deepfill.utils.files import atomic_path

__all__ = [
    "RECORD_NAME",
    "ResultsTable",
    "begin_job",
    "collect_results",
    "end_job",
    "finished_jobs",
    "job_record",
    "main",
    "parse_override",
    "read_record",
    "write_results_table",
]

RECORD_NAME = "job.json"
# Metrics a sweep reports: validation and test scores, not the per-batch training losses.
REPORTED_PREFIXES = ("val/", "test/")
# Ranks a sweep whose optimized_metric no run computed.
FALLBACK_METRIC = selection_metric(lpips=False)


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


def finished_jobs(sweep: str | os.PathLike) -> list[tuple[Path, DictConfig]]:
    """Every finished job of a sweep folder with its config (the project's resolvers registered,
    so its interpolations resolve), in job order."""
    from omegaconf import OmegaConf

    from deepfill.utils.config import register_resolvers

    register_resolvers()
    jobs = []
    for record_path in sorted(Path(sweep).glob(f"*/{RECORD_NAME}"), key=lambda p: _job_order(p.parent.name)):
        folder = record_path.parent
        if (read_record(folder) or {}).get("status") == "finished":
            jobs.append((folder, OmegaConf.load(folder / ".hydra" / "config.yaml")))
    return jobs


def begin_job(folder: str | os.PathLike, overrides: Sequence[str], resume: bool) -> dict | None:
    """Record the start of a run in ``folder``; with ``resume``, return the metrics of a finished one.

    Returns the recorded metrics (skip the run) when ``resume`` is set and the folder holds a
    finished run with the same overrides; raises :class:`JobConflictError` when it holds a run
    with other overrides. Where it ran (launcher, devices) and how long it trains
    (``trainer.max_epochs``, ``max_steps``, ``max_time``) do not count: a finished run given more
    epochs continues.
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


# Where and how a job runs does not change what it computes: a sweep started with one launcher
# can be finished with another.
_PLACEMENT_KEYS = ("launcher", "job_devices", "hydra.")


# How long a run trains does not change the run either: a finished run given more epochs or
# steps (same folder, resume=true) continues from its last checkpoint instead of being skipped.
_EXTENT_KEYS = ("trainer.max_epochs", "trainer.max_steps", "trainer.max_time")


def _identity(overrides: Sequence[str]) -> set[str]:
    return {
        o
        for o in overrides
        if not parse_override(o)[0].startswith(_PLACEMENT_KEYS) and parse_override(o)[0] not in _EXTENT_KEYS
    }


def _extent(overrides: Sequence[str]) -> dict[str, str]:
    return dict(p for p in map(parse_override, overrides) if p[0] in _EXTENT_KEYS)


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


def parse_override(override: str) -> tuple[str, str]:
    """``"+model.loss.gan=0.01"`` -> ``("model.loss.gan", "0.01")``."""
    key, _, value = override.partition("=")
    return key.lstrip("+~"), value


def collect_results(
    sweep_dir: str | os.PathLike, params: Iterable[str] | None = None
) -> list[dict[str, Any]]:
    """One row per run folder under ``sweep_dir``: job, status, swept settings, metrics, minutes.

    ``params``: the swept keys (columns); by default every override key whose value differs
    between the runs.
    """
    sweep_dir = Path(sweep_dir)
    records = []
    for path in sorted(sweep_dir.rglob(RECORD_NAME)):
        record = read_record(path.parent)
        if record is not None:
            records.append((path.parent.relative_to(sweep_dir).as_posix(), record))
    settings = [dict(parse_override(o) for o in rec.get("overrides", [])) for _, rec in records]
    if params is None:
        keys = sorted({k for s in settings for k in s})
        params = [k for k in keys if len({s.get(k) for s in settings}) > 1]
    params = list(params)
    rows = []
    for (job, record), setting in zip(records, settings, strict=True):
        row: dict[str, Any] = {"job": job, "status": record.get("status", "?")}
        row |= {key: setting.get(key, "") for key in params}
        row |= record.get("metrics") or {}
        if record.get("ended") and record.get("started"):
            row["minutes"] = round((record["ended"] - record["started"]) / 60, 2)
        rows.append(row)
    return rows


def _sort_key(metric: str | None):
    def key(row: dict) -> tuple:
        value = row.get(metric) if metric else None
        if not isinstance(value, float) or math.isnan(value):
            return (1, 0.0, _job_order(row["job"]))
        return (0, -value if higher_is_better(metric) else value, _job_order(row["job"]))

    return key


def _job_order(job: str) -> tuple:
    # "10" after "9"; names of other shapes (Optuna's "<time>_<n>") sort without type clashes.
    return tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in job.replace("/", "_").split("_"))


def write_results_table(
    sweep_dir: str | os.PathLike, rows: list[dict[str, Any]], optimized_metric: str | None = None
) -> tuple[Path, Path]:
    """Write ``results.csv`` and ``results.md`` into ``sweep_dir``, best run first; returns their paths."""
    sweep_dir = Path(sweep_dir)
    note = ""
    if optimized_metric and not any(optimized_metric in row for row in rows):
        # E.g. val/lpips without the LPIPS weights: rank by what every run has.
        note = f"{optimized_metric} was not computed; "
        optimized_metric = FALLBACK_METRIC
    rows = sorted(rows, key=_sort_key(optimized_metric))
    columns: list[str] = []
    for row in rows:
        columns += [k for k in row if k not in columns]
    metric_cols = sorted(c for c in columns if c.startswith(REPORTED_PREFIXES))
    other = [c for c in columns if c not in metric_cols and c != "minutes"]
    if optimized_metric in metric_cols:
        metric_cols.remove(optimized_metric)
        metric_cols.insert(0, optimized_metric)
    columns = other + metric_cols + (["minutes"] if "minutes" in columns else [])
    finished = sum(r["status"] == "finished" for r in rows)
    title = f"# Sweep results: {sweep_dir.name}\n\n{finished} of {len(rows)} runs finished"
    if optimized_metric:
        direction = "higher" if higher_is_better(optimized_metric) else "lower"
        title += f"; {note}sorted by {optimized_metric} ({direction} is better), best first"
    csv_path, md_path = sweep_dir / "results.csv", sweep_dir / "results.md"
    return write_table(rows, columns, csv_path, md_path, title=title + ".", float_format=".4g")


class ResultsTable(Callback):
    """Hydra callback: at the end of a multirun, write the sweep's results table and print its path."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(str(config.hydra.sweep.dir))
        params = list((config.hydra.sweeper.get("params") or {}).keys()) or None
        rows = collect_results(sweep_dir, params)
        if not rows:
            print(f"sweep {sweep_dir}: no run records found", flush=True)
            return
        metric = config.get("optimized_metric")
        csv_path, md_path = write_results_table(sweep_dir, rows, metric)
        print(f"sweep results: {md_path} and {csv_path}", flush=True)
        print(md_path.read_text(), flush=True)


def main(argv: Sequence[str] | None = None) -> None:
    """``deepfill-sweep-table SWEEP_DIR [--metric val/lpips]``: (re)write a sweep's results table."""
    parser = argparse.ArgumentParser(prog="deepfill-sweep-table", description=main.__doc__)
    parser.add_argument("sweep_dir", type=Path, help="a multirun folder holding one folder per job")
    parser.add_argument("--metric", default=None, help="sort by this metric, best first (e.g. val/lpips)")
    args = parser.parse_args(argv)
    if not args.sweep_dir.is_dir():
        parser.error(f"{args.sweep_dir}: no such folder")
    rows = collect_results(args.sweep_dir)
    if not rows:
        parser.error(f"{args.sweep_dir}: holds no {RECORD_NAME} (not a deepfill sweep folder?)")
    csv_path, md_path = write_results_table(args.sweep_dir, rows, args.metric)
    print(md_path.read_text(), end="")
    print(f"written: {md_path}, {csv_path}")


if __name__ == "__main__":
    main()
