"""``deepfill-train``: train DeepFill v1 from the Hydra configs in ``conf/``.

deepfill-train                                  # conf/train.yaml (sample data, free-form masks)
deepfill-train experiment=quickstart            # what `make train` runs
deepfill-train experiment=places2_v1 paths.data_dir=/data trainer=ddp
deepfill-train ckpt_path=outputs/.../checkpoints/last.ckpt   # resume
deepfill-train -m +sweep=attention launcher=local_gpus         # a sweep, one GPU per job
"""

from __future__ import annotations

from pathlib import Path

import hydra
import pytorch_lightning as pl
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict
from pytorch_lightning.utilities import rank_zero_only

from deepfill.cli.launch import run_hydra_command
from deepfill.utils.config import CONFIG_DIR, wandb_has_credentials
from deepfill.utils.devices import cpu_native_bf16
from deepfill.utils.errors import ConfigError, report_errors

__all__ = ["main", "train"]


def _set_matmul_precision(cfg: DictConfig) -> None:
    value = cfg.get("float32_matmul_precision")
    if value is None:
        return
    if value not in ("highest", "high", "medium"):
        raise ConfigError(f"float32_matmul_precision: must be 'highest', 'high' or 'medium', got {value!r}")
    torch.set_float32_matmul_precision(value)


def _check_accelerator(cfg: DictConfig) -> None:
    accelerator = str(cfg.trainer.get("accelerator", "auto"))
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


def _resolve_precision(cfg: DictConfig) -> None:
    """``precision: auto`` -> bf16-mixed on GPUs with native bf16, else float32; an explicit bf16
    on a GPU or CPU without it falls back to float32 with one line (16-mixed would not be safe:
    the gradient penalty's autograd.grad is not loss-scaled; emulated bf16 is slower than
    float32). On CPUs bf16 stays opt-in (``trainer=cpu_bf16``)."""
    precision = str(cfg.trainer.get("precision"))
    gpu = torch.cuda.is_available() and cfg.trainer.get("accelerator") in ("auto", "gpu", "cuda")
    bf16 = native_bf16() if gpu else cpu_native_bf16()
    if precision == "auto":
        precision = "bf16-mixed" if gpu and bf16 else "32-true"
    elif precision.startswith("bf16") and not bf16:
        where = "GPU has no native bf16 (e.g. V100, T4)" if gpu else "CPU has no AVX512-BF16 or AMX"
        print(f"trainer.precision={precision}: this {where}; training in float32 instead", flush=True)
        precision = "32-true"
    with open_dict(cfg):
        cfg.trainer.precision = precision


def _loggers(cfg: DictConfig) -> list:
    loggers = []
    for logger_cfg in (cfg.get("logger") or {}).values():
        if logger_cfg is None:
            continue
        if "WandbLogger" in str(logger_cfg.get("_target_", "")):
            offline = bool(logger_cfg.get("offline")) or not wandb_has_credentials()
            if offline and not logger_cfg.get("offline"):
                where = f"{cfg.paths.output_dir}/wandb"
                print(
                    f"W&B: no credentials found (WANDB_API_KEY or ~/.netrc): logging offline under {where}; "
                    f"upload later with `wandb sync {where}/offline-run-*`",
                    flush=True,
                )
            logger_cfg = OmegaConf.merge(logger_cfg, {"offline": offline})
            previous = _previous_wandb_run(Path(cfg.paths.output_dir)) if cfg.get("resume") else None
            if previous:
                # Resumed in its folder: the same W&B run goes on (its history is not split in two).
                with open_dict(logger_cfg):
                    logger_cfg.id, logger_cfg.resume = previous, "allow"
            if _multirun():
                from deepfill.training.sweep import setting_job_type

                # The sweep is the group; each setting a job type, shared by its replicates.
                with open_dict(logger_cfg):
                    logger_cfg.job_type = setting_job_type(_task_overrides())
        loggers.append(instantiate(logger_cfg))
    return loggers


def _previous_wandb_run(out: Path) -> str | None:
    """The id of the W&B run an earlier attempt of this run folder logged to (W&B names its run
    folders ``run-<time>-<id>`` / ``offline-run-<time>-<id>``), or None."""
    folders = sorted((out / "wandb").glob("*run-*-*"), key=lambda p: p.stat().st_mtime)
    folders = [p for p in folders if p.is_dir() and not p.is_symlink()]
    return folders[-1].name.rsplit("-", 1)[-1] if folders else None


def _multirun() -> bool:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def _task_overrides() -> list[str]:
    from hydra.core.hydra_config import HydraConfig

    return list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []


def _check_optimized_metric(cfg: DictConfig, model: pl.LightningModule) -> None:
    """An Optuna search needs its metric from every trial: stop before training when it is not
    computed. A grid sweep only ranks its table by it: say so, and the table ranks by PSNR."""
    key = cfg.get("optimized_metric")
    if not key:
        return
    computed = [f"{split}/{name}" for split in ("val", "test") for name in model.val_metrics.metrics()]
    if key in computed:
        return
    hint = " (LPIPS is off or its weights are missing)" if "lpips" in key else ""
    message = f"optimized_metric: {key!r} is not computed by this run{hint}"
    if _optuna_sweep():
        raise ConfigError(f"{message}; computed: {computed}")
    print(f"warning: {message}; the sweep table ranks runs by val/psnr instead", flush=True)


