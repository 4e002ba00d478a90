"""``deepfill-train``: train DeepFill v1 or v2 from the Hydra configs in ``conf/``.

deepfill-train                                  # conf/train.yaml (sample data, free-form masks)
deepfill-train experiment=quickstart            # what `make train` runs
deepfill-train experiment=places2_v1 paths.data_dir=/data trainer=ddp
deepfill-train ckpt_path=outputs/.../checkpoints/last.ckpt   # resume
deepfill-train -m +sweep=attention launcher=local_gpus         # a sweep, one GPU per job

Compose, check, instantiate, fit, report: each step's work lives in the module it belongs to
(:mod:`deepfill.training.trainer`, :mod:`deepfill.sweeps.multirun`,
:mod:`deepfill.sweeps.jobs`, :mod:`deepfill.evaluation.evaluate`); this command prints.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from omegaconf import DictConfig, OmegaConf, open_dict

from deepfill.cli.launch import hydra_command
from deepfill.utils.errors import ConfigError

if TYPE_CHECKING:
    import pytorch_lightning as pl

# Lightning, PyTorch and the model are imported where the training starts, so that --help and a
# mistake on the command line are answered before them.

__all__ = ["main", "train"]


def _say(*lines: str | None) -> None:
    for line in lines:
        if line:
            print(line, flush=True)


def train(cfg: DictConfig) -> dict[str, float]:
    """Build everything from ``cfg``, fit (and optionally test); returns the final metrics.

    The run folder gets a ``job.json`` record (see :mod:`deepfill.sweeps.jobs`); with ``resume=true``
    a finished run returns its recorded metrics and an interrupted one continues from
    ``checkpoints/last.ckpt``.
    """
    from pytorch_lightning.utilities import rank_zero_only

    from deepfill.sweeps import multirun
    from deepfill.sweeps.jobs import job_record
    from deepfill.utils.validation import validate_config

    validate_config(cfg)
    multirun.check_replicates(cfg)
    multirun.check_multirun_ddp(cfg)
    if cfg.get("ckpt_path") and not Path(cfg.ckpt_path).is_file():
        raise ConfigError(f"ckpt_path: no such file: {cfg.ckpt_path}")
    out = Path(cfg.paths.output_dir)
    resume = bool(cfg.get("resume"))
    with job_record(out, multirun.task_overrides(), resume, write=rank_zero_only.rank == 0) as job:
        if job.finished is not None:
            _say(f"{out}: finished earlier (resume=true), skipping; metrics: {job.finished}")
            return job.finished
        if resume:
            _resume_point(cfg, out)
        job.metrics = _fit(cfg)
    return job.metrics


def _resume_point(cfg: DictConfig, out: Path) -> None:
    """``resume=true``: clear what killed writes left, and continue from the newest checkpoint
    that loads (unless ``ckpt_path`` names one)."""
    from pytorch_lightning.utilities import rank_zero_only

    from deepfill.utils.checkpoints import find_resume_point
    from deepfill.utils.files import remove_stale_temporaries

    if rank_zero_only.rank == 0:
        removed = remove_stale_temporaries(out)
        if removed:
            names = ", ".join(str(p.relative_to(out)) for p in removed[:3])
            names += " ..." if len(removed) > 3 else ""
            _say(f"removed {len(removed)} unfinished file(s) of an interrupted write: {names}")
    if cfg.get("ckpt_path"):
        return
    point = find_resume_point(out / "checkpoints")
    if point.skipped:
        _say(f"warning: {point.skipped}; resuming from {point.path}, the newest that loads")
    elif point.path is not None:
        _say(f"resuming from {point.path}")
    if point.path is not None:
        with open_dict(cfg):
            cfg.ckpt_path = str(point.path)


def _scalar_metrics(trainer: pl.Trainer) -> dict[str, float]:
    return {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}


def _fit(cfg: DictConfig) -> dict[str, float]:
    import pytorch_lightning as pl
    from hydra.utils import instantiate

    from deepfill.sweeps import multirun
    from deepfill.training import trainer as setup
    from deepfill.training.callbacks import AtomicCheckpointIO
    from deepfill.utils.cpu import configure_cpu
    from deepfill.utils.logs import ignore_library_internals

    ignore_library_internals()
    pl.seed_everything(cfg.seed, workers=True)
    reused = configure_cpu()
    setup.set_matmul_precision(cfg.get("float32_matmul_precision"))
    setup.check_accelerator(str(cfg.trainer.get("accelerator", "auto")))
    _say(setup.resolve_precision(cfg.trainer))
    datamodule = instantiate(cfg.data)
    model = instantiate(cfg.model)
    if reused:  # freed memory is kept: larger attention chunks cost no page faults (BENCHMARKS.md)
        from deepfill.models import CPU_CHUNK_BYTES_REUSED, set_cpu_chunk_bytes

        set_cpu_chunk_bytes(model, CPU_CHUNK_BYTES_REUSED)
    _say(multirun.check_optimized_metric(cfg, model))
    callbacks = [instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c is not None]
    _check_budget(cfg, model, callbacks)
    job_type = None
    if multirun.is_multirun():
        from deepfill.sweeps.settings import setting_job_type

        job_type = setting_job_type(multirun.task_overrides())  # the sweep's setting, shared by its seeds
    loggers, lines = setup.build_loggers(cfg, job_type)
    _say(*lines)
    if any(type(logger).__name__ == "WandbLogger" for logger in loggers):
        from deepfill.training.loggers import WandbBestSummary

        callbacks.append(WandbBestSummary())
    for logger in loggers:
        logger.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))
    # Every checkpoint written atomically, whichever callback writes it (plugins the trainer
    # config names, e.g. launcher=slurm's cluster environment, are kept).
    plugins = [instantiate(p) for p in (cfg.trainer.get("plugins") or [])] + [AtomicCheckpointIO()]
    trainer: pl.Trainer = instantiate(
        cfg.trainer, callbacks=callbacks, logger=loggers or False, plugins=plugins
    )
    _say(setup.fit_validation_to_epoch(trainer, datamodule))
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
        _say("\n".join(setup.describe_outputs(Path(cfg.paths.output_dir), loggers)))
        if not trainer.fast_dev_run:
            _compare_with_baselines(cfg, model, datamodule)
    return metrics


def _check_budget(cfg: DictConfig, model, callbacks: list) -> None:
    """A ``budget`` needs the callback that fits the schedule to it, and a schedule to fit."""
    from deepfill.training.budget import TimeBudget

    budgets = [c for c in callbacks if isinstance(c, TimeBudget)]
    if cfg.get("budget") is not None and not budgets:
        raise ConfigError(
            f"budget={cfg.budget}: this configuration has no callbacks.budget to fit the schedule to it "
            "(debug presets and callbacks=null turn it off); use budget=null"
        )
    for budget in budgets:
        budget.check(model)


def _compare_with_baselines(cfg: DictConfig, model: pl.LightningModule, datamodule) -> None:
    """How the trained generator compares with the classical baselines on the first validation
    images (fixed masks): one line per method, the table in the run folder."""
    from deepfill.evaluation.evaluate import comparison_lines, comparison_verdict, write_baseline_comparison

    spec = cfg.get("baseline_comparison")
    if not spec:
        return
    dataset = getattr(datamodule, "datasets", {}).get("val")
    if dataset is None:
        _say("baseline comparison skipped: no validation data")
        return
    generator = getattr(model, "evaluated_generator", model.generator)  # the EMA when kept
    rows, md_path = write_baseline_comparison(generator, dataset, spec, Path(cfg.paths.output_dir))
    images = rows[0]["images"] if rows else 0
    _say(f"final model vs baselines on {images} validation images with fixed masks ({md_path}):")
    _say("\n".join(comparison_lines(rows)))
    verdict = comparison_verdict(rows)
    if any(" is behind " in line for line in verdict):
        verdict.append("a longer run (a larger budget=, or more steps) trains it further")
    _say("\n".join(verdict))


def _train_job(cfg: DictConfig) -> float | None:
    """One job: ``train``, returning the value a sweeper (Optuna) optimises."""
    from deepfill.sweeps.devices import claim_job_devices

    claim_job_devices(cfg.get("job_devices"))  # launcher=local_gpus: a GPU of its own, before CUDA starts
    metrics = train(cfg)
    key = cfg.get("optimized_metric")
    return metrics.get(key) if key else None


main = hydra_command("deepfill-train", "train", _train_job)


if __name__ == "__main__":
    main()
