"""``deepfill-train``: train DeepFill v1 from the Hydra configs in ``conf/``.

deepfill-train                                  # conf/train.yaml (sample data, free-form masks)
deepfill-train experiment=quickstart            # what `make train` runs
deepfill-train experiment=places2_v1 paths.data_dir=/data trainer=ddp
deepfill-train ckpt_path=outputs/.../checkpoints/last.ckpt   # resume
"""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
import pytorch_lightning as pl
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict

from .config import CONFIG_DIR, register_resolvers, wandb_has_credentials

__all__ = ["main", "train"]


def _resolve_precision(cfg: DictConfig) -> None:
    if cfg.trainer.get("precision") == "auto":
        gpu = torch.cuda.is_available() and cfg.trainer.get("accelerator") in ("auto", "gpu", "cuda")
        bf16 = gpu and torch.cuda.is_bf16_supported()
        with open_dict(cfg):
            cfg.trainer.precision = "bf16-mixed" if bf16 else "32-true"


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
        loggers.append(instantiate(logger_cfg))
    return loggers


def train(cfg: DictConfig) -> dict[str, float]:
    """Build everything from ``cfg``, fit (and optionally test); returns the final metrics."""
    from .validation import validate_config

    validate_config(cfg)
    pl.seed_everything(cfg.seed, workers=True)
    _resolve_precision(cfg)
    datamodule = instantiate(cfg.data)
    model = instantiate(cfg.model)
    callbacks = [instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c is not None]
    loggers = _loggers(cfg)
    for logger in loggers:
        logger.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))
    trainer: pl.Trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)
    if cfg.get("ckpt_path") and not Path(cfg.ckpt_path).is_file():
        raise FileNotFoundError(f"ckpt_path: no such checkpoint: {cfg.ckpt_path}")
    trainer.fit(model, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}
    if cfg.get("test") and not trainer.fast_dev_run:
        best = next((c.best_model_path for c in callbacks if getattr(c, "best_model_path", "")), None)
        trainer.test(model, datamodule=datamodule, ckpt_path=best or None)
        metrics |= {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}
    if trainer.is_global_zero:
        _report(cfg, trainer, loggers)
    return metrics


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
            run_dir = getattr(logger.experiment, "dir", None) if logger._experiment is not None else None
            lines.append(f"W&B run: {Path(run_dir).parent if run_dir else out / 'wandb'}")
        elif kind == "TensorBoardLogger":
            lines.append(f"TensorBoard: tensorboard --logdir {logger.log_dir}")
    print("\n".join(lines), flush=True)


def run_reporting_errors(task, cfg: DictConfig, prog: str):
    """Run ``task(cfg)``; a configuration or input error ends with one line and exit status 2."""
    from .validation import is_user_error, user_error_message

    try:
        return task(cfg)
    except Exception as error:
        if not is_user_error(error):
            raise
        print(f"{prog}: error: {user_error_message(error)}", file=sys.stderr, flush=True)
        raise SystemExit(2) from None


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="train")
def _hydra_main(cfg: DictConfig) -> float | None:
    metrics = run_reporting_errors(train, cfg, "deepfill-train")
    # Sweepers (Optuna) optimise the value returned here.
    key = cfg.get("optimized_metric")
    return metrics.get(key) if key else None


def main() -> None:
    """Console entry point."""
    register_resolvers()
    _hydra_main()


if __name__ == "__main__":
    main()