def _check_multirun_ddp(cfg: DictConfig) -> None:
    """Lightning starts the extra DDP ranks of a job by running the command line again; in a
    multirun (``-m``) that command line is the whole sweep, so every rank would start its own
    sweep. Only SLURM starts ranks itself (one task per rank)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
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


def _check_replicates(cfg: DictConfig) -> None:
    """``replicates`` acts in a grid multirun (one job per setting and seed); elsewhere it would be
    silently ignored."""

    replicates = cfg.get("replicates", 1)
    if isinstance(replicates, bool) or not isinstance(replicates, int) or replicates < 1:
        raise ConfigError(f"replicates: must be a whole number >= 1, got {replicates!r}")
    if replicates == 1:
        return
    if not _multirun():
        raise ConfigError(
            f"replicates={replicates} needs a multirun: add -m (e.g. deepfill-train -m +sweep=custom "
            f"replicates={replicates} ...); a single run has one seed (seed=...)"
        )
    if _optuna_sweep():
        raise ConfigError(
            "replicates: an Optuna search runs one seed per trial; rerun its best trials with seeds "
            "by `deepfill-sweep-table <sweep folder> --export-best 3 --replicates 3`"
        )


def _optuna_sweep() -> bool:
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return False
    return "optuna" in str(HydraConfig.get().sweeper.get("_target_", "")).lower()


def train(cfg: DictConfig) -> dict[str, float]:
    """Build everything from ``cfg``, fit (and optionally test); returns the final metrics.

    The run folder gets a ``job.json`` record (see :mod:`deepfill.training.sweep`); with ``resume=true``
    a finished run returns its recorded metrics and an interrupted one continues from
    ``checkpoints/last.ckpt``.
    """
    from deepfill.training.sweep import job_record
    from deepfill.utils.validation import validate_config

    validate_config(cfg)
    _check_replicates(cfg)
    _check_multirun_ddp(cfg)
    if cfg.get("ckpt_path") and not Path(cfg.ckpt_path).is_file():
        raise ConfigError(f"ckpt_path: no such file: {cfg.ckpt_path}")
    out = Path(cfg.paths.output_dir)
    resume = bool(cfg.get("resume"))
    with job_record(out, _task_overrides(), resume, write=rank_zero_only.rank == 0) as job:
        if job.finished is not None:
            print(f"{out}: finished earlier (resume=true), skipping; metrics: {job.finished}", flush=True)
            return job.finished
        if resume and rank_zero_only.rank == 0:
            _remove_stale_temporaries(out)
        if resume and not cfg.get("ckpt_path"):
            from deepfill.utils.checkpoints import find_resume_point

            point = find_resume_point(out / "checkpoints")
            if point.skipped:
                print(
                    f"warning: {point.skipped}; resuming from {point.path}, the newest that loads", flush=True
                )
            elif point.path is not None:
                print(f"resuming from {point.path}", flush=True)
            if point.path is not None:
                with open_dict(cfg):
                    cfg.ckpt_path = str(point.path)
        job.metrics = _fit(cfg)
    return job.metrics


def _remove_stale_temporaries(out: Path) -> None:
    from deepfill.utils.files import remove_stale_temporaries

    removed = remove_stale_temporaries(out)
    if removed:
        names = ", ".join(str(p.relative_to(out)) for p in removed[:3]) + (" ..." if len(removed) > 3 else "")
        print(f"removed {len(removed)} unfinished file(s) of an interrupted write: {names}", flush=True)


def _scalar_metrics(trainer: pl.Trainer) -> dict[str, float]:
    return {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}


def _fit(cfg: DictConfig) -> dict[str, float]:
    pl.seed_everything(cfg.seed, workers=True)
    from deepfill.utils.devices import configure_cpu

    configure_cpu()
    _set_matmul_precision(cfg)
    _check_accelerator(cfg)
    _resolve_precision(cfg)
    datamodule = instantiate(cfg.data)
    model = instantiate(cfg.model)
    _check_optimized_metric(cfg, model)
    callbacks = [instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c is not None]
    loggers = _loggers(cfg)
    for logger in loggers:
        logger.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))
    from deepfill.training.callbacks import AtomicCheckpointIO

    # Every checkpoint written atomically, whichever callback writes it (plugins the trainer
    # config names, e.g. launcher=slurm's cluster environment, are kept).
    plugins = [instantiate(p) for p in (cfg.trainer.get("plugins") or [])] + [AtomicCheckpointIO()]
    trainer: pl.Trainer = instantiate(
        cfg.trainer, callbacks=callbacks, logger=loggers or False, plugins=plugins
    )
    _fit_validation_to_epoch(trainer, datamodule)
    if cfg.get("ckpt_path"):
        from deepfill.utils.checkpoints import check_resume_checkpoint

        check_resume_checkpoint(model, cfg.ckpt_path)
    trainer.fit(model, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))
    metrics = _scalar_metrics(trainer)
    if not trainer.fast_dev_run and not any(k.startswith("val/") for k in metrics):
        # E.g. resumed from a checkpoint written after the last epoch: score the final weights.
        trainer.validate(model, datamodule=datamodule)
        metrics |= _scalar_metrics(trainer)
    if cfg.get("test") and not trainer.fast_dev_run:
        best = next((c.best_model_path for c in callbacks if getattr(c, "best_model_path", "")), None)
        trainer.test(model, datamodule=datamodule, ckpt_path=best or None)
        metrics |= _scalar_metrics(trainer)
    if trainer.is_global_zero:
        _report(cfg, trainer, loggers)
        if not trainer.fast_dev_run:
            _compare_with_baselines(cfg, model, datamodule)
    return metrics


def _fit_validation_to_epoch(trainer: pl.Trainer, datamodule) -> None:
    """A validation interval (in batches) longer than the epoch, with validation counted per epoch
    (``check_val_every_n_epoch`` set), is refused by Lightning; the presets' intervals are sized for
    their full data, so shorter data (``data.train.length=56``) would not start. Validate at the end
    of each epoch instead, and say so."""
    interval, every = trainer.val_check_interval, trainer.check_val_every_n_epoch
    batches_per_epoch = getattr(datamodule, "batches_per_epoch", None)
    if not isinstance(interval, int) or every is None or batches_per_epoch is None:
        return
    batches = batches_per_epoch(trainer.world_size)
    limit = trainer.limit_train_batches
    if isinstance(limit, int):
        batches = min(batches, limit)
    elif isinstance(limit, float):
        batches = int(batches * limit)
    if 0 < batches < interval:
        print(
            f"trainer.val_check_interval={interval} is longer than an epoch ({batches} batches): "
            f"validating at the end of every {every} epoch(s) instead",
            flush=True,
        )
        trainer.val_check_interval = batches


def _compare_with_baselines(cfg: DictConfig, model: pl.LightningModule, datamodule) -> None:
    """Print how the trained generator compares with the classical baselines on the first
    validation images (fixed masks), one line per method, and write the table to the run folder."""
    spec = cfg.get("baseline_comparison")
    if not spec:
        return
    from deepfill.evaluation.evaluate import compare_with_baselines, comparison_lines
    from deepfill.evaluation.metrics import network_free_metrics
    from deepfill.evaluation.tables import write_csv, write_table

    dataset = getattr(datamodule, "datasets", {}).get("val")
    if dataset is None:
        print("baseline comparison skipped: no validation data", flush=True)
        return
    generator = model.generator
    device = next(generator.parameters()).device
    records: list[dict] = []
    rows = compare_with_baselines(
        generator, dataset, spec.get("limit"), int(spec.get("batch_size", 8)), spec.baselines, device, records
    )
    out = Path(cfg.paths.output_dir)
    columns = ["method", "images", *network_free_metrics()]
    _, md_path = write_table(rows, columns, out / "comparison.csv", out / "comparison.md")
    # Per image, for the evaluation noise of a comparison (the spread over images, a paired
    # bootstrap between runs: notebooks/04_sweep_analysis.ipynb).
    write_csv(records, ["method", "image", "hole_ratio", *columns[2:]], out / "comparison_images.csv")
    images = rows[0]["images"] if rows else 0
    print(f"final model vs baselines on {images} validation images with fixed masks ({md_path}):", flush=True)
    print("\n".join(comparison_lines(rows)), flush=True)


def _report(cfg: DictConfig, trainer: pl.Trainer, loggers: list) -> None:
    out = Path(cfg.paths.output_dir)
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
    print("\n".join(lines), flush=True)


def claim_job_devices(cfg: DictConfig) -> list[str]:
    """With ``launcher=local_gpus``: give this job process its own GPU before CUDA starts."""
    spec = cfg.get("job_devices")
    if not spec:
        return []
    from deepfill.utils.devices import claim_devices, visible_gpus

    pool = list(spec.pool) if spec.get("pool") is not None else visible_gpus()
    return claim_devices(pool, spec.lock_dir, count=1, timeout_s=float(spec.timeout_s))


def _train_job(cfg: DictConfig) -> dict[str, float]:
    claim_job_devices(cfg)
    return train(cfg)


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="train")
def _hydra_main(cfg: DictConfig) -> float | None:
    metrics = report_errors("deepfill-train", _train_job, cfg)
    # Sweepers (Optuna) optimise the value returned here.
    key = cfg.get("optimized_metric")
    return metrics.get(key) if key else None


def main() -> None:
    """Console entry point."""
    run_hydra_command("deepfill-train", "train", _hydra_main)


if __name__ == "__main__":
    main()
