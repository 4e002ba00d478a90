"""DeepFillModule: the WGAN-GP schedule, overfitting, resume, non-finite losses, W&B offline."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch

from deepfill.data import masks as M
from deepfill.evaluation.metrics import hole_l1
from deepfill.inference import generator_from_checkpoint
from deepfill.models import GlobalCritic, LocalCritic
from deepfill.training.loggers import WandbBestSummary
from deepfill.training.losses import (
    LossConfig,
    LossWeights,
    StepOutputs,
    ae_loss,
    box_discount,
    critic_loss,
    crop_patches,
    generator_loss,
    local_patches,
)
from deepfill.training.module import DeepFillModule, NonFiniteLossError
from deepfill.utils.images import to_unit
from helpers.tiny import SIZE, adam, make_data, make_module, make_trainer


def _params(module: torch.nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in module.parameters()]


def _same(a, b) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


def _record_schedule(module: DeepFillModule) -> list[tuple[str, tuple[int, ...]]]:
    """Wrap the three kinds of update to record (kind, sample indices of its batch)."""
    seen: list[tuple[str, tuple[int, ...]]] = []
    step = module.training_step

    def training_step(batch, batch_idx):
        before = (int(module.critic_steps), int(module.generator_steps))
        step(batch, batch_idx)
        after = (int(module.critic_steps), int(module.generator_steps))
        kind = "d" if after[0] > before[0] else "g" if after[1] > before[1] else "skip"
        seen.append((kind, tuple(batch["index"].tolist())))

    module.training_step = training_step
    return seen


def test_twelve_batches_make_ten_critic_and_two_generator_updates_each_on_its_own_batch(tmp_path) -> None:
    module = make_module(n_critic=5)
    seen = _record_schedule(module)
    make_trainer(tmp_path, max_epochs=1, limit_train_batches=12, limit_val_batches=0).fit(module, make_data())
    assert [kind for kind, _ in seen] == ["d"] * 5 + ["g"] + ["d"] * 5 + ["g"]
    assert (int(module.critic_steps), int(module.generator_steps)) == (10, 2)
    # The generator's batch is a sixth, fresh one: none of its images fed the five critic updates.
    first_round = [set(indices) for _, indices in seen[:6]]
    assert len(set.union(*first_round)) == 6 * 4


def test_a_skipped_critic_update_does_not_count_towards_n_critic(tmp_path, monkeypatch) -> None:
    import deepfill.training.module as module_mod

    calls = {"n": 0}
    real_loss = module_mod.critic_loss

    def flaky(*args, **kwargs):
        loss = real_loss(*args, **kwargs)
        calls["n"] += 1
        if calls["n"] == 2:
            loss.total = loss.total * float("nan")
        return loss

    monkeypatch.setattr(module_mod, "critic_loss", flaky)
    module = make_module(n_critic=3)
    seen = _record_schedule(module)
    make_trainer(tmp_path, max_epochs=1, limit_train_batches=5, limit_val_batches=0).fit(module, make_data())
    assert [kind for kind, _ in seen] == ["d", "skip", "d", "d", "g"]


def test_critic_steps_leave_the_generator_alone_and_vice_versa(tmp_path) -> None:
    module = make_module(n_critic=5)
    generator_before = _params(module.generator)
    critics_before = _params(module.global_critic) + _params(module.local_critic)
    make_trainer(tmp_path, max_epochs=1, limit_train_batches=5, limit_val_batches=0).fit(module, make_data())
    assert _same(generator_before, _params(module.generator))  # 5 critic updates only
    assert not _same(critics_before, _params(module.global_critic) + _params(module.local_critic))

    seen = []
    original = module._generator_step

    def watched(image, mask, opt_g, phase="adversarial", distance=None):
        before = _params(module.global_critic) + _params(module.local_critic)
        gen_before = _params(module.generator)
        step = opt_g.step

        def checked_step(*args, **kwargs):
            # At the moment the generator steps, the critics hold no gradient at all.
            critic_grads = [
                p.grad for p in (*module.global_critic.parameters(), *module.local_critic.parameters())
            ]
            seen.append(("critic grads", all(g is None for g in critic_grads)))
            return step(*args, **kwargs)

        opt_g.step = checked_step
        try:
            result = original(image, mask, opt_g, phase, distance)
        finally:
            opt_g.step = step
        seen.append(
            (
                _same(before, _params(module.global_critic) + _params(module.local_critic)),
                _same(gen_before, _params(module.generator)),
            )
        )
        return result

    module._generator_step = watched
    module.critic_since_generator.fill_(5)  # the next batch is the generator's
    make_trainer(tmp_path, max_epochs=1, limit_train_batches=1, limit_val_batches=0).fit(module, make_data())
    assert seen == [("critic grads", True), (True, False)]  # critics untouched, generator updated


def test_critics_score_the_completed_image_and_its_local_patch(tmp_path) -> None:
    module = make_module(n_critic=5)
    inputs = {}

    def spy(name, critic):
        forward = critic.forward

        def recording(x):
            inputs.setdefault(name, x.detach().clone())
            return forward(x)

        critic.forward = recording

    spy("global", module.global_critic)
    spy("local", module.local_critic)
    data = make_data()
    data.setup("fit")
    batch = next(iter(data.train_dataloader()))
    opt_g, opt_d = module.configure_optimizers()
    module.optimizers = lambda: (opt_g, opt_d)
    module.manual_backward = lambda loss: loss.backward()
    module.log_dict = lambda *args, **kwargs: None
    module.training_step(batch, 0)
    image, mask = batch["image"], batch["mask"]
    with torch.no_grad():
        _, x2, _ = module.generator(image, mask)
    completed = x2 * mask + image * (1 - mask)
    n = image.shape[0]
    # One call per critic on [real, fake]: real is the batch, fake the completed image.
    assert torch.equal(inputs["global"][:n], image)
    assert torch.allclose(inputs["global"][n:], completed, atol=1e-6)
    origins = local_patches(mask, SIZE // 2)
    real_local, fake_local = crop_patches(origins, SIZE // 2, image, completed)
    assert torch.equal(inputs["local"][:n], real_local)
    assert torch.allclose(inputs["local"][n:], fake_local, atol=1e-6)


def test_coarse_pretraining_trains_stage_one_alone_on_reconstruction(tmp_path) -> None:
    module = make_module(n_critic=5, pretrain_coarse_steps=3)
    seen = _record_schedule(module)
    refine_before = _params(module.generator.refine)
    coarse_before = _params(module.generator.coarse)
    critics_before = _params(module.global_critic) + _params(module.local_critic)
    make_trainer(tmp_path, max_epochs=1, limit_train_batches=4, limit_val_batches=0).fit(module, make_data())
    # Three reconstruction updates of stage 1 (one per batch), then the critics' turn.
    assert [kind for kind, _ in seen] == ["g", "g", "g", "d"]
    assert _same(refine_before, _params(module.generator.refine))
    assert not _same(coarse_before, _params(module.generator.coarse))
    assert (int(module.generator_steps), int(module.critic_steps)) == (3, 1)
    assert not _same(critics_before, _params(module.global_critic) + _params(module.local_critic))


def test_pretraining_loss_is_the_reconstruction_of_the_coarse_output(tmp_path) -> None:
    module = make_module(pretrain_coarse_steps=1, discount="box")
    data = make_data()
    data.setup("fit")
    batch = next(iter(data.train_dataloader()))  # the batch the first step will get
    image, mask = batch["image"], batch["mask"]
    with torch.no_grad():
        x1 = module.generator.coarse(image * (1 - mask), mask)  # stage 1 on the blanked image
    w = LossWeights()
    l1, ae = _box_l1(image, mask, x1, SIZE // 2, w.coarse), ae_loss(image, x1, None, mask, w.coarse)
    logged = _first_step_logs(module, tmp_path)
    assert logged["train/g_loss"].item() == pytest.approx((w.l1 * l1 + w.ae * ae).item(), rel=1e-5)
    assert logged["train/l1"].item() == pytest.approx(l1.item(), rel=1e-5)
    assert logged["train/g_adv"].item() == 0.0


def test_half_resolution_pretraining_is_the_loss_of_the_batch_at_half_the_side(tmp_path) -> None:
    """coarse_scale=0.5: stage 1 sees each 2x2 block's mean colour, and a hole wherever a block
    held a hole pixel; its loss is the same reconstruction, on a local patch of half the side."""
    module = make_module(pretrain_coarse_steps=1, discount="box", coarse_scale=0.5)
    data = make_data()
    data.setup("fit")
    batch = next(iter(data.train_dataloader()))
    image, mask = batch["image"], batch["mask"]
    n, half = image.shape[0], SIZE // 2
    small = image.reshape(n, 3, half, 2, half, 2).mean(dim=(3, 5))
    small_mask = mask.expand(n, -1, -1, -1).reshape(n, 1, half, 2, half, 2).amax(dim=(3, 5))
    assert 0 < small_mask.sum() < small_mask.numel()
    with torch.no_grad():
        x1 = module.generator.coarse(small * (1 - small_mask), small_mask)
    w = LossWeights()
    l1 = _box_l1(small, small_mask, x1, SIZE // 4, w.coarse)
    ae = ae_loss(small, x1, None, small_mask, w.coarse)
    logged = _first_step_logs(module, tmp_path)
    assert logged["train/l1"].item() == pytest.approx(l1.item(), rel=1e-5)
    assert logged["train/g_loss"].item() == pytest.approx((w.l1 * l1 + w.ae * ae).item(), rel=1e-5)


def test_half_resolution_pretraining_recomputes_the_hole_distance() -> None:
    """The nearest_known discount at half the side measures distances on the shrunk hole."""
    module = make_module(coarse_scale=0.5, discount="nearest_known")
    mask = torch.zeros(2, 1, SIZE, SIZE)
    mask[0, :, 8:40, 16:33] = 1  # odd edges: the shrunk hole takes every block they touch
    mask[1, :, 30:31, 30:31] = 1
    distance = torch.stack([M.hole_distance(m) for m in mask])
    image = torch.rand(2, 3, SIZE, SIZE) * 2 - 1
    step = module.phase_outputs(module.generator, image, mask, "coarse", distance)
    assert step.x1.shape == (2, 3, SIZE // 2, SIZE // 2)
    assert step.mask[0, 0].nonzero().amin(0).tolist() == [4, 8]
    assert step.mask[0, 0].nonzero().amax(0).tolist() == [19, 16]
    assert step.mask[1].sum() == 1
    expected = torch.stack([M.hole_distance(m) for m in step.mask])
    assert torch.equal(step.distance, expected)
    assert step.distance[0].max() == 5  # a 16 x 9 hole: 5 steps from its middle to the edge


def _first_step_logs(module: DeepFillModule, tmp_path) -> dict:
    """What the module's first training step logs through ``log_dict``."""
    logged = {}
    log_dict = module.log_dict

    def recording(values, **kwargs):
        logged.update(values)
        log_dict(values, **kwargs)

    module.log_dict = recording
    make_trainer(tmp_path, max_epochs=1, limit_train_batches=1, limit_val_batches=0).fit(module, make_data())
    return logged


