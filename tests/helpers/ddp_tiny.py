"""What the 2-process DDP scripts (ddp_nonfinite.py, ddp_requeue.py) share: a tiny DeepFill
model, embedded data and a 2-rank CPU (gloo) trainer."""

from __future__ import annotations

import pytorch_lightning as pl
import torch
from pytorch_lightning.strategies import DDPStrategy

from deepfill.data import masks as M
from deepfill.data.datamodule import InpaintDataModule
from deepfill.data.datasets import SampleImages
from deepfill.models import GlobalCritic, InpaintGenerator, LocalCritic
from deepfill.training.module import DeepFillModule


def tiny_run(out_dir: str, length: int, callbacks: list | None = None):
    """(model, data, trainer): cnum 8 at 64x64, one critic update per generator update, one
    epoch of ``length`` images per rank, no validation."""
    torch.manual_seed(0)
    model = DeepFillModule(
        InpaintGenerator(cnum=8),
        GlobalCritic(64, cnum=8),
        LocalCritic(32, cnum=8),
        n_critic=1,
        lpips=False,
        log_images_every_n_steps=0,
    )
    data = InpaintDataModule(
        train=SampleImages("train", 64, length=length),
        val=None,
        train_masks=M.rectangle,
        eval_masks=M.centered_rectangle,
        batch_size=1,
    )
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=2,
        strategy=DDPStrategy(process_group_backend="gloo", find_unused_parameters=True),
        max_epochs=1,
        logger=False,
        callbacks=callbacks or [],
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        use_distributed_sampler=False,
        limit_val_batches=0,
        default_root_dir=out_dir,
    )
    return model, data, trainer
