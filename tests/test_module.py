"""DeepFillModule: the WGAN-GP schedule, overfitting, resume, non-finite losses, W&B offline."""

from __future__ import annotations

from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch

from deepfill import masks as M
from deepfill.datamodule import InpaintDataModule
from deepfill.datasets import SampleImages
from deepfill.metrics import hole_l1, to_unit
from deepfill.models import GlobalCritic, InpaintGenerator, LocalCritic
from deepfill.module import DeepFillModule, NonFiniteLossError

SIZE = 64


def make_module(**kwargs) -> DeepFillModule:
    torch.manual_seed(0)
    kwargs.setdefault("lpips_pretrained", False)
    kwargs.setdefault("log_images_every_n_steps", 0)
    return DeepFillModule(
        InpaintGenerator(cnum=8), GlobalCritic(SIZE, cnum=8), LocalCritic(SIZE // 2, cnum=8), **kwargs
    )


def make_data(length: int = 48, batch_size: int = 4) -> InpaintDataModule:
    return InpaintDataModule(
        train=SampleImages("train", SIZE, length=length),
        val=SampleImages("val", SIZE, length=4),
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


def _params(module: torch.nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in module.parameters()]


def _same(a, b) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


def test_ten_batches_make_ten_critic_and_two_generator_updates(tmp_path) -> None:
    module = make_module(n_critic=5)
    counts = {"g": 0, "d": 0}

    def counting(optimizer, key):
        step = optimizer.step

        def wrapped(*args, **kwargs):
            counts[key] += 1
            return step(*args, **kwargs)

        optimizer.step = wrapped

    original = module.configure_optimizers

    def configure():
        opt_g, opt_d = original()
        counting(opt_g, "g")
        counting(opt_d, "d")
        return [opt_g, opt_d]

    module.configure_optimizers = configure
    make_trainer(tmp_path, max_epochs=1, limit_train_batches=10, limit_val_batches=0).fit(module, make_data())
    assert counts == {"d": 10, "g": 2}
    assert (int(module.critic_steps), int(module.generator_steps)) == (10, 2)


def test_critic_steps_leave_the_generator_alone_and_vice_versa(tmp_path) -> None:
    module = make_module(n_critic=5)
    generator_before = _params(module.generator)
    critics_before = _params(module.global_critic) + _params(module.local_critic)
    make_trainer(tmp_path, max_epochs=1, limit_train_batches=4, limit_val_batches=0).fit(module, make_data())
    assert _same(generator_before, _params(module.generator))  # 4 critic updates only
    assert not _same(critics_before, _params(module.global_critic) + _params(module.local_critic))

    seen = []
    original = module._generator_step

    def watched(*args, **kwargs):
        before = _params(module.global_critic) + _params(module.local_critic)
        gen_before = _params(module.generator)
        original(*args, **kwargs)
        seen.append(
            (
                _same(before, _params(module.global_critic) + _params(module.local_critic)),
                _same(gen_before, _params(module.generator)),
            )
        )

    module._generator_step = watched
    module.critic_since_generator.fill_(4)  # the next batch completes a round of five
    make_trainer(tmp_path, max_epochs=1, limit_train_batches=1, limit_val_batches=0).fit(module, make_data())
    assert seen == [(True, False)]  # critics untouched, generator updated


def test_overfitting_one_batch_reduces_the_hole_error(tmp_path) -> None:
    module = make_module(n_critic=1, lr=1e-3)
    data = make_data(length=4, batch_size=4)
    data.setup("fit")
    batch = next(iter(data.train_dataloader()))

    def hole_error() -> float:
        with torch.no_grad():
            _, x2, _ = module.generator(batch["image"], batch["mask"])
        return float(hole_l1(to_unit(x2), to_unit(batch["image"]), batch["mask"]).mean())

    before = hole_error()
    make_trainer(tmp_path, max_epochs=40, overfit_batches=1, limit_val_batches=0).fit(module, data)
    after = hole_error()
    assert after < 0.6 * before, (before, after)


def test_resume_mid_epoch_gives_the_same_weights(tmp_path) -> None:
    from deepfill.callbacks import AtomicModelCheckpoint

    # Straight: 6 batches. Interrupted: the periodic checkpoint after 3 batches (3 critic + 1
    # generator optimizer steps with n_critic 2), resumed for the other 3.
    pl.seed_everything(0)
    straight = make_module(n_critic=2)
    make_trainer(tmp_path / "a", max_epochs=1, limit_train_batches=6, limit_val_batches=0).fit(
        straight, make_data()
    )

    pl.seed_everything(0)
    first = make_module(n_critic=2)
    periodic = AtomicModelCheckpoint(dirpath=tmp_path, filename="mid", every_n_train_steps=4, save_top_k=-1)
    make_trainer(
        tmp_path / "b",
        max_epochs=1,
        limit_train_batches=6,
        limit_val_batches=0,
        callbacks=[periodic],
        enable_checkpointing=True,
    ).fit(first, make_data())
    checkpoint = tmp_path / "mid.ckpt"
    assert checkpoint.is_file()
    assert torch.load(checkpoint, weights_only=False)["state_dict"]["critic_steps"] == 3

    pl.seed_everything(123)  # a different global RNG state must not matter
    resumed = make_module(n_critic=2)
    make_trainer(tmp_path / "c", max_epochs=1, limit_train_batches=6, limit_val_batches=0).fit(
        resumed, make_data(), ckpt_path=checkpoint
    )
    assert (int(resumed.critic_steps), int(resumed.generator_steps)) == (6, 3)
    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values(), strict=True):
        assert torch.allclose(a.float(), b.float(), atol=1e-6), name


def test_non_finite_losses_are_skipped_then_stop_the_run(tmp_path) -> None:
    module = make_module(n_critic=1, max_nonfinite=3)
    with torch.no_grad():
        module.local_critic.dense.weight.fill_(float("nan"))
    generator_before = _params(module.generator)
    with pytest.raises(NonFiniteLossError, match="3 non-finite critic loss values in a row"):
        make_trainer(tmp_path, max_epochs=1, limit_train_batches=5, limit_val_batches=0).fit(
            module, make_data()
        )
    assert int(module.critic_steps) == 0  # every update was skipped
    assert _same(generator_before, _params(module.generator))


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_wandb_offline_run_holds_metrics_and_images(tmp_path, monkeypatch) -> None:
    from pytorch_lightning.loggers import WandbLogger

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    logger = WandbLogger(project="deepfill-test", save_dir=str(tmp_path), offline=True)
    module = make_module(n_critic=1, log_images_every_n_steps=1)
    trainer = make_trainer(
        tmp_path, max_epochs=1, limit_train_batches=2, limit_val_batches=1, logger=logger, log_every_n_steps=1
    )
    trainer.fit(module, make_data())
    run_dir = Path(logger.experiment.dir).parent  # .../offline-run-*/
    logger.experiment.finish()
    images = [p.relative_to(run_dir).as_posix() for p in run_dir.rglob("*.png")]
    assert any("/train/" in p for p in images), images
    assert any("/val/" in p for p in images), images
    # Offline runs keep their history in the run's record log (protobuf; keys are plain text).
    records = b"".join(p.read_bytes() for p in run_dir.glob("run-*.wandb"))
    for key in (b"val/psnr", b"val/ssim", b"val/lpips", b"train/d_loss", b"train/g_loss", b"train/gp"):
        assert key in records, key


def test_generator_is_rebuilt_from_a_checkpoint(tmp_path) -> None:
    module = make_module(n_critic=1)
    trainer = make_trainer(tmp_path, max_epochs=1, limit_train_batches=2, limit_val_batches=0)
    trainer.fit(module, make_data())
    trainer.save_checkpoint(tmp_path / "m.ckpt")
    generator = DeepFillModule.generator_from_checkpoint(str(tmp_path / "m.ckpt"))
    for a, b in zip(generator.state_dict().values(), module.generator.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    assert generator.cnum == 8
