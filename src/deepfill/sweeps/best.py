"""The best runs of a search (Optuna) as a config group, for a replicated rerun."""

from __future__ import annotations

import os
from pathlib import Path

from deepfill.sweeps.jobs import REPORTED_PREFIXES, read_record
from deepfill.sweeps.results import collect_results, ranking_metric, sort_key
from deepfill.sweeps.settings import SEED_KEY, key_kind, parse_override
from deepfill.utils.errors import UserError
from deepfill.utils.files import atomic_path

__all__ = ["export_best"]


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
    metric, _ = ranking_metric(rows, metric)
    ranked = [r for r in sorted(rows, key=sort_key(metric)) if r["status"] == "finished" and metric in r]
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
    # The rerun keeps what the runs shared (their other settings, how they were logged), not
    # their seeds, placement or the sweep they belonged to (the rerun is a sweep of its own).
    shared = [
        o
        for o in record.get("overrides", [])
        if (key := parse_override(o)[0]) not in params
        and key not in ("sweep", "sweep_name")
        and key_kind(key) not in ("seed", "placement")
    ]
    return names, folder, shared
