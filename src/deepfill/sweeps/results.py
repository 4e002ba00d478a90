"""A sweep's results: its runs' records collected into rows, and the rows of one setting
aggregated over its seeds (mean, 95% interval, paired difference to a reference setting)."""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from deepfill.evaluation.metrics import higher_is_better, selection_metric
from deepfill.sweeps.jobs import RECORD_NAME, REPORTED_PREFIXES, job_order, read_record
from deepfill.sweeps.settings import EXTENT_KEYS, SEED_KEY, parse_override, setting_label, setting_of
from deepfill.utils.errors import UserError

__all__ = [
    "FALLBACK_METRIC",
    "aggregate_settings",
    "collect_results",
    "metric_columns",
    "ranking_metric",
    "sort_key",
]

# Ranks a sweep whose optimized_metric no run computed.
FALLBACK_METRIC = selection_metric(lpips=False)


def _job_seed(folder: Path, override: str | None) -> int | str:
    """A job's seed: its override, else the one its resolved config holds."""
    if override is not None:
        value = override
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

    ``params``: the swept keys (columns); by default every key of the runs' settings
    (:func:`~deepfill.sweeps.settings.setting_of`) whose value differs between them. The seed is
    a column of its own, never a setting: the runs of one setting with several seeds are its
    replicates. Raises :class:`UserError` when the folder mixes runs
    of other sweeps (a key set in some runs and not in others).
    """
    sweep_dir = Path(sweep_dir)
    records = []
    paths = sorted(
        sweep_dir.rglob(RECORD_NAME), key=lambda p: job_order(p.parent.relative_to(sweep_dir).as_posix())
    )
    for path in paths:
        record = read_record(path.parent)
        if record is not None:
            records.append((path.parent, path.parent.relative_to(sweep_dir).as_posix(), record))
    settings = [setting_of(rec.get("overrides", [])) for _, _, rec in records]
    seeds = [dict(map(parse_override, rec.get("overrides", []))).get(SEED_KEY) for _, _, rec in records]
    _check_one_sweep(sweep_dir, [job for _, job, _ in records], settings)
    if params is None:
        keys = sorted({k for s in settings for k in s})
        params = [k for k in keys if len({s.get(k) for s in settings}) > 1]
    params = [p for p in params if p != SEED_KEY]
    rows = []
    for (folder, job, record), setting, seed in zip(records, settings, seeds, strict=True):
        row: dict[str, Any] = {"job": job, "status": record.get("status", "?")}
        row |= {key: setting.get(key, "") for key in params}
        row[SEED_KEY] = _job_seed(folder, seed)
        row |= record.get("metrics") or {}
        if record.get("ended") and record.get("started"):
            row["minutes"] = round((record["ended"] - record["started"]) / 60, 2)
        rows.append(row)
    return rows


def _check_one_sweep(sweep_dir: Path, jobs: list[str], settings: list[dict[str, str]]) -> None:
    keys = {k for s in settings for k in s if k not in EXTENT_KEYS}
    for key in sorted(keys):
        having = [job for job, s in zip(jobs, settings, strict=True) if key in s]
        if len(having) != len(jobs):
            lacking = [job for job in jobs if job not in having]
            raise UserError(
                f"{sweep_dir}: mixes runs of other sweeps: {key} is set in job(s) {', '.join(having[:3])} "
                f"but not in {', '.join(lacking[:3])}; give each sweep its own sweep_name (or folder)"
            )


def sort_key(metric: str | None):
    def key(row: dict) -> tuple:
        value = row.get(metric) if metric else None
        if not isinstance(value, float) or math.isnan(value):
            return (1, 0.0, job_order(row["job"]))
        return (0, -value if higher_is_better(metric) else value, job_order(row["job"]))

    return key


def metric_columns(rows: list[dict[str, Any]]) -> list[str]:
    return sorted({c for row in rows for c in row if c.startswith(REPORTED_PREFIXES)})


def ranking_metric(rows: list[dict[str, Any]], optimized_metric: str | None) -> tuple[str | None, str]:
    """The metric to rank by, and a note when the asked one was not computed."""
    if optimized_metric and not any(optimized_metric in row for row in rows):
        # E.g. val/lpips without the LPIPS weights: rank by what every run has.
        return FALLBACK_METRIC, f"{optimized_metric} was not computed; "
    return optimized_metric, ""


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

    metrics = metric_columns(rows)
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
