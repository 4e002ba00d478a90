"""What the loggers keep: a CSV logger that keeps what a run already logged when the run is
resumed in its folder, and W&B's run summary of each validation metric's best value.

Lightning's ``CSVLogger`` deletes an existing ``metrics.csv`` when it starts, so a run resumed
after a stop (Ctrl-C, SIGTERM, SIGKILL, a full disk) loses the metrics of everything before it.
This one keeps them: at its first write it reads the file back, drops the rows logged at or
after the step the run resumed from (the part after the checkpoint, trained again now) and goes
on from there. A run started afresh in a folder with an old file (its first step is 0) replaces
it, as Lightning's does. Every rewrite is atomic, and an append that fails (a full disk) is cut
back so the file never ends in half a row.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.loggers import CSVLogger as _LightningCSVLogger
from pytorch_lightning.loggers import WandbLogger as _LightningWandbLogger
from pytorch_lightning.loggers.csv_logs import ExperimentWriter as _LightningWriter

from deepfill.evaluation.metrics import METRICS
from deepfill.utils.errors import no_space_error
from deepfill.utils.files import atomic_path

__all__ = ["CSVLogger", "ResumableExperimentWriter", "WandbBestSummary", "WandbLogger"]


def _step(row: dict[str, Any]) -> float:
    try:
        return float(row.get("step", ""))
    except ValueError:
        return float("inf")


class ResumableExperimentWriter(_LightningWriter):
    """Lightning's CSV experiment writer, keeping an existing ``metrics.csv`` (see module doc)."""

    def __init__(self, log_dir: str) -> None:
        path = Path(log_dir) / self.NAME_METRICS_FILE
        # Lightning's writer deletes an existing metrics file when it starts: keep it aside.
        self._kept = self._read(path)
        super().__init__(log_dir)
        self._merged = False

    @staticmethod
    def _read(path: Path) -> list[dict[str, str]]:
        if not path.is_file():
            return []
        with path.open(newline="") as file:
            return list(csv.DictReader(file))

    def _rewrite(self, rows: list[dict[str, Any]]) -> None:
        path = Path(self.metrics_file_path)
        with atomic_path(path) as tmp, tmp.open("w", newline="") as file:
            writer = csv.DictWriter(file, fieldnames=self.metrics_keys, restval="")
            writer.writeheader()
            writer.writerows(rows)

    def save(self) -> None:
        if not self.metrics:
            return
        new_keys = self._record_new_keys()
        path = Path(self.metrics_file_path)
        if not self._merged:
            # First write of this run: the earlier rows up to where it resumed, then its own.
            first = min(_step(row) for row in self.metrics)
            kept = [row for row in self._kept if _step(row) < first]
            for row in kept:
                self.metrics_keys.extend(k for k in row if k not in self.metrics_keys)
            self.metrics_keys.sort()
            self._rewrite(kept + self.metrics)
            self._merged, self._kept = True, []
        elif new_keys or not path.is_file():
            self._rewrite(self._read(path) + self.metrics)
        else:
            size = path.stat().st_size
            try:
                with path.open("a", newline="") as file:
                    csv.DictWriter(file, fieldnames=self.metrics_keys, restval="").writerows(self.metrics)
            except OSError as error:
                os.truncate(path, size)  # never half a row
                raise no_space_error(error, path) from None
        self.metrics = []


class CSVLogger(_LightningCSVLogger):
    """``pytorch_lightning.loggers.CSVLogger`` whose ``metrics.csv`` survives a resume (see
    module doc). Same arguments."""

    @property
    def experiment(self) -> ResumableExperimentWriter:
        if self._experiment is None:
            from pytorch_lightning.utilities.rank_zero import rank_zero_only

            if rank_zero_only.rank > 0:  # as Lightning's: only rank zero writes
                return super().experiment
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = ResumableExperimentWriter(log_dir=self.log_dir)
        return self._experiment


class WandbLogger(_LightningWandbLogger):
    """``pytorch_lightning.loggers.WandbLogger``, same arguments, without the ``anonymous=None``
    it always hands to ``wandb.init``: wandb deprecated that setting and warns about it on every
    run ("The anonymous setting has no effect..."), a library's internals in the user's log.
    An ``anonymous`` the caller sets is passed on."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self._wandb_init.get("anonymous") is None:
            self._wandb_init.pop("anonymous", None)


class WandbBestSummary(pl.Callback):
    """W&B's run summary keeps each validation metric's best value, in the metric registry's
    direction (W&B's default is the last value). Added by ``deepfill-train`` when it logs to W&B."""

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        from pytorch_lightning.loggers import WandbLogger

        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                for name, spec in METRICS.items():
                    logger.experiment.define_metric(
                        f"val/{name}", summary="max" if spec.higher_is_better else "min"
                    )
