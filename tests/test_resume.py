"""Exact resume from every checkpoint a run can write: mid-epoch, at an epoch's end, after
validation, after the last step; stopped by max_steps, max_epochs or both; and a finished run
extended with more epochs or steps. A resumed run must train exactly the batches (same items,
same masks, same order) and make exactly the updates of the uninterrupted run."""

from __future__ import annotations

from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch

from deepfill.cli.train import train
from deepfill.training.resume import continue_epoch, start_next_epoch
from helpers.tiny import TINY, compose_cfg, make_data, make_module, make_trainer


class SaveEverywhere(pl.Callback):
    """A checkpoint at every point Lightning lets a callback write one, named by where."""

    def __init__(self, folder: Path) -> None:
        self.folder, self.count = Path(folder), 0

    def _save(self, trainer: pl.Trainer, where: str) -> None:
        self.count += 1
        trainer.save_checkpoint(self.folder / f"{self.count:03d}-{where}-step{trainer.global_step}.ckpt")

    def on_train_batch_end(self, trainer, *args, **kwargs) -> None:
        self._save(trainer, "batch_end")

    def on_validation_end(self, trainer, *args, **kwargs) -> None:
        if not trainer.sanity_checking:
            self._save(trainer, "validation_end")

    def on_train_epoch_end(self, trainer, *args, **kwargs) -> None:
        self._save(trainer, "epoch_end")

    def on_train_end(self, trainer, *args, **kwargs) -> None:
        self._save(trainer, "train_end")


class Batches(pl.Callback):
    """The (epoch, items) of every batch trained."""

    def __init__(self) -> None:
        self.seen: list[tuple[int, tuple[int, ...]]] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.seen.append((trainer.current_epoch, tuple(batch["index"].tolist())))


# 16 items in batches of 4: 4 batches an epoch. n_critic 2: critic, critic, generator, ...
# A small model: the test is about the loops, and it fits dozens of times.
def _fit(folder: Path, limits: dict, ckpt_path: Path | None = None, save: bool = False):
    pl.seed_everything(0)
    module = make_module(size=32, cnum=4, n_critic=2, lpips=False)
    batches = Batches()
    callbacks = [batches, *([SaveEverywhere(folder)] if save else [])]
    trainer = make_trainer(folder, callbacks=callbacks, limit_val_batches=1, **limits)
    trainer.fit(module, make_data(length=16, batch_size=4, size=32), ckpt_path=ckpt_path)
    return module, batches.seen


def _max_difference(a: torch.nn.Module, b: torch.nn.Module) -> float:
    pairs = zip(a.state_dict().values(), b.state_dict().values(), strict=True)
    return max(float((x.double() - y.double()).abs().max()) for x, y in pairs)


def _resume_from_each(first: dict, then: dict, root: Path) -> list[str]:
    """Train ``then`` straight; train ``first`` writing a checkpoint everywhere; resume ``then``
    from each one. Returns the checkpoints whose resumed run differs (weights or batches)."""
    straight, straight_batches = _fit(root / "straight", then)
    _fit(root / "first", first, save=True)
    checkpoints = sorted((root / "first").glob("*.ckpt"))
    # One after every batch at least (and more at epoch ends and validations).
    steps = {int(checkpoint.stem.rsplit("step", 1)[1]) for checkpoint in checkpoints}
    assert len(checkpoints) >= 5 and steps == set(range(1, max(steps) + 1)), steps
    wrong = []
    for checkpoint in checkpoints:
        resumed, batches = _fit(root / "resumed", then, ckpt_path=checkpoint)
        tail = straight_batches[len(straight_batches) - len(batches) :] if batches else []
        trained = straight_batches[: len(straight_batches) - len(batches)]
        if (
            _max_difference(straight, resumed) != 0.0
            or batches != tail
            or len(trained) != int(checkpoint.stem.rsplit("step", 1)[1])
        ):
            wrong.append(f"{checkpoint.name}: {len(batches)} batches resumed")
    return wrong


STEPS = {"max_epochs": -1, "max_steps": 8, "val_check_interval": 2, "check_val_every_n_epoch": None}
BOTH = {"max_epochs": 2, "max_steps": 100, "val_check_interval": 2}


@pytest.mark.parametrize("limits", [STEPS, BOTH], ids=["max_steps", "max_epochs_and_max_steps"])
def test_every_checkpoint_of_a_run_resumes_to_the_same_weights(limits, tmp_path) -> None:
    assert _resume_from_each(limits, limits, tmp_path) == []


