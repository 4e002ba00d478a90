"""The Hydra callback that writes and prints a multirun's results tables at its end."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from deepfill.sweeps.report import plot_results, write_results_table
from deepfill.sweeps.results import collect_results
from deepfill.sweeps.settings import SEED_KEY

__all__ = ["ResultsTable"]


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
