"""What a training job checks about the multirun (``-m``) it belongs to, from Hydra's runtime
config: replicates, DDP inside a sweep, the metric a sweep ranks by."""

from __future__ import annotations

import pytorch_lightning as pl
from omegaconf import DictConfig

from deepfill.utils.errors import ConfigError

__all__ = [
    "check_multirun_ddp",
    "check_optimized_metric",
    "check_replicates",
    "is_multirun",
    "is_optuna_sweep",
    "task_overrides",
]


def is_multirun() -> bool:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def task_overrides() -> list[str]:
    """This job's command-line overrides (empty outside Hydra)."""
    from hydra.core.hydra_config import HydraConfig

    return list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []


def is_optuna_sweep() -> bool:
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return False
    return "optuna" in str(HydraConfig.get().sweeper.get("_target_", "")).lower()


def check_multirun_ddp(cfg: DictConfig) -> None:
    """Lightning starts the extra DDP ranks of a job by running the command line again; in a
    multirun (``-m``) that command line is the whole sweep, so every rank would start its own
    sweep. Only SLURM starts ranks itself (one task per rank)."""
    from hydra.core.hydra_config import HydraConfig

    if not is_multirun():
        return
    strategy = cfg.trainer.get("strategy")
    strategy = str(strategy.get("_target_", "")) if isinstance(strategy, DictConfig) else str(strategy)
    if "ddp" not in strategy.lower():
        return
    launcher = str(HydraConfig.get().launcher.get("_target_", ""))
    if launcher.endswith("SlurmLauncher"):
        return
    raise ConfigError(
        f"trainer.strategy={strategy} in a multirun (-m) needs launcher=slurm: without SLURM each DDP "
        "rank would start the whole sweep again; use launcher=slurm, or one GPU per job "
        "(launcher=local_gpus trainer=gpu)"
    )


def check_replicates(cfg: DictConfig) -> None:
    """``replicates`` acts in a grid multirun (one job per setting and seed); elsewhere it would be
    silently ignored."""
    replicates = cfg.get("replicates", 1)
    if isinstance(replicates, bool) or not isinstance(replicates, int) or replicates < 1:
        raise ConfigError(f"replicates: must be a whole number >= 1, got {replicates!r}")
    if replicates == 1:
        return
    if not is_multirun():
        raise ConfigError(
            f"replicates={replicates} needs a multirun: add -m (e.g. deepfill-train -m +sweep=custom "
            f"replicates={replicates} ...); a single run has one seed (seed=...)"
        )
    if is_optuna_sweep():
        raise ConfigError(
            "replicates: an Optuna search runs one seed per trial; rerun its best trials with seeds "
            "by `deepfill-sweep-table <sweep folder> --export-best 3 --replicates 3`"
        )


def check_optimized_metric(cfg: DictConfig, model: pl.LightningModule) -> str | None:
    """An Optuna search needs its metric from every trial: stop before training when it is not
    computed. A grid sweep only ranks its table by it: the returned warning says the table ranks
    by PSNR instead (None when the metric is computed or none is set)."""
    key = cfg.get("optimized_metric")
    if not key:
        return None
    computed = [f"{split}/{name}" for split in ("val", "test") for name in model.val_metrics.metrics()]
    if key in computed:
        return None
    hint = " (LPIPS is off or its weights are missing)" if "lpips" in key else ""
    message = f"optimized_metric: {key!r} is not computed by this run{hint}"
    if is_optuna_sweep():
        raise ConfigError(f"{message}; computed: {computed}")
    return f"warning: {message}; the sweep table ranks runs by val/psnr instead"
