"""``deepfill-sweep-table``: (re)build a sweep's results tables, its picture, or a replicated rerun
of the best runs of a search.

    deepfill-sweep-table logs/sweeps/attention                      # results.md / .csv, printed
    deepfill-sweep-table logs/sweeps/attention --plot               # and results.png
    deepfill-sweep-table logs/sweeps/attention --reference ksize=5  # differences to that setting
    deepfill-sweep-table logs/sweeps/optuna_loss_weights --export-best 3 --replicates 3

The metric and reference default to the sweep's own (``optimized_metric``, ``reference``).
"""

from __future__ import annotations

import argparse
import shlex
from collections.abc import Sequence
from pathlib import Path

from deepfill.sweeps.best import export_best
from deepfill.sweeps.jobs import RECORD_NAME
from deepfill.sweeps.report import plot_results, write_results_table
from deepfill.sweeps.results import collect_results
from deepfill.utils.errors import UserError, report_errors

__all__ = ["main"]


def _sweep_setting(sweep_dir: Path, key: str) -> str | None:
    """A top-level key of the sweep's own config (its first job's), e.g. ``optimized_metric``."""
    from omegaconf import OmegaConf

    for config in sorted(sweep_dir.glob("*/.hydra/config.yaml")):
        try:
            value = OmegaConf.load(config).get(key)
        except Exception:
            continue
        return None if value is None else str(value)
    return None


def _run(args: argparse.Namespace) -> None:
    sweep_dir: Path = args.sweep_dir
    if not sweep_dir.is_dir():
        raise UserError(f"{sweep_dir}: no such folder")
    metric = args.metric or _sweep_setting(sweep_dir, "optimized_metric")
    if args.export_best is not None:
        names, folder, shared = export_best(sweep_dir, args.export_best, metric)
        command = [
            "deepfill-train",
            "-m",
            *shared,
            "+sweep=custom",
            f"sweep_name={sweep_dir.name}_best{len(names)}",
            f"hydra.searchpath=[file://{folder.resolve()}]",
            f"+best={','.join(names)}",
            f"replicates={args.replicates}",
        ]
        command += [f"optimized_metric={metric}"] if metric else []
        print(
            f"wrote {len(names)} setting(s) to {folder / 'best'}; to run each with {args.replicates} seeds:"
        )
        print(" ".join(shlex.quote(part) for part in command))
        return
    rows = collect_results(sweep_dir)
    if not rows:
        raise UserError(f"{sweep_dir}: holds no {RECORD_NAME} (not a deepfill sweep folder?)")
    reference = args.reference or _sweep_setting(sweep_dir, "reference")
    csv_path, md_path = write_results_table(sweep_dir, rows, metric, reference)
    print(md_path.read_text(), end="")
    written = [md_path, csv_path, sweep_dir / "results_jobs.csv"]
    if args.plot:
        written.append(plot_results(sweep_dir, [metric] if metric else None))
    print("written: " + ", ".join(str(p) for p in written))


def main(argv: Sequence[str] | None = None) -> None:
    """Console entry point."""
    parser = argparse.ArgumentParser(
        prog="deepfill-sweep-table",
        description="Rebuild a sweep's results tables (per setting, over its seeds) at any time.",
    )
    parser.add_argument("sweep_dir", type=Path, help="a multirun folder holding one folder per job")
    parser.add_argument("--metric", default=None, help="rank by this metric (default: the sweep's)")
    parser.add_argument(
        "--reference", default=None, help="the setting others are compared with, e.g. 'ksize=5 rate=1'"
    )
    parser.add_argument("--plot", action="store_true", help="also draw results.png")
    parser.add_argument(
        "--export-best",
        type=int,
        default=None,
        metavar="K",
        help="write the K best runs as settings to rerun",
    )
    parser.add_argument(
        "--replicates", type=int, default=3, help="seeds per setting of that rerun (default 3)"
    )
    args = parser.parse_args(argv)
    if args.replicates < 1:
        parser.error(f"--replicates: must be >= 1, got {args.replicates}")
    report_errors("deepfill-sweep-table", _run, args)


if __name__ == "__main__":
    main()