def _box_l1(image, mask, x, size, weight):
    """The official box-discounted L1 of one output, written out: the local patch around each
    hole's box, weighted by the discount mask, plain mean."""
    origins = local_patches(mask, size)
    target, prediction = crop_patches(origins, size, image, x)
    return weight * ((target - prediction).abs() * box_discount(size, size, 0.9)).mean()


def test_a_new_generator_term_is_logged_and_trained_without_naming_it(tmp_path, monkeypatch) -> None:
    """The step logs every term the loss returns as train/<name>: registering one is enough."""
    from deepfill.training import losses

    term = losses.LossTerm(lambda step, config, critics: step.x1.square().mean(), "l1")
    monkeypatch.setitem(losses.GENERATOR_TERMS, "energy", term)
    module = make_module(reconstruction_steps=1)
    logged = _first_step_logs(module, tmp_path)
    assert logged["train/energy"].item() > 0
    parts = 1.2 * (logged["train/l1"] + logged["train/energy"]) + 1.2 * logged["train/ae"]
    assert logged["train/g_loss"].item() == pytest.approx(parts.item(), rel=1e-5)


def test_reconstruction_phase_trains_both_stages_without_critics_then_the_schedule_starts(tmp_path) -> None:
    module = make_module(n_critic=1, pretrain_coarse_steps=2, reconstruction_steps=2)
    seen = _record_schedule(module)
    refine = []
    critics_before = _params(module.global_critic) + _params(module.local_critic)
    step = module._generator_step

    def watched(image, mask, opt_g, phase="adversarial", distance=None):
        before = _params(module.generator.refine)
        result = step(image, mask, opt_g, phase, distance)
        refine.append((phase, _same(before, _params(module.generator.refine))))
        return result

    module._generator_step = watched
    make_trainer(tmp_path, max_epochs=1, limit_train_batches=6, limit_val_batches=0).fit(module, make_data())
    assert [kind for kind, _ in seen] == ["g", "g", "g", "g", "d", "g"]
    # Stage 2 is left alone during coarse pre-training and trained in the reconstruction phase.
    assert refine == [
        ("coarse", True),
        ("coarse", True),
        ("reconstruction", False),
        ("reconstruction", False),
        ("adversarial", False),
    ]
    assert (int(module.generator_steps), int(module.critic_steps)) == (5, 1)
    assert not _same(critics_before, _params(module.global_critic) + _params(module.local_critic))


