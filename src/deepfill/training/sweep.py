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

from deepfill.evaluation.metrics import METRIC_NAMES, METRICS, higher_is_better, selection_metric
from deepfill.evaluation.tables import write_csv, write_table
from deepfill.utils.errors import NoSpaceError, UserError
from deepfill.utils.files import atomic_path

__all__ = [
    "RECORD_NAME",
    "SEED_KEY",
    "ResultsTable",
    "aggregate_settings",
    "begin_job",
    "collect_results",
    "end_job",
    "export_best",
    "finished_jobs",
    "job_record",
    "parse_override",
    "plot_results",
    "read_record",
    "setting_job_type",
    "setting_label",
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


SEED_KEY = "seed"


def _job_seed(folder: Path, setting: dict[str, str]) -> int | str:
    """A job's seed: its override, else the one its resolved config holds."""
    if SEED_KEY in setting:
        value = setting[SEED_KEY]
    else:
        config = folder / ".hydra" / "config.yaml"
        try:
            from omegaconf import OmegaConf

            value = OmegaConf.load(config).get(SEED_KEY, "") if config.is_file() else ""
        except Exception:  # a config another tool wrote; the seed is then unknown
            value = ""
    try:
        return int(value)
    except (TypeError, ValueError):
        return str(value)


def collect_results(
    sweep_dir: str | os.PathLike, params: Iterable[str] | None = None
) -> list[dict[str, Any]]:
    """One row per run folder under ``sweep_dir``, in job order: job, status, swept settings,
    seed, metrics, minutes.

    ``params``: the swept keys (columns); by default every override key whose value differs
    between the runs. The seed is a column of its own, never a setting: the runs of one setting
    with several seeds are its replicates. Raises :class:`UserError` when the folder mixes runs
    of other sweeps (a key set in some runs and not in others).
    """
    sweep_dir = Path(sweep_dir)
    records = []
    paths = sorted(
        sweep_dir.rglob(RECORD_NAME), key=lambda p: _job_order(p.parent.relative_to(sweep_dir).as_posix())
    )
    for path in paths:
        record = read_record(path.parent)
        if record is not None:
            records.append((path.parent, path.parent.relative_to(sweep_dir).as_posix(), record))
    settings = [
        {k: v for k, v in map(parse_override, rec.get("overrides", [])) if not k.startswith(_PLACEMENT_KEYS)}
        for _, _, rec in records
    ]
    _check_one_sweep(sweep_dir, [job for _, job, _ in records], settings)
    if params is None:
        keys = sorted({k for s in settings for k in s})
        params = [k for k in keys if len({s.get(k) for s in settings}) > 1]
    params = [p for p in params if p != SEED_KEY]
    rows = []
    for (folder, job, record), setting in zip(records, settings, strict=True):
        row: dict[str, Any] = {"job": job, "status": record.get("status", "?")}
        row |= {key: setting.get(key, "") for key in params}
        row[SEED_KEY] = _job_seed(folder, setting)
        row |= record.get("metrics") or {}
        if record.get("ended") and record.get("started"):
            row["minutes"] = round((record["ended"] - record["started"]) / 60, 2)
        rows.append(row)
    return rows


def _check_one_sweep(sweep_dir: Path, jobs: list[str], settings: list[dict[str, str]]) -> None:
    keys = {k for s in settings for k in s if k not in _EXTENT_KEYS}
    for key in sorted(keys):
        having = [job for job, s in zip(jobs, settings, strict=True) if key in s]
        if len(having) != len(jobs):
            lacking = [job for job in jobs if job not in having]
            raise UserError(
                f"{sweep_dir}: mixes runs of other sweeps: {key} is set in job(s) {', '.join(having[:3])} "
                f"but not in {', '.join(lacking[:3])}; give each sweep its own sweep_name (or folder)"
            )


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


def _metric_columns(rows: list[dict[str, Any]]) -> list[str]:
    return sorted({c for row in rows for c in row if c.startswith(REPORTED_PREFIXES)})


def _ranking_metric(rows: list[dict[str, Any]], optimized_metric: str | None) -> tuple[str | None, str]:
    """The metric to rank by, and a note when the asked one was not computed."""
    if optimized_metric and not any(optimized_metric in row for row in rows):
        # E.g. val/lpips without the LPIPS weights: rank by what every run has.
        return FALLBACK_METRIC, f"{optimized_metric} was not computed; "
    return optimized_metric, ""


def setting_label(setting: dict[str, Any], params: Sequence[str]) -> str:
    """``"ksize=3 rate=2"``: a setting by the last part of each swept key (the full key when the
    last parts clash)."""
    short = [p.rsplit(".", 1)[-1] for p in params]
    names = short if len(set(short)) == len(short) else list(params)
    return (
        " ".join(f"{n}={setting.get(p, '')}" for n, p in zip(names, params, strict=True)) or "(one setting)"
    )


# Overrides that say where or how a sweep runs, not what a setting is.
_NOT_A_SETTING = (
    "sweep",
    "sweep_name",
    "experiment",
    "replicates",
    "reference",
    "optimized_metric",
    "resume",
)


def setting_job_type(overrides: Sequence[str], limit: int = 64) -> str:
    """A W&B ``job_type`` naming a job's setting: its overrides without the seed and the keys
    of where and how it runs, so that the replicates of one setting share it (W&B then groups
    them, with mean and spread, under the sweep's group). At most ``limit`` characters (W&B's
    limit); longer labels end in a short hash that keeps settings apart."""
    import hashlib

    kept = [
        o
        for o in overrides
        if (key := parse_override(o)[0]) != SEED_KEY
        and key not in _NOT_A_SETTING
        and not key.startswith((*_PLACEMENT_KEYS, "paths.", "logger", "callbacks."))
    ]
    label = " ".join(sorted(kept)) or "default"
    if len(label) <= limit:
        return label
    digest = hashlib.sha1(label.encode()).hexdigest()[:8]
    return f"{label[: limit - 9]}~{digest}"


def _find_reference(settings: list[dict[str, Any]], params: Sequence[str], reference: str | None) -> int:
    """Index of the reference setting: the first (in job order) unless ``reference`` names one by
    ``key=value`` pairs (separated by spaces or ';'; keys may be shortened to their last part)."""
    if not reference:
        return 0
    pairs = [p for p in str(reference).replace(";", " ").split() if p]
    wanted = []
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise UserError(
                f"reference: expected key=value pairs (e.g. reference=ksize=5), got {reference!r}"
            )
        matches = [p for p in params if p == key.lstrip("+") or p.rsplit(".", 1)[-1] == key]
        if len(matches) != 1:
            what = "is not a swept key" if not matches else "names more than one swept key"
            raise UserError(f"reference: {key!r} {what} of this sweep (swept: {', '.join(params) or 'none'})")
        wanted.append((matches[0], value))
    found = [i for i, s in enumerate(settings) if all(str(s.get(k)) == v for k, v in wanted)]
    labels = "; ".join(setting_label(s, params) for s in settings[:6])
    if not found:
        raise UserError(f"reference: {reference!r} is not a setting of this sweep (settings: {labels})")
    if len(found) > 1:
        raise UserError(f"reference: {reference!r} matches {len(found)} settings; name more keys ({labels})")
    return found[0]


def aggregate_settings(
    rows: list[dict[str, Any]], params: Sequence[str], reference: str | None = None
) -> tuple[list[dict[str, Any]], int]:
    """One row per setting (in job order) over its finished replicates: the swept keys, ``n``
    (finished runs), ``seeds``, and per metric ``<m>_mean``, ``<m>_std``, ``<m>_ci_low``,
    ``<m>_ci_high`` (95% Student t), and against the reference setting, paired by seed,
    ``<m>_diff``, ``<m>_diff_ci_low``, ``<m>_diff_ci_high``, ``<m>_diff_n``. Returns the rows and
    the reference's index."""
    from deepfill.evaluation.statistics import paired_difference, summarise_values

    metrics = _metric_columns(rows)
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault(tuple(str(row.get(p, "")) for p in params), []).append(row)
    settings = [dict(zip(params, key, strict=True)) for key in groups]
    ref = _find_reference(settings, params, reference)
    by_seed = [
        {
            m: {r[SEED_KEY]: float(r[m]) for r in members if r["status"] == "finished" and m in r}
            for m in metrics
        }
        for members in groups.values()
    ]
    out = []
    for index, (setting, members, values) in enumerate(zip(settings, groups.values(), by_seed, strict=True)):
        # A seed counts once (a search can run one setting with one seed twice: the later run).
        seeds = list(dict.fromkeys(r[SEED_KEY] for r in members if r["status"] == "finished"))
        row: dict[str, Any] = dict(setting)
        row |= {"n": len(seeds), "jobs": len(members), "seeds": " ".join(str(seed) for seed in seeds)}
        for m in metrics:
            summary = summarise_values(values[m].values())
            row |= {f"{m}_mean": summary.mean, f"{m}_std": summary.std}
            row |= {f"{m}_ci_low": summary.ci_low, f"{m}_ci_high": summary.ci_high}
            # The reference against itself: no difference to report.
            diff = paired_difference(values[m], by_seed[ref][m] if index != ref else {})
            row |= {
                f"{m}_diff": diff.mean,
                f"{m}_diff_ci_low": diff.ci_low,
                f"{m}_diff_ci_high": diff.ci_high,
            }
            row[f"{m}_diff_n"] = diff.n
        out.append(row)
    return out, ref


def _verdict(row: dict[str, Any], metric: str, is_reference: bool) -> str:
    if row["n"] == 0:
        return "no finished run"
    if is_reference:
        return "reference"
    n, low, high = row[f"{metric}_diff_n"], row[f"{metric}_diff_ci_low"], row[f"{metric}_diff_ci_high"]
    if n < 2:
        return f"n={n}: no interval"
    if low <= 0 <= high:
        return f"not distinguishable at n={n}"
    better = (low > 0) == higher_is_better(metric)
    return "better" if better else "worse"


def _number(value: Any, digits: int = 4) -> str:
    if not isinstance(value, float):
        return str(value)
    return "" if math.isnan(value) else f"{value:.{digits}g}"


def _interval(mean: float, low: float, high: float) -> str:
    if math.isnan(mean):
        return ""
    if math.isnan(low):
        return _number(mean)
    return f"{_number(mean)} [{_number(low)}, {_number(high)}]"


def write_results_table(
    sweep_dir: str | os.PathLike,
    rows: list[dict[str, Any]],
    optimized_metric: str | None = None,
    reference: str | None = None,
    params: Sequence[str] | None = None,
) -> tuple[Path, Path]:
    """Write the sweep's tables into ``sweep_dir`` and return the paths of ``results.csv`` and
    ``results.md``: one row per setting (mean, standard deviation, 95% interval over its seeds,
    and the difference to the reference setting paired by seed), best first by
    ``optimized_metric``. ``results_jobs.csv`` / ``results_jobs.md`` keep one row per job."""
    sweep_dir = Path(sweep_dir)
    metric, note = _ranking_metric(rows, optimized_metric)
    if params is None:
        fixed = {"job", "status", SEED_KEY, "minutes"}
        params = [c for c in dict.fromkeys(c for row in rows for c in row) if c not in fixed]
        params = [c for c in params if not c.startswith(REPORTED_PREFIXES)]
    params = list(params)
    job_rows = sorted(rows, key=_sort_key(metric))
    metric_cols = _metric_columns(rows)
    if metric in metric_cols:
        metric_cols.remove(metric)
        metric_cols.insert(0, metric)
    job_columns = ["job", "status", *params, SEED_KEY, *metric_cols]
    job_columns += ["minutes"] if any("minutes" in r for r in rows) else []
    finished = sum(r["status"] == "finished" for r in rows)
    direction = ("higher" if higher_is_better(metric) else "lower") if metric else ""
    title = f"# Sweep runs: {sweep_dir.resolve().name}\n\n{finished} of {len(rows)} runs finished"
    if metric:
        title += f"; {note}sorted by {metric} ({direction} is better), best first"
    write_table(
        job_rows,
        job_columns,
        sweep_dir / "results_jobs.csv",
        sweep_dir / "results_jobs.md",
        title=title + ".",
        float_format=".4g",
    )
    settings, ref = aggregate_settings(rows, params, reference)
    reference_label = setting_label(settings[ref], params)
    for i, row in enumerate(settings):
        row["reference"] = i == ref
    if metric:
        sign = -1.0 if higher_is_better(metric) else 1.0
        settings.sort(
            key=lambda r: (math.isnan(r.get(f"{metric}_mean", math.nan)), sign * r.get(f"{metric}_mean", 0.0))
        )
    stats = [f"{m}_{part}" for m in metric_cols for part in ("mean", "std", "ci_low", "ci_high")]
    diffs = [f"{m}_{part}" for m in metric_cols for part in ("diff", "diff_ci_low", "diff_ci_high", "diff_n")]
    csv_columns = [*params, "n", "jobs", "seeds", "reference", *stats, *diffs]
    csv_path, md_path = sweep_dir / "results.csv", sweep_dir / "results.md"
    write_csv(settings, csv_columns, csv_path)
    lines = _settings_markdown(
        sweep_dir, settings, params, metric, note, reference_label, finished, len(rows)
    )
    with atomic_path(md_path) as tmp:
        tmp.write_text("\n".join(lines) + "\n")
    return csv_path, md_path


def _settings_markdown(
    sweep_dir: Path,
    settings: list[dict[str, Any]],
    params: Sequence[str],
    metric: str | None,
    note: str,
    reference_label: str,
    finished: int,
    total: int,
) -> list[str]:
    most = max((s["n"] for s in settings), default=0)
    lines = [
        f"# Sweep results: {sweep_dir.resolve().name}",
        "",
        f"{len(settings)} setting(s), {finished} of {total} runs finished "
        f"(up to {most} seed(s) per setting).",
    ]
    if metric:
        direction = "higher" if higher_is_better(metric) else "lower"
        ranked = f"{note}ranked" if note else "Ranked"
        lines[-1] += f" {ranked} by the mean {metric} ({direction} is better), best first."
    lines += [
        "Mean over seeds with its 95% interval (Student t); the difference to the reference setting",
        f"({reference_label}) is paired by seed, with its 95% interval. Per-run rows: results_jobs.md.",
        "",
    ]
    others = [m[: -len("_mean")] for m in settings[0] if m.endswith("_mean") and m[: -len("_mean")] != metric]
    header = ["rank", *params, "n"]
    if metric:
        header += [f"{metric} [95% CI]", "difference to reference [95% CI]", "verdict"]
    header += [f"{m} (mean ± sd)" for m in others]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for rank, row in enumerate(settings, 1):
        cells = [str(rank), *[str(row.get(p, "")) for p in params], str(row["n"])]
        if metric:
            m = metric
            cells.append(_interval(row[f"{m}_mean"], row[f"{m}_ci_low"], row[f"{m}_ci_high"]))
            cells.append(
                ""
                if row["reference"]
                else _interval(row[f"{m}_diff"], row[f"{m}_diff_ci_low"], row[f"{m}_diff_ci_high"])
            )
            cells.append(_verdict(row, m, row["reference"]))
        for m in others:
            mean, std = row[f"{m}_mean"], row[f"{m}_std"]
            cells.append(_number(mean) + ("" if math.isnan(std) else f" ± {_number(std, 2)}"))
        lines.append("| " + " | ".join(cells) + " |")
    if len(settings) > 1 and others:
        lines += [
            "",
            "Differences to the reference in every metric, paired by seed, with their 95% intervals:",
            "",
        ]
        header = [*params, "n", *[f"{m} difference" for m in others]]
        lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for row in settings:
            if row["reference"]:
                continue
            cells = [*[str(row.get(p, "")) for p in params], str(row[f"{others[0]}_diff_n"])]
            cells += [
                _interval(row[f"{m}_diff"], row[f"{m}_diff_ci_low"], row[f"{m}_diff_ci_high"]) for m in others
            ]
            lines.append("| " + " | ".join(cells) + " |")
    lines += _baseline_lines(sweep_dir)
    if most < 2:
        lines += [
            "",
            "One run per setting: no interval and no verdict; run the sweep with replicates=3 for them.",
        ]
    return lines


def _baseline_lines(sweep_dir: Path) -> list[str]:
    """The classical baselines each run was compared with at its end (its ``comparison.csv``:
    the same validation images and fixed masks for every run, so any run's rows serve)."""
    import csv

    for path in sorted(sweep_dir.glob("*/comparison.csv"), key=lambda p: _job_order(p.parent.name)):
        with path.open(newline="") as file:
            rows = [r for r in csv.DictReader(file) if r.get("method") != "deepfill"]
        if not rows:
            continue
        columns = [c for c in METRIC_NAMES if c in rows[0]]
        lines = [
            "",
            f"Classical baselines on the same {rows[0].get('images', '?')} validation images and masks "
            f"(deterministic; from run {path.parent.name}):",
            "",
            "| method | " + " | ".join(columns) + " |",
            "|" + "---|" * (len(columns) + 1),
        ]
        lines += [
            "| " + " | ".join([r["method"], *(_number(float(r[c])) for c in columns)]) + " |" for r in rows
        ]
        return lines
    return []


def plot_results(sweep_dir: str | os.PathLike, metrics: Sequence[str] | None = None) -> Path:
    """``results.png``: per setting, the mean of each metric with its 95% interval and each
    seed's run as a dot (from ``results.csv`` and ``results_jobs.csv``)."""
    import csv

    # A Figure of its own, not pyplot: no backend is chosen or changed for the caller (a notebook).
    from matplotlib.figure import Figure

    sweep_dir = Path(sweep_dir)
    with (sweep_dir / "results.csv").open(newline="") as file:
        settings = list(csv.DictReader(file))
    with (sweep_dir / "results_jobs.csv").open(newline="") as file:
        jobs = [r for r in csv.DictReader(file) if r["status"] == "finished"]
    if not settings:
        raise UserError(f"{sweep_dir}: results.csv holds no setting")
    fixed = {"n", "jobs", "seeds", "reference"}
    params = [c for c in settings[0] if c not in fixed and not c.startswith(REPORTED_PREFIXES)]
    available = [c[: -len("_mean")] for c in settings[0] if c.endswith("_mean")]
    # The asked ones first, then the usual ones: three panels at most.
    preferred = [
        *(metrics or []),
        *(f"{split}/{m}" for split in ("val", "test") for m, spec in METRICS.items() if spec.in_summary),
    ]
    metrics = [m for m in dict.fromkeys(preferred) if m in available][:3] or available[:3]
    labels = [setting_label(s, params) for s in settings]
    figure = Figure()
    axes = figure.subplots(1, len(metrics), squeeze=False)
    figure.set_size_inches(max(4.2 * len(metrics), 7.0), 0.55 * len(settings) + 1.8)
    for axis, metric in zip(axes[0], metrics, strict=True):
        for y, setting in enumerate(settings):
            mean = float(setting[f"{metric}_mean"] or "nan")
            low, high = (
                float(setting[f"{metric}_ci_low"] or "nan"),
                float(setting[f"{metric}_ci_high"] or "nan"),
            )
            if not math.isnan(low):
                axis.errorbar(mean, y, xerr=[[mean - low], [high - mean]], fmt="o", color="C0", capsize=4)
            else:
                axis.plot(mean, y, "o", color="C0")
            dots = [
                float(j[metric])
                for j in jobs
                if j.get(metric) and all(j.get(p) == setting.get(p) for p in params)
            ]
            axis.plot(dots, [y + 0.18] * len(dots), ".", color="C1", alpha=0.8)
        axis.set_yticks(range(len(settings)), labels if axis is axes[0][0] else [""] * len(settings))
        axis.invert_yaxis()
        better = "higher" if higher_is_better(metric) else "lower"
        axis.set_title(f"{metric} ({better} is better)")
        axis.grid(axis="x", alpha=0.3)
    figure.suptitle(
        f"{sweep_dir.resolve().name}: mean and 95% interval over seeds (dots: single runs)", fontsize=10
    )
    figure.tight_layout()
    out = sweep_dir / "results.png"
    with atomic_path(out) as tmp:
        figure.savefig(tmp, dpi=110, format="png")
    return out


def export_best(
    sweep_dir: str | os.PathLike, count: int, metric: str | None = None
) -> tuple[list[str], Path, list[str]]:
    """The ``count`` best finished runs of a sweep (an Optuna search) as a config group ``best``
    under ``<sweep_dir>/best/``: one file per run with its swept values. Returns the option names,
    the search-path folder and the overrides the runs shared, for a replicated rerun::

        deepfill-train -m <shared> +sweep=custom hydra.searchpath=[file://<folder>] +best=a,b replicates=3
    """
    from omegaconf import OmegaConf

    sweep_dir = Path(sweep_dir)
    if count < 1:
        raise UserError(f"--export-best: must be >= 1, got {count}")
    rows = collect_results(sweep_dir)
    metric, _ = _ranking_metric(rows, metric)
    ranked = [r for r in sorted(rows, key=_sort_key(metric)) if r["status"] == "finished" and metric in r]
    if not ranked:
        raise UserError(f"{sweep_dir}: no finished run with {metric} to choose from")
    fixed = {"job", "status", SEED_KEY, "minutes"}
    params = [c for c in ranked[0] if c not in fixed and not c.startswith(REPORTED_PREFIXES)]
    folder = sweep_dir / "best"
    names = []
    for row in ranked[:count]:
        name = "trial_" + row["job"].replace("/", "_")
        values = OmegaConf.from_dotlist([f"{p}={row[p]}" for p in params])
        text = (
            "# @package _global_\n"
            + f"# run {row['job']} of {sweep_dir.resolve().name}: {metric} {row[metric]:.6g}\n"
        )
        with atomic_path(folder / "best" / f"{name}.yaml") as tmp:
            tmp.write_text(text + OmegaConf.to_yaml(values))
        names.append(name)
    record = read_record(sweep_dir / ranked[0]["job"]) or {}
    shared = [
        o
        for o in record.get("overrides", [])
        if parse_override(o)[0] not in params
        and parse_override(o)[0] not in ("sweep", "sweep_name", SEED_KEY)
        and not parse_override(o)[0].startswith(_PLACEMENT_KEYS)
    ]
    return names, folder, shared


class ResultsTable(Callback):
    """Hydra callback: at the end of a multirun, write the sweep's results tables and print them."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(str(config.hydra.sweep.dir))
        swept = [k.lstrip("+~") for k in (config.hydra.sweeper.get("params") or {})]
        params = [k for k in swept if k != SEED_KEY] or None
        rows = collect_results(sweep_dir, params)
        if not rows:
            print(f"sweep {sweep_dir}: no run records found", flush=True)
            return
        metric = config.get("optimized_metric")
        csv_path, md_path = write_results_table(sweep_dir, rows, metric, config.get("reference"))
        print(f"sweep results: {md_path} and {csv_path} (per run: results_jobs.csv)", flush=True)
        print(md_path.read_text(), flush=True)
        if any(r["status"] == "finished" for r in rows):
            print(f"sweep picture: {plot_results(sweep_dir, [metric] if metric else None)}", flush=True)
