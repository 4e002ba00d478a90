"""Run by tests/test_ddp.py: 2 CPU ranks (gloo); rank 1's first critic loss is made NaN.

Both ranks must skip that update together (no hang in the gradient all-reduce) and end with the
same weights. Each rank writes ``rank<r>.txt`` into the output folder: ``<critic_steps> <checksum>``
(files, not stdout: the ranks' prints can interleave)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytorch_lightning as pl
import torch
from pytorch_lightning.strategies import DDPStrategy

from deepfill.data import masks as M
from deepfill.data.datamodule import InpaintDataModule
from deepfill.data.datasets import SampleImages
from deepfill.models import GlobalCritic, InpaintGenerator, LocalCritic
from deepfill.training import module as module_file

_real_critic_loss = module_file.critic_loss
_calls = {"critic": 0}


def _poisoned_critic_loss(*args, **kwargs):
    loss = _real_critic_loss(*args, **kwargs)
    _calls["critic"] += 1
    if os.environ.get("LOCAL_RANK", "0") == "1" and _calls["critic"] == 1:
        loss.total = loss.total * float("nan")
    return loss


module_file.critic_loss = _poisoned_critic_loss


def main(out_dir: str) -> None:
    torch.manual_seed(0)
    model = module_file.DeepFillModule(
        InpaintGenerator(cnum=8),
        GlobalCritic(64, cnum=8),
        LocalCritic(32, cnum=8),
        n_critic=1,
        lpips=False,
        log_images_every_n_steps=0,
    )
    data = InpaintDataModule(
        train=SampleImages("train", 64, length=8),
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
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        use_distributed_sampler=False,
        limit_val_batches=0,
        default_root_dir=out_dir,
    )
    trainer.fit(model, datamodule=data)
    checksum = sum(float(p.detach().double().sum()) for p in model.global_critic.parameters())
    steps = int(model.critic_steps)
    Path(out_dir, f"rank{trainer.global_rank}.txt").write_text(f"{steps} {checksum:.10e}\n")


if __name__ == "__main__":
    main(sys.argv[1])