def test_cosine_learning_rate_follows_the_generator_steps(tmp_path) -> None:
    module = make_module(
        n_critic=1, optimizer=adam(2e-3), pretrain_coarse_steps=2, reconstruction_steps=2, lr_decay_steps=4
    )
    # A cosine over the first 4 generator updates, whatever their phase, then 0.
    assert module.lr_factor(0) == pytest.approx(1.0)
    assert module.lr_factor(2) == pytest.approx(0.5)
    assert module.lr_factor(4) == module.lr_factor(100) == pytest.approx(0.0)
    make_trainer(tmp_path, max_epochs=1, limit_train_batches=4, limit_val_batches=0).fit(module, make_data())
    # The 4th update ran at the rate of 3 steps done; both optimisers follow the generator.
    for optimizer in module.trainer.optimizers:
        assert optimizer.param_groups[0]["lr"] == pytest.approx(1e-3 * (1 + math.cos(3 * math.pi / 4)))
    assert make_module().lr_factor(10**6) == 1.0  # lr_decay_steps 0: constant, as the paper


def test_lr_restart_gives_stage_two_its_own_cosine(tmp_path) -> None:
    module = make_module(
        n_critic=1,
        optimizer=adam(2e-3),
        pretrain_coarse_steps=2,
        reconstruction_steps=4,
        lr_decay_steps=6,
        lr_restart=True,
    )
    # One cosine over the 2 coarse updates, a second one over the 4 after them, then 0.
    assert [module.lr_factor(s) for s in (0, 1, 2, 4, 6, 100)] == pytest.approx([1, 0.5, 1, 0.5, 0, 0])
    make_trainer(tmp_path, max_epochs=1, limit_train_batches=4, limit_val_batches=0).fit(module, make_data())
    # The 4th update ran at the rate of 3 steps done: one into the second cosine.
    for optimizer in module.trainer.optimizers:
        assert optimizer.param_groups[0]["lr"] == pytest.approx(1e-3 * (1 + math.cos(math.pi / 4)))
    # Without a coarse pre-training there is nothing to restart after: one cosine.
    single = make_module(lr_decay_steps=4, lr_restart=True)
    assert single.lr_factor(2) == pytest.approx(0.5)
    with pytest.raises(ValueError, match=r"model\.lr_restart must be true or false, got 'yes'"):
        make_module(lr_restart="yes")


