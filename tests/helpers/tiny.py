"""A tiny DeepFill model (cnum 8, 64x64) on embedded data: built in code, or through the
configs with the command-line overrides the tests share."""

from __future__ import annotations

import functools
from pathlib import Path

import pytorch_lightning as pl
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import open_dict

from deepfill.cli.launch import register_command_resolvers
from deepfill.data import masks as M
from deepfill.data.datamodule import InpaintDataModule
from deepfill.data.datasets import SampleImages
from deepfill.models import GlobalCritic, InpaintGenerator, LocalCritic, SNPatchGANCritic
from deepfill.selftest import OFFICIAL_LOSS_V2
from deepfill.training.module import DeepFillModule
from deepfill.utils.config import CONFIG_DIR

SIZE = 64


def adam(lr: float) -> functools.partial:
    return functools.partial(torch.optim.Adam, lr=lr, betas=(0.5, 0.9))


def make_module(size: int = SIZE, cnum: int = 8, family: str = "v1", **kwargs) -> DeepFillModule:
    """A tiny module: v1 (two WGAN critics) or v2 (gated generator, SN-PatchGAN critic, the
    official v2 losses and one critic update per generator update unless ``kwargs`` say)."""
    torch.manual_seed(0)
    kwargs.setdefault("lpips_pretrained", False)
    kwargs.setdefault("log_images_every_n_steps", 0)
    if family == "v2":
        kwargs = {"loss": OFFICIAL_LOSS_V2, "discount": "none", "n_critic": 1} | kwargs
        return DeepFillModule(
            InpaintGenerator(cnum=cnum, gated=True), critic=SNPatchGANCritic(size, cnum=cnum), **kwargs
        )
    return DeepFillModule(
        InpaintGenerator(cnum=cnum),
        GlobalCritic(size, cnum=cnum),
        LocalCritic(size // 2, cnum=cnum),
        **kwargs,
    )


def make_data(length: int = 48, batch_size: int = 4, size: int = SIZE) -> InpaintDataModule:
    return InpaintDataModule(
        train=SampleImages("train", size, length=length),
        val=SampleImages("val", size, length=4),
        train_masks=M.rectangle,
        eval_masks=M.centered_rectangle,
        batch_size=batch_size,
        seed=3,
    )


def make_trainer(tmp_path, **kwargs) -> pl.Trainer:
    defaults = {
        "accelerator": "cpu",
        "devices": 1,
        "logger": False,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "num_sanity_val_steps": 0,
        "default_root_dir": tmp_path,
        "use_distributed_sampler": False,
    }
    return pl.Trainer(**(defaults | kwargs))


# Through the configs: overrides that make every preset tiny.
TINY = [
    "data.image_size=64",
    "data.batch_size=2",
    "data.num_workers=0",
    "data.persistent_workers=false",
    "model.generator.cnum=8",
    "model.global_critic.cnum=8",
    "model.local_critic.cnum=8",
    "model.lpips_pretrained=false",
    "trainer=cpu",
    "logger=csv",
    # The configured schedule as it is (a preset's time budget would rescale it to minutes).
    "budget=null",
]


# TINY for the presets of DeepFill v2 (one critic, no global and local ones).
TINY_V2 = [o for o in TINY if "_critic." not in o] + ["model.critic.cnum=8"]


def tiny(experiment: str) -> list[str]:
    """The TINY overrides for an experiment preset (v2 presets end in ``_v2``)."""
    return TINY_V2 if experiment.endswith("_v2") else TINY


# Two critic steps and one validation batch per job of a sweep: seconds on a CPU.
JOB = [
    *TINY,
    "trainer.max_epochs=1",
    "+trainer.limit_train_batches=2",
    "+trainer.limit_val_batches=1",
    "data.val.length=2",
    "model.n_critic=1",
]

# The quickstart shrunk for 2 gloo processes on 2 cores (DDP tests).
DDP_TINY = [
    "experiment=quickstart",
    "mask=free_form_v2",
    "trainer=ddp_cpu",
    "logger=csv",
    "data.image_size=64",
    "data.num_workers=0",
    "data.persistent_workers=false",
    "model.generator.cnum=8",
    "model.global_critic.cnum=8",
    "model.local_critic.cnum=8",
    "model.n_critic=1",
    "model.pretrain_coarse_steps=0",
    "model.reconstruction_steps=0",
    "trainer.check_val_every_n_epoch=1",
    "trainer.val_check_interval=1.0",
    "+trainer.num_sanity_val_steps=0",
    "budget=null",
]


# The same for DeepFill v2 (its quickstart; one critic).
DDP_TINY_V2 = [
    "experiment=quickstart_v2" if o == "experiment=quickstart" else o for o in DDP_TINY if "_critic." not in o
] + ["model.critic.cnum=8"]


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONFIG_DIR / group).glob("*.yaml"))


def compose_cfg(
    overrides: list[str], output_dir: Path, config_name: str = "train", extra: dict | None = None
):
    register_command_resolvers()  # as the commands do before composing
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(config_name, overrides=overrides, return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(output_dir)
        cfg.hydra.job.num = 0
        for key, value in (extra or {}).items():
            cfg[key] = value
    HydraConfig.instance().set_config(cfg)
    return cfg


# ---------------------------------------------------------------- deepfill-eval on a folder
def eval_workspace(root: Path, count: int) -> Path:
    """``count`` random 72x90 photos in ``root/photos`` and converted weights ``root/w.pt`` (a
    default-width generator, seed 0): what deepfill-eval reads in :func:`eval_overrides`."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    (root / "photos").mkdir(parents=True, exist_ok=True)
    for i in range(count):
        Image.fromarray(rng.integers(0, 255, (72, 90, 3), dtype=np.uint8)).save(root / "photos" / f"{i}.png")
    torch.manual_seed(0)
    torch.save({"state_dict": InpaintGenerator().state_dict()}, root / "w.pt")
    return root


def eval_overrides(root: Path) -> list[str]:
    """deepfill-eval on :func:`eval_workspace`'s photos at 64x64 on the CPU, without LPIPS."""
    return [
        f"weights={root / 'w.pt'}",
        "data=folder",
        f"data.val.root={root / 'photos'}",
        f"data.train.root={root / 'photos'}",
        "data.image_size=64",
        "data.num_workers=0",
        "data.persistent_workers=false",
        "lpips=false",
        "device=cpu",
    ]