@pytest.mark.parametrize(
    ("first", "then"),
    [
        # A finished run given one more epoch (every preset sets max_steps).
        ({**BOTH, "max_epochs": 1}, BOTH),
        # Stopped by max_steps part-way through an epoch, given more steps.
        ({**STEPS, "max_steps": 6}, STEPS),
    ],
    ids=["one_more_epoch", "more_steps_mid_epoch"],
)
def test_a_finished_run_extended_trains_what_the_longer_run_would(first, then, tmp_path) -> None:
    assert _resume_from_each(first, then, tmp_path) == []


@pytest.mark.slow
@pytest.mark.parametrize(
    ("first", "then"),
    [
        ({"max_epochs": 3}, {"max_epochs": 3}),
        ({"max_epochs": -1, "max_steps": 12}, {"max_epochs": -1, "max_steps": 12}),
        ({"max_epochs": 3, "val_check_interval": 3}, {"max_epochs": 3, "val_check_interval": 3}),
        ({"max_epochs": 1}, {"max_epochs": -1, "max_steps": 12}),
        ({"max_epochs": -1, "max_steps": 5}, {"max_epochs": 3}),
        ({**STEPS, "max_steps": 7}, {**STEPS, "max_steps": 12}),
    ],
)
def test_every_checkpoint_resumes_exactly_under_other_stopping_rules(first, then, tmp_path) -> None:
    assert _resume_from_each(first, then, tmp_path) == []


def test_an_epoch_end_checkpoint_resumes_as_the_next_epoch_and_others_are_untouched() -> None:
    def state(epoch: dict, batch: dict, last: bool) -> dict:
        progress = {"epoch_progress": {"total": dict(epoch), "current": dict(epoch)}}
        progress["epoch_loop.batch_progress"] = {
            "total": dict(batch),
            "current": dict(batch),
            "is_last_batch": last,
        }
        return {"loops": {"fit_loop": progress}}

    keys = ("ready", "started", "processed", "completed")
    # After on_train_epoch_end of the first epoch (4 batches): processed, not yet completed.
    after_epoch = state(dict(zip(keys, (1, 1, 1, 0), strict=True)), dict.fromkeys(keys, 4), True)
    assert start_next_epoch(after_epoch)
    fit = after_epoch["loops"]["fit_loop"]
    assert fit["epoch_progress"]["current"] == dict.fromkeys(keys, 1)
    assert fit["epoch_loop.batch_progress"]["current"] == dict.fromkeys(keys, 0)
    assert fit["epoch_loop.batch_progress"]["total"] == dict.fromkeys(keys, 4)  # global counts kept
    # Mid-epoch, after a batch: Lightning resumes these right; left as they are.
    mid = state(dict(zip(keys, (1, 1, 0, 0), strict=True)), dict(zip(keys, (2, 2, 2, 1), strict=True)), False)
    before = repr(mid)
    assert not start_next_epoch(mid) and not continue_epoch(mid) and repr(mid) == before
    # Stopped by max_steps after 2 of 4 batches, the epoch counted as done: continued instead.
    stopped = state(dict.fromkeys(keys, 1), dict.fromkeys(keys, 2), False)
    assert not start_next_epoch(stopped) and continue_epoch(stopped)
    assert stopped["loops"]["fit_loop"]["epoch_progress"]["current"] == dict.fromkeys(keys, 0) | {
        "ready": 1,
        "started": 1,
    }


def test_extending_a_finished_quickstart_by_an_epoch_equals_the_longer_run(tmp_path) -> None:
    """The report: quickstart (max_steps set) for 1 epoch, then ckpt_path=last.ckpt with
    max_epochs=2 trained 0 batches. Now it trains the second epoch, exactly."""
    overrides = [
        "experiment=quickstart",
        *TINY,
        "data.train.length=8",
        "data.val.length=2",
        "model.pretrain_coarse_steps=2",
        "model.reconstruction_steps=2",
        "baseline_comparison=null",
    ]
    train(compose_cfg([*overrides, "trainer.max_epochs=2"], tmp_path / "straight"))
    train(compose_cfg([*overrides, "trainer.max_epochs=1"], tmp_path / "first"))
    last = tmp_path / "first" / "checkpoints" / "last.ckpt"
    train(compose_cfg([*overrides, "trainer.max_epochs=2", f"ckpt_path={last}"], tmp_path / "resumed"))
    straight = torch.load(tmp_path / "straight" / "checkpoints" / "last.ckpt", weights_only=False)
    resumed = torch.load(tmp_path / "resumed" / "checkpoints" / "last.ckpt", weights_only=False)
    assert resumed["global_step"] == straight["global_step"] == 8
    for name, value in straight["state_dict"].items():
        assert torch.equal(value, resumed["state_dict"][name]), name