def test_the_optimizer_comes_from_its_config(tmp_path) -> None:
    """``model.optimizer`` is a Hydra partial: any torch.optim class, its own checks at once."""
    from hydra.utils import instantiate

    config = {"_target_": "torch.optim.AdamW", "_partial_": True, "lr": 3e-4, "weight_decay": 0.1}
    partial = instantiate(config)
    module = make_module(optimizer=partial)
    optimizers = module.configure_optimizers()
    assert [type(o) for o in optimizers] == [torch.optim.AdamW, torch.optim.AdamW]
    assert optimizers[0].param_groups[0]["weight_decay"] == 0.1
    described = {"class": "torch.optim.adamw.AdamW", "lr": 3e-4, "weight_decay": 0.1}
    assert module.hparams["optimizer"] == described
    with pytest.raises(ValueError, match=r"model\.optimizer: Invalid learning rate"):
        make_module(optimizer=adam(-1.0))


def test_overfitting_one_batch_reduces_the_hole_error(tmp_path) -> None:
    module = make_module(n_critic=1, optimizer=adam(1e-3))
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


@pytest.mark.parametrize("ema_decay", [0.0, 0.9])
def test_resume_mid_epoch_gives_the_same_weights(ema_decay, tmp_path) -> None:
    """Also the average of the generator's weights, when the run keeps one."""
    from deepfill.training.callbacks import LastCheckpoint

    # Straight: 6 batches (d d g d d g with n_critic 2). Interrupted: the periodic checkpoint
    # after 4 optimizer steps (3 critic + 1 generator: the first 4 batches), resumed for the rest.
    pl.seed_everything(0)
    straight = make_module(n_critic=2, ema_decay=ema_decay)
    make_trainer(tmp_path / "a", max_epochs=1, limit_train_batches=6, limit_val_batches=0).fit(
        straight, make_data()
    )

    pl.seed_everything(0)
    first = make_module(n_critic=2, ema_decay=ema_decay)
    periodic = LastCheckpoint(dirpath=tmp_path, filename="mid", every_n_train_steps=4, save_top_k=-1)
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
    resumed = make_module(n_critic=2, ema_decay=ema_decay)
    make_trainer(tmp_path / "c", max_epochs=1, limit_train_batches=6, limit_val_batches=0).fit(
        resumed, make_data(), ckpt_path=checkpoint
    )
    assert (int(resumed.critic_steps), int(resumed.generator_steps)) == (4, 2)
    assert any(name.startswith("generator_ema.") for name in resumed.state_dict()) == bool(ema_decay)
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


