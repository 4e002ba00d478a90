"""How a training run's Lightning ``Trainer`` is set up from its config: precision, accelerator,
loggers (W&B offline when there are no credentials, the same W&B run on resume), the validation
interval on short data, and where the run wrote its outputs.

Functions return the lines a user should read; the command prints them.
"""

from __future__ import annotations

from pathlib import Path

import pytorch_lightning as pl
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict

from deepfill.utils.cpu import cpu_native_bf16
from deepfill.utils.credentials import wandb_has_credentials
from deepfill.utils.errors import ConfigError

__all__ = [
    "build_loggers",
    "check_accelerator",
    "describe_outputs",
    "fit_validation_to_epoch",
    "native_bf16",
    "previous_wandb_run",
    "resolve_precision",
    "set_matmul_precision",
]


def set_matmul_precision(value: str | None) -> None:
    """``float32_matmul_precision``: ``highest``, ``high`` (TF32 where the GPU has it) or ``medium``."""
    if value is None:
        return
    if value not in ("highest", "high", "medium"):
        raise ConfigError(f"float32_matmul_precision: must be 'highest', 'high' or 'medium', got {value!r}")
    torch.set_float32_matmul_precision(value)


def check_accelerator(accelerator: str) -> None:
    """A GPU asked for where there is none: one line, before anything is built."""
    if accelerator in ("gpu", "cuda") and not torch.cuda.is_available():
        raise ConfigError(
            f"trainer.accelerator={accelerator}: no CUDA GPU is available here; "
            "use trainer=cpu (or trainer=auto, which takes a GPU when there is one)"
        )


def native_bf16() -> bool:
    """True on GPUs that compute bf16 in hardware (Ampere and newer). V100 and T4 only emulate it,
    slowly, and ``torch.cuda.is_bf16_supported()`` counts emulation unless told not to."""
    if not torch.cuda.is_available():
        return False
    try:
        return torch.cuda.is_bf16_supported(including_emulation=False)
    except TypeError:  # older torch without the argument
        return torch.cuda.is_bf16_supported()


def resolve_precision(trainer_cfg: DictConfig) -> str | None:
    """Set ``trainer_cfg.precision`` to what this machine runs: ``auto`` -> bf16-mixed on GPUs with
    native bf16, else float32; an explicit bf16 on a GPU or CPU without it falls back to float32,
    and the returned line says so (None otherwise). 16-mixed would not be safe: the gradient
    penalty's autograd.grad is not loss-scaled; emulated bf16 is slower than float32. On CPUs bf16
    stays opt-in (``trainer=cpu_bf16``)."""
    precision = str(trainer_cfg.get("precision"))
    gpu = torch.cuda.is_available() and trainer_cfg.get("accelerator") in ("auto", "gpu", "cuda")
    bf16 = native_bf16() if gpu else cpu_native_bf16()
    message = None
    if precision == "auto":
        precision = "bf16-mixed" if gpu and bf16 else "32-true"
    elif precision.startswith("bf16") and not bf16:
        where = "GPU has no native bf16 (e.g. V100, T4)" if gpu else "CPU has no AVX512-BF16 or AMX"
        message = f"trainer.precision={precision}: this {where}; training in float32 instead"
        precision = "32-true"
    with open_dict(trainer_cfg):
        trainer_cfg.precision = precision
    return message


def previous_wandb_run(out: Path) -> str | None:
    """The id of the W&B run an earlier attempt of this run folder logged to (W&B names its run
    folders ``run-<time>-<id>`` / ``offline-run-<time>-<id>``), or None."""
    folders = sorted((out / "wandb").glob("*run-*-*"), key=lambda p: p.stat().st_mtime)
    folders = [p for p in folders if p.is_dir() and not p.is_symlink()]
    return folders[-1].name.rsplit("-", 1)[-1] if folders else None


def build_loggers(cfg: DictConfig, job_type: str | None = None) -> tuple[list, list[str]]:
    """The run's loggers (``cfg.logger``) and the lines to show about them.

    W&B logs offline when no credentials are found (and says how to upload later); a run resumed
    in its folder (``resume=true``) goes on logging to the same W&B run; ``job_type`` (a sweep's
    setting, shared by its replicates) groups the runs of a sweep.
    """
    loggers, lines = [], []
    for logger_cfg in (cfg.get("logger") or {}).values():
        if logger_cfg is None:
            continue
        if "WandbLogger" in str(logger_cfg.get("_target_", "")):
            offline = bool(logger_cfg.get("offline")) or not wandb_has_credentials()
            if offline and not logger_cfg.get("offline"):
                where = f"{cfg.paths.output_dir}/wandb"
                lines.append(
                    f"W&B: no credentials found (WANDB_API_KEY or ~/.netrc): logging offline under {where}; "
                    f"upload later with `wandb sync {where}/offline-run-*`"
                )
            logger_cfg = OmegaConf.merge(logger_cfg, {"offline": offline})
            previous = previous_wandb_run(Path(cfg.paths.output_dir)) if cfg.get("resume") else None
            with open_dict(logger_cfg):
                if previous:
                    # Resumed in its folder: the same W&B run goes on (its history is not split in two).
                    logger_cfg.id, logger_cfg.resume = previous, "allow"
                if job_type is not None:
                    logger_cfg.job_type = job_type
        loggers.append(instantiate(logger_cfg))
    return loggers, lines


def fit_validation_to_epoch(trainer: pl.Trainer, datamodule) -> str | None:
    """A validation interval (in batches) longer than the epoch, with validation counted per epoch
    (``check_val_every_n_epoch`` set), is refused by Lightning; the presets' intervals are sized for
    their full data, so shorter data (``data.train.length=56``) would not start. Validate at the end
    of each epoch instead; the returned line says so (None when nothing changed)."""
    interval, every = trainer.val_check_interval, trainer.check_val_every_n_epoch
    batches_per_epoch = getattr(datamodule, "batches_per_epoch", None)
    if not isinstance(interval, int) or every is None or batches_per_epoch is None:
        return None
    batches = batches_per_epoch(trainer.world_size)
    limit = trainer.limit_train_batches
    if isinstance(limit, int):
        batches = min(batches, limit)
    elif isinstance(limit, float):
        batches = int(batches * limit)
    if not 0 < batches < interval:
        return None
    trainer.val_check_interval = batches
    return (
        f"trainer.val_check_interval={interval} is longer than an epoch ({batches} batches): "
        f"validating at the end of every {every} epoch(s) instead"
    )


def describe_outputs(out: Path, loggers: list) -> list[str]:
    """Where a run wrote everything: its folder, checkpoints, metrics, image grids, W&B run."""
    lines = [f"run folder: {out}"]
    checkpoints = sorted((out / "checkpoints").glob("*.ckpt"))
    if checkpoints:
        lines.append("checkpoints: " + ", ".join(str(p) for p in checkpoints))
    for logger in loggers:
        kind = type(logger).__name__
        if kind == "CSVLogger":
            lines.append(f"metrics: {Path(logger.log_dir) / 'metrics.csv'}")
            lines.append(f"image grids: {Path(logger.log_dir) / 'images'}")
        elif kind == "WandbLogger":
            run_dir = getattr(logger.experiment, "dir", None)  # the run exists: hyper-parameters went to it
            lines.append(f"W&B run: {Path(run_dir).parent if run_dir else out / 'wandb'}")
        elif kind == "TensorBoardLogger":
            lines.append(f"TensorBoard: tensorboard --logdir {logger.log_dir}")
    return lines
