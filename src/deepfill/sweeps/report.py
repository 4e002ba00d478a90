"""A sweep's tables and picture: ``results.md`` / ``results.csv`` (one row per setting),
``results_jobs.md`` / ``.csv`` (one row per run) and ``results.png``."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from deepfill.evaluation.metrics import METRIC_NAMES, METRICS, higher_is_better
from deepfill.evaluation.tables import markdown_table, write_csv, write_table
from deepfill.sweeps.jobs import REPORTED_PREFIXES, job_order
from deepfill.sweeps.results import (
    aggregate_settings,
    metric_columns,
    ranking_metric,
    sort_key,
)
from deepfill.sweeps.settings import SEED_KEY, setting_label
from deepfill.utils.errors import UserError
from deepfill.utils.files import atomic_path

__all__ = ["plot_results", "write_results_table"]


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
    metric, note = ranking_metric(rows, optimized_metric)
    if params is None:
        fixed = {"job", "status", SEED_KEY, "minutes"}
        params = [c for c in dict.fromkeys(c for row in rows for c in row) if c not in fixed]
        params = [c for c in params if not c.startswith(REPORTED_PREFIXES)]
    params = list(params)
    job_rows = sorted(rows, key=sort_key(metric))
    metric_cols = metric_columns(rows)
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
    table = []
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
        table.append(cells)
    lines += markdown_table(header, table)
    if len(settings) > 1 and others:
        lines += [
            "",
            "Differences to the reference in every metric, paired by seed, with their 95% intervals:",
            "",
        ]
        header = [*params, "n", *[f"{m} difference" for m in others]]
        table = []
        for row in settings:
            if row["reference"]:
                continue
            cells = [*[str(row.get(p, "")) for p in params], str(row[f"{others[0]}_diff_n"])]
            cells += [
                _interval(row[f"{m}_diff"], row[f"{m}_diff_ci_low"], row[f"{m}_diff_ci_high"]) for m in others
            ]
            table.append(cells)
        lines += markdown_table(header, table)
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

    for path in sorted(sweep_dir.glob("*/comparison.csv"), key=lambda p: job_order(p.parent.name)):
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
        ]
        cells = [[r["method"], *(_number(float(r[c])) for c in columns)] for r in rows]
        return lines + markdown_table(["method", *columns], cells)
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