def test_the_wandb_logger_hands_wandb_no_deprecated_setting(tmp_path, monkeypatch, capfd) -> None:
    """Lightning's logger always passes ``anonymous=None``, which wandb warns about on every run;
    the project's passes nothing it was not given."""
    from deepfill.training.loggers import WandbLogger

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    logger = WandbLogger(project="deepfill-test", save_dir=str(tmp_path), offline=True)
    assert "anonymous" not in logger._wandb_init
    try:
        assert logger.experiment.id  # wandb.init ran
    finally:
        logger.experiment.finish()
    assert "anonymous" not in capfd.readouterr().err
    # A caller's own choice is passed on, as Lightning's logger passes it.
    chosen = WandbLogger(project="deepfill-test", save_dir=str(tmp_path), offline=True, anonymous=True)
    assert chosen._wandb_init["anonymous"] == "allow"


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_wandb_offline_run_holds_metrics_and_images(tmp_path, monkeypatch) -> None:
    from pytorch_lightning.loggers import WandbLogger

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    logger = WandbLogger(project="deepfill-test", save_dir=str(tmp_path), offline=True)
    module = make_module(n_critic=1, log_images_every_n_steps=1)
    defined: dict[str, str] = {}
    define_metric = logger.experiment.define_metric

    def spy(name, *args, **kwargs):
        defined[name] = kwargs.get("summary")
        return define_metric(name, *args, **kwargs)

    monkeypatch.setattr(logger.experiment, "define_metric", spy)
    trainer = make_trainer(
        tmp_path,
        max_epochs=1,
        limit_train_batches=2,
        limit_val_batches=1,
        logger=logger,
        log_every_n_steps=1,
        callbacks=[WandbBestSummary()],  # what deepfill-train adds when it logs to W&B
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
    # The run summary keeps each validation metric's best value, in the registry's direction.
    assert defined["val/psnr"] == "max" and defined["val/ssim"] == "max"
    assert defined["val/lpips"] == "min" and defined["val/l1_hole"] == "min"


def test_a_checkpoint_holds_every_hyper_parameter(tmp_path) -> None:
    """Every constructor argument is saved (the networks as their configs), so a checkpoint
    says everything that made it."""
    import inspect

    from omegaconf import OmegaConf

    # Mappings arrive from Hydra as DictConfig: saved as plain dicts, so that the checkpoint loads
    # with weights_only=True (what resuming and deepfill-inpaint do).
    options = OmegaConf.create({"backend": "aot_eager"})
    module = make_module(n_critic=1, seed=7, max_nonfinite=4, lpips_required=False, compile_options=options)
    trainer = make_trainer(tmp_path, max_epochs=1, limit_train_batches=1, limit_val_batches=0)
    trainer.fit(module, make_data())
    trainer.save_checkpoint(tmp_path / "m.ckpt")
    saved = torch.load(tmp_path / "m.ckpt", weights_only=True)["hyper_parameters"]
    assert saved["compile_options"] == {"backend": "aot_eager"}
    arguments = set(inspect.signature(type(module).__init__).parameters) - {
        "self",
        "global_critic",
        "local_critic",
    }
    assert arguments <= set(saved), arguments - set(saved)
    assert (saved["seed"], saved["max_nonfinite"], saved["n_critic"]) == (7, 4, 1)
    assert saved["lpips_pretrained"] is False and saved["compile"] is False
    assert saved["generator"] == module.generator.config
    assert (saved["global_critic_size"], saved["local_critic_size"]) == (64, 32)


def test_generator_is_rebuilt_from_a_checkpoint(tmp_path) -> None:
    module = make_module(n_critic=1)
    trainer = make_trainer(tmp_path, max_epochs=1, limit_train_batches=2, limit_val_batches=0)
    trainer.fit(module, make_data())
    trainer.save_checkpoint(tmp_path / "m.ckpt")
    generator = generator_from_checkpoint(str(tmp_path / "m.ckpt"))
    for a, b in zip(generator.state_dict().values(), module.generator.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    assert generator.config["cnum"] == 8


def test_the_weight_average_follows_each_generator_update(tmp_path) -> None:
    """ema_decay: after update t the average is d_t * average + (1 - d_t) * weights, with
    d_t = min(decay, (1 + t) / (10 + t)), starting from the initial weights; validation and the
    checkpoint's generator use it, the critics' fakes come from the trained generator."""
    module = make_module(n_critic=1, pretrain_coarse_steps=2, ema_decay=0.8)
    average = _params(module.generator)
    assert _same(average, _params(module.generator_ema))
    snapshots = []
    update = module._update_ema

    def recording() -> None:
        snapshots.append(_params(module.generator))
        update()

    module._update_ema = recording
    trainer = make_trainer(tmp_path, max_epochs=1, limit_train_batches=5, limit_val_batches=1)
    trainer.fit(module, make_data())
    assert len(snapshots) == int(module.generator_steps) == 3  # 2 coarse, then d g d
    for t, weights in enumerate(snapshots):
        d = min(0.8, (1 + t) / (10 + t))
        average = [d * a + (1 - d) * w for a, w in zip(average, weights, strict=True)]
    for a, b in zip(average, _params(module.generator_ema), strict=True):
        assert torch.allclose(a, b, atol=1e-6)
    assert not _same(_params(module.generator_ema), _params(module.generator))
    assert all(not p.requires_grad for p in module.generator_ema.parameters())
    assert module.evaluated_generator is module.generator_ema
    trainer.save_checkpoint(tmp_path / "m.ckpt")
    rebuilt = generator_from_checkpoint(tmp_path / "m.ckpt")
    for a, b in zip(rebuilt.parameters(), module.generator_ema.parameters(), strict=True):
        assert torch.equal(a, b)
    with pytest.raises(ValueError, match=r"model.ema_decay must be in \[0, 1\), got 1"):
        make_module(ema_decay=1)


def _one_step_in(precision_bf16: bool, module, batch, alpha):
    """Losses and gradients of one critic update and one generator update, as the step makes them."""
    image, mask = batch["image"], batch["mask"]
    config = LossConfig(patch_size=SIZE // 2)
    critics = [*module.global_critic.parameters(), *module.local_critic.parameters()]
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision_bf16):
        with torch.no_grad():
            x1, x2, _ = module.generator(image, mask)
        step = StepOutputs.of(image, mask, x1, x2.float(), SIZE // 2)
        d = critic_loss(module.global_critic, module.local_critic, step, config, *alpha)
    grad_d = torch.cat([g.flatten() for g in torch.autograd.grad(d.total, critics)])
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision_bf16):
        x1, x2, _ = module.generator(image, mask)
        step = StepOutputs.of(image, mask, x1, x2, SIZE // 2)
        g = generator_loss(step, config, (module.global_critic, module.local_critic))
    grad_g = torch.cat(
        [p.flatten() for p in torch.autograd.grad(g.total, list(module.generator.parameters()))]
    )
    losses = torch.stack([d.total, d["gp"], g.total, g["l1"], g["ae"]]).detach().float()
    return losses, grad_d.float(), grad_g.float()


def test_a_bf16_step_stays_finite_and_close_to_float32() -> None:
    """bf16 autocast (trainer=gpu_bf16) runs the gradient penalty's double backward and the
    attention softmax in bf16. Stated tolerance for one step: every loss term within 1e-3
    relative; gradients within 0.99 cosine of float32 (critics: 0.996 measured, generator: 0.9998)."""
    module = make_module()
    data = make_data()
    data.setup("fit")
    batch = next(iter(data.train_dataloader()))
    alpha = torch.rand(2, batch["image"].shape[0])
    losses32, grad_d32, grad_g32 = _one_step_in(False, module, batch, alpha)
    losses16, grad_d16, grad_g16 = _one_step_in(True, module, batch, alpha)
    for tensor in (losses16, grad_d16, grad_g16):
        assert torch.isfinite(tensor).all()
    assert ((losses16 - losses32).abs() / losses32.abs()).max() < 1e-3
    cosine = torch.nn.functional.cosine_similarity
    assert cosine(grad_d16, grad_d32, dim=0) > 0.99
    assert cosine(grad_g16, grad_g32, dim=0) > 0.99


def test_critic_scores_and_losses_stay_float32_under_bf16_autocast() -> None:
    """The logged critic loss and gaps are computed from float32 scores under bf16 autocast."""
    torch.manual_seed(0)
    global_critic, local_critic = GlobalCritic(SIZE, cnum=8), LocalCritic(SIZE // 2, cnum=8)
    real, fake = torch.rand(2, 3, SIZE, SIZE) * 2 - 1, torch.rand(2, 3, SIZE, SIZE) * 2 - 1
    mask = torch.stack([M.centered_rectangle(SIZE, SIZE) for _ in range(2)])
    step = StepOutputs.of(real, mask, fake, fake, SIZE // 2)
    alphas = torch.tensor([0.3, 0.7])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert global_critic(real).dtype == torch.float32
        config = LossConfig(patch_size=SIZE // 2)
        loss = critic_loss(global_critic, local_critic, step, config, alphas, alphas)
    values = loss.logged("train/")
    names = ("d_loss", "d_global", "d_local", "gp", "critic_gap_global", "critic_gap_local")
    assert set(values) == {f"train/{name}" for name in names}
    for name, value in values.items():
        assert value.dtype == torch.float32, name


class _HostReads(torch.overrides.TorchFunctionMode):
    """Counts reads of tensor values back to Python (``bool()``, ``int()``, ``.item()``...) made
    directly by this project's code. On a GPU each one waits for the queue to drain."""

    READS = frozenset({"__bool__", "__int__", "__float__", "__index__", "item", "tolist", "numpy"})

    def __init__(self) -> None:
        super().__init__()
        self.sites: list[str] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if getattr(func, "__name__", "") in self.READS:
            import inspect

            caller = inspect.currentframe().f_back
            if "/deepfill/" in caller.f_code.co_filename:
                self.sites.append(f"{Path(caller.f_code.co_filename).name}:{caller.f_lineno}")
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("discount", ["box", "nearest_known"])
def test_a_training_step_reads_one_value_back_to_the_host(discount, tmp_path) -> None:
    """Only the non-finite decision reads a value back per step: the schedule counters, the
    penalty's factors, the mask checks and the resize indices must not (each read stalls a GPU)."""
    module = make_module(n_critic=2, discount=discount, pretrain_coarse_steps=1)
    step, reads, calls = module.training_step, _HostReads(), []

    def counted(batch, batch_idx=0):
        calls.append(batch_idx)
        with reads:
            return step(batch, batch_idx)

    module.training_step = counted
    data = make_data(length=16, batch_size=2)
    if discount == "nearest_known":
        data.train_masks = M.free_form
    make_trainer(tmp_path, max_epochs=1, limit_train_batches=7, limit_val_batches=0).fit(module, data)
    assert (int(module.generator_steps), int(module.critic_steps)) == (3, 4)  # 1 coarse, 2 + 4
    assert len(calls) == 7
    assert len(reads.sites) == len(calls), sorted(set(reads.sites))


def test_checkpoints_are_written_atomically(tmp_path, monkeypatch) -> None:
    """A save that dies half-way through the file (a crash, a full disk) leaves the previous
    checkpoint whole and no stray file; a full disk is reported naming the checkpoint."""
    import errno

    from deepfill.training.callbacks import AtomicCheckpointIO
    from deepfill.utils.errors import NoSpaceError

    io = AtomicCheckpointIO()
    path = tmp_path / "last.ckpt"
    io.save_checkpoint({"step": 1, "weights": torch.ones(1000)}, path)

    def dies_half_way(checkpoint, file) -> None:
        file.write(b"PK\x03\x04 half a checkpoint")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", dies_half_way)
    with pytest.raises(NoSpaceError, match=f"{path}: no space left on device"):
        io.save_checkpoint({"step": 2, "weights": torch.ones(1000)}, path)
    monkeypatch.undo()
    assert torch.load(path, weights_only=False)["step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]


def test_a_checkpoint_from_before_the_configurable_optimizer_resumes(tmp_path) -> None:
    """Optimiser states saved without ``initial_lr`` get the configured rate on load."""
    module = make_module(optimizer=adam(3e-4), lr_decay_steps=10)
    state = {"optimizer_states": [{"param_groups": [{"lr": 1e-4}]}, {"param_groups": [{"lr": 1e-4}]}]}
    module.on_load_checkpoint(state)
    assert [s["param_groups"][0]["initial_lr"] for s in state["optimizer_states"]] == [3e-4, 3e-4]
