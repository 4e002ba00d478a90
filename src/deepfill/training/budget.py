"""A training schedule that fits a time budget, on a fast machine and a slow one alike.

The quickstart's recipe is a *reference schedule* (coarse pre-training, reconstruction, a short
adversarial phase, the learning rate decayed to 0 over all of it). With ``budget=6min`` the run
first times one generator update of each phase on this machine (on copies of the networks, so the
run itself is not touched), then scales every phase of the reference by the same factor so that
the whole schedule, its validations included, ends within the budget. Every phase runs and the
learning rate reaches its end value on any machine; only the number of updates differs, and the
run says how many it chose and why. ``trainer.max_time`` stays a safety net above the budget.

The factor is rounded down to a grid of steps of at most 10% (:func:`scale_grid_floor`: 0.05
from 0.5 up, 0.01 from 0.1, 0.005 below), so that two runs on one machine (whose timings differ
by a few percent) mostly choose the same schedule, and so the same model, while a slow machine
loses no more of its budget to the rounding than a fast one; the printed overrides repeat a
schedule exactly anywhere. A resumed run keeps the schedule it chose
(saved in its checkpoints).
"""

from __future__ import annotations

import copy
import itertools
import math
import statistics
import time
from dataclasses import asdict, dataclass
from typing import Any

import pytorch_lightning as pl
import torch

from deepfill.utils.errors import ConfigError
from deepfill.utils.resolvers import duration_seconds

__all__ = [
    "REPLAN_TOLERANCE",
    "SCALE_STEP",
    "Schedule",
    "TimeBudget",
    "UpdateSeconds",
    "fit_schedule",
    "measure_update_seconds",
    "observed_seconds",
    "parse_budget",
    "scale_grid_floor",
    "scale_schedule",
]

# The reference schedule is scaled by a factor on a grid (scale_grid_floor) and never below this.
SCALE_STEP = 0.05
# How far the first stretch of a run may take more or less time than its plan expected before
# the schedule is fitted again (TimeBudget.on_train_batch_end).
REPLAN_TOLERANCE = 0.1


def parse_budget(value: Any) -> float | None:
    """Seconds of a budget written ``6min``, ``90s``, ``1.5h`` or ``00:06:00`` (None: no budget)."""
    return duration_seconds(value, "budget")


@dataclass(frozen=True)
class Schedule:
    """Generator updates per phase (each adversarial update follows ``n_critic`` critic updates)."""

    coarse: int
    reconstruction: int
    adversarial: int
    n_critic: int

    @property
    def generator_updates(self) -> int:
        """What the learning rate decays over."""
        return self.coarse + self.reconstruction + self.adversarial

    @property
    def batches(self) -> int:
        """Training batches (one optimizer step each): ``trainer.max_steps``."""
        return self.coarse + self.reconstruction + self.adversarial * (self.n_critic + 1)

    def overrides(self) -> str:
        """The command-line keys that run this schedule without a budget."""
        return (
            f"budget=null model.pretrain_coarse_steps={self.coarse} "
            f"model.reconstruction_steps={self.reconstruction} model.lr_decay_steps={self.generator_updates} "
            f"trainer.max_steps={self.batches}"
        )


@dataclass(frozen=True)
class UpdateSeconds:
    """Seconds per generator update of each phase (adversarial: with its critic updates), and per
    validation batch, measured on this machine."""

    coarse: float
    reconstruction: float
    adversarial: float
    validation_batch: float

    def of(self, schedule: Schedule) -> float:
        return (
            schedule.coarse * self.coarse
            + schedule.reconstruction * self.reconstruction
            + schedule.adversarial * self.adversarial
        )


def _grid_step(scale: float) -> float:
    """The grid's step at ``scale``: at most 10% of it (0.05 from 0.5 up, 0.01 from 0.1, 0.005)."""
    return 0.05 if scale >= 0.5 - 1e-9 else 0.01 if scale >= 0.1 - 1e-9 else 0.005


def scale_grid_floor(scale: float) -> float:
    """The largest factor of the grid at most ``scale`` (and at least :data:`SCALE_STEP`): steps of
    0.05 from 0.5 up, 0.01 from 0.1 to 0.5, 0.005 below, so that rounding down costs at most
    10% of the schedule on a slow machine as on a fast one."""
    if scale <= SCALE_STEP:
        return SCALE_STEP
    step = _grid_step(scale)
    return round(math.floor(scale / step + 1e-9) * step, 3)


def _grid_next(scale: float) -> float:
    return round(scale + _grid_step(scale), 3)


def fit_schedule(
    reference: Schedule, seconds: UpdateSeconds, available: float, multiple: int = 1, min_batches: int = 0
) -> tuple[Schedule, float]:
    """The reference schedule scaled by the largest factor of the grid (:func:`scale_grid_floor`,
    at least :data:`SCALE_STEP`) whose updates take at most ``available`` seconds; its batches a
    multiple of ``multiple`` (the number of validations, so that the last one comes at the end)
    and at least ``min_batches``. Returns it and the factor."""
    per_reference = seconds.of(reference)
    scale = scale_grid_floor(available / per_reference) if per_reference > 0 else SCALE_STEP
    scaled = scale_schedule(reference, scale, multiple)
    while scaled.batches < min_batches:
        scale = _grid_next(scale)
        scaled = scale_schedule(reference, scale, multiple)
    return scaled, scale


def scale_schedule(reference: Schedule, scale: float, multiple: int = 1) -> Schedule:
    """Every phase of ``reference`` times ``scale``, its batches trimmed to a multiple of
    ``multiple`` (from the longest of the first two phases)."""
    scaled = Schedule(
        coarse=round(reference.coarse * scale),
        reconstruction=round(reference.reconstruction * scale),
        adversarial=round(reference.adversarial * scale),
        n_critic=reference.n_critic,
    )
    extra = scaled.batches % multiple
    if extra:
        longest = max(("coarse", "reconstruction"), key=lambda name: getattr(scaled, name))
        scaled = Schedule(**{**asdict(scaled), longest: getattr(scaled, longest) - extra})
    return scaled


def observed_seconds(
    planned: UpdateSeconds, expected: float, in_updates: float, between: float, batches: int, n_critic: int
) -> UpdateSeconds:
    """``planned`` corrected by what a run's first ``batches`` showed: ``in_updates`` seconds in
    their updates, where the timing expected ``expected``, and ``between`` seconds around them
    (fetching and preparing batches, logging). The updates' ratio scales every phase's update and
    the validation (the machine's speed: its steady state, other processes); the time around the
    updates is a cost per batch, the same for a cheap coarse update as for one of both stages, so
    it is added per batch (an adversarial generator update comes with ``n_critic`` critic batches)
    instead of scaling them."""
    ratio = in_updates / expected if expected > 0 else 1.0
    per_batch = max(0.0, between) / max(1, batches)
    return UpdateSeconds(
        coarse=planned.coarse * ratio + per_batch,
        reconstruction=planned.reconstruction * ratio + per_batch,
        adversarial=planned.adversarial * ratio + per_batch * (n_critic + 1),
        validation_batch=planned.validation_batch * ratio,
    )


def _median_seconds(function, repeats: int) -> float:
    function()  # warm-up: the first call builds the CPU's convolution kernels
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure_update_seconds(
    module, batch_size: int, eval_batch_size: int, repeats: int = 3, adversarial: bool = True
) -> UpdateSeconds:
    """Time one generator update of each phase, and a validation batch, on copies of ``module``'s
    networks and optimisers (the run's own weights, optimiser states and random streams are
    untouched), on a box hole of the official size. ``adversarial=False``: a schedule without
    that phase; it is not timed (0 s)."""
    from deepfill.data.masks import centered_rectangle, hole_distance
    from deepfill.models import SNPatchGANCritic
    from deepfill.training.losses import critic_loss, generator_loss, patch_critic_loss

    device = module.device
    config = module.loss_config
    generator = copy.deepcopy(module.generator)
    adversary = copy.deepcopy(module.adversary)  # v2's critic, or v1's (global, local) pair
    critics = (adversary,) if isinstance(adversary, SNPatchGANCritic) else adversary
    critic_parameters = list(itertools.chain.from_iterable(c.parameters() for c in critics))
    opt_g = module.optimizer_factory(generator.parameters())
    opt_d = module.optimizer_factory(critic_parameters)
    size = critics[0].input_size
    draw = torch.Generator().manual_seed(0)
    image = (torch.rand(batch_size, 3, size, size, generator=draw) * 2 - 1).to(device)
    mask = centered_rectangle(size, size)[None].expand(batch_size, -1, -1, -1).contiguous().to(device)
    distance = hole_distance(mask[0])[None].expand(batch_size, -1, -1, -1).to(device)
    distance = distance if config.discount == "nearest_known" else None

    def generator_update(phase: str) -> None:
        outputs = module.phase_outputs(generator, image, mask, phase, distance)
        for parameter in critic_parameters:  # frozen, as during the run's generator updates
            parameter.requires_grad_(False)
        loss = generator_loss(
            outputs, module.loss_config_for(phase), adversary if phase == "adversarial" else None
        )
        opt_g.zero_grad(set_to_none=True)
        loss.total.backward()
        opt_g.step()
        for parameter in critic_parameters:
            parameter.requires_grad_(True)

    def critic_update() -> None:
        with torch.no_grad():
            outputs = module.phase_outputs(generator, image, mask, "adversarial", distance)
        if isinstance(adversary, SNPatchGANCritic):
            loss = patch_critic_loss(adversary, outputs)
        else:
            alpha = torch.rand(2, batch_size, generator=draw).to(device)
            loss = critic_loss(*adversary, outputs, config, alpha[0], alpha[1])
        opt_d.zero_grad(set_to_none=True)
        loss.total.backward()
        opt_d.step()

    def validation_batch() -> None:
        with torch.no_grad():
            generator(image[:1].expand(eval_batch_size, -1, -1, -1), mask[:1], check_mask=False)

    coarse = _median_seconds(lambda: generator_update("coarse"), repeats)
    reconstruction = _median_seconds(lambda: generator_update("reconstruction"), repeats)
    validation = _median_seconds(validation_batch, repeats)
    if not adversarial:
        return UpdateSeconds(coarse, reconstruction, 0.0, validation)
    critic = _median_seconds(critic_update, repeats)
    generator = _median_seconds(lambda: generator_update("adversarial"), repeats)
    return UpdateSeconds(coarse, reconstruction, generator + module.n_critic * critic, validation)


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.1f} min" if seconds >= 90 else f"{seconds:.0f} s"


class TimeBudget(pl.Callback):
    """Scale the module's schedule (``pretrain_coarse_steps``, ``reconstruction_steps``,
    ``lr_decay_steps``, the adversarial updates that follow) and the trainer's ``max_steps`` to
    finish within ``budget`` (see the module doc); validation ``validations`` times, the last at
    the end. ``budget`` None: the configured schedule runs as it is.

    Args:
        budget: ``6min``, ``90s``, ``00:06:00`` ... (:func:`parse_budget`).
        adversarial_updates: the reference schedule's adversarial generator updates (the module
            runs them until ``max_steps`` ends the run).
        validations: how many times the run validates (evenly spaced; the last at its end).
        margin: the share of the budget kept free for what the timing does not see (data
            loading, logging, checkpoints).
        eval_batches: validation batches per validation (None: the data module's).
    """

    def __init__(
        self,
        budget: str | float | None = None,
        adversarial_updates: int = 0,
        validations: int = 8,
        margin: float = 0.08,
        eval_batches: int | None = None,
    ) -> None:
        self.seconds = parse_budget(budget)
        if adversarial_updates < 0:
            raise ConfigError(f"adversarial_updates: must be >= 0, got {adversarial_updates!r}")
        if validations < 1:
            raise ConfigError(f"validations: must be >= 1, got {validations!r}")
        if not 0 <= margin < 1:
            raise ConfigError(f"margin: must be in [0, 1), got {margin!r}")
        self.adversarial_updates, self.validations, self.margin = adversarial_updates, validations, margin
        self.eval_batches = eval_batches
        self.schedule: Schedule | None = None
        self._fit_start = 0.0
        # The run's first stretch checks the timing (see on_train_batch_end): at this step, once.
        self._check_step = 0
        self._plan: dict[str, Any] = {}
        # The first stretch, split: seconds inside the updates, seconds between them.
        self._in_updates = self._between = 0.0
        self._timed = 0  # the updates timed so far
        self._batch_start: float | None = None
        self._batch_end: float | None = None

    def check(self, module) -> None:
        """Refuse, before the run starts, a budget that has nothing to scale in ``module``."""
        if self.seconds is not None:
            self._reference(module)

    # ---------------------------------------------------------------- checkpoints carry the plan
    def state_dict(self) -> dict[str, Any]:
        return {"schedule": asdict(self.schedule)} if self.schedule is not None else {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if state_dict.get("schedule"):
            self.schedule = Schedule(**state_dict["schedule"])

    # ---------------------------------------------------------------- hooks
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._fit_start = time.monotonic()

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.seconds is None:
            return
        if self.schedule is None:  # a new run: plan it (a resumed one keeps its plan)
            planned = self._make_plan(trainer, pl_module) if trainer.is_global_zero else None
            # Every rank of a DDP run follows rank 0's plan (their timings differ a little).
            self.schedule = trainer.strategy.broadcast(planned, src=0)
            # Half way to the first validation: a schedule fitted again there (unless more than
            # twice as long or short) still validates as many times, evenly spaced.
            self._check_step = max(1, self.schedule.batches // self.validations // 2)
        else:
            self._say(f"time budget: continuing the schedule chosen at the start ({self._describe()})")
        self._apply(trainer, pl_module)

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args) -> None:
        if not self._check_step:
            return
        now = time.monotonic()
        if self._batch_end is not None:  # from the previous update's end: fetching this batch, logging
            self._between += now - self._batch_end
        self._batch_start = now

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args) -> None:
        """After the first stretch of the run (half way to its first validation), compare what its
        batches took with the timing the plan used, split into the updates (their ratio to the
        timing scales every update) and the time around them (fetching batches, logging: a cost
        per batch, added to every update); when the schedule would then take more than
        :data:`REPLAN_TOLERANCE` more or less than planned, fit it again (:meth:`_replan`). The
        short timing misses what only a longer stretch shows (the allocator's and the CPU's steady
        state, other processes, the data): the plan is made to hold, not to be exact."""
        if not self._check_step:
            return
        if self._batch_start is not None:
            self._batch_end = time.monotonic()
            self._in_updates += self._batch_end - self._batch_start
            self._timed += 1
        if trainer.global_step < self._check_step:
            return
        self._check_step = 0
        replanned = self._replan(trainer.global_step) if trainer.is_global_zero else None
        replanned = trainer.strategy.broadcast(replanned, src=0)
        if replanned is not None:
            self.schedule = replanned
            self._apply(trainer, pl_module)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.seconds is None or self.schedule is None:
            return
        spent = time.monotonic() - self._fit_start
        self._say(
            f"time budget: trained {self._describe()} in {_minutes(spent)} (budget {_minutes(self.seconds)})"
        )

    # ---------------------------------------------------------------- planning
    def _reference(self, module) -> Schedule:
        coarse, reconstruction = module.pretrain_coarse_steps, module.reconstruction_steps
        reference = Schedule(coarse, reconstruction, self.adversarial_updates, module.n_critic)
        if reference.generator_updates == 0:
            raise ConfigError(
                "budget: this configuration has no step-counted schedule to fit to a budget (its "
                "model.pretrain_coarse_steps, model.reconstruction_steps and callbacks.budget."
                "adversarial_updates are 0); use experiment=quickstart, or set them"
            )
        return reference

    def _make_plan(self, trainer: pl.Trainer, module) -> Schedule:
        datamodule = trainer.datamodule
        batch_size = int(getattr(datamodule, "batch_size", 1))
        eval_batch_size = int(getattr(datamodule, "eval_batch_size", batch_size) or batch_size)
        reference = self._reference(module)
        start = time.monotonic()
        seconds = measure_update_seconds(
            module, batch_size, eval_batch_size, adversarial=reference.adversarial > 0
        )
        eval_batches = self.eval_batches
        if eval_batches is None:
            loaders = trainer.val_dataloaders
            eval_batches = len(loaders) if loaders is not None and hasattr(loaders, "__len__") else 0
            limit = trainer.limit_val_batches
            eval_batches = min(eval_batches, limit) if isinstance(limit, int) else int(eval_batches * limit)
        # A validation batch also computes the metrics and writes a grid: counted twice over.
        validating = self.validations * eval_batches * seconds.validation_batch * 2
        elapsed = time.monotonic() - self._fit_start
        available = (self.seconds - elapsed) * (1 - self.margin) - validating
        schedule, scale = fit_schedule(reference, seconds, available, self.validations)
        expected = seconds.of(schedule) + validating + elapsed
        adversarial = (
            f", {seconds.adversarial:.2f} s (adversarial, with {module.n_critic} critic update(s))"
            if reference.adversarial
            else ""
        )
        self._say(
            f"time budget {_minutes(self.seconds)}: one update takes {seconds.coarse:.2f} s (coarse), "
            f"{seconds.reconstruction:.2f} s (reconstruction){adversarial} here "
            f"(timed in {time.monotonic() - start:.0f} s)",
            f"time budget: {scale:g} x the reference schedule: {self._describe(schedule)}, "
            f"about {_minutes(expected)} with {self.validations} validations; to repeat exactly: "
            f"{schedule.overrides()}",
        )
        self._warn_if_too_slow(schedule, scale, seconds, available)
        self._plan = {
            "reference": reference,
            "seconds": seconds,
            "validating": validating,
            "n_critic": module.n_critic,
            "end": time.monotonic(),
        }
        return schedule

    def _warn_if_too_slow(
        self, schedule: Schedule, scale: float, seconds: UpdateSeconds, available: float
    ) -> None:
        if seconds.of(schedule) > available:
            needed = _minutes(seconds.of(schedule))
            self._say(
                f"warning: {scale:g} x the reference schedule, the least this run can do, needs "
                f"{needed} of updates; the run will take longer than its budget"
            )

    @staticmethod
    def _phases_of(batches: int, schedule: Schedule) -> Schedule:
        """The updates of each phase in the first ``batches`` batches of ``schedule``."""
        coarse = min(batches, schedule.coarse)
        reconstruction = min(batches - coarse, schedule.reconstruction)
        adversarial = (batches - coarse - reconstruction) // (schedule.n_critic + 1)
        return Schedule(coarse, reconstruction, adversarial, schedule.n_critic)

    def _replan(self, done: int) -> Schedule | None:
        """The schedule fitted again after ``done`` batches, with the timing corrected by what those
        batches took (:func:`observed_seconds`: their updates against the timing, and the time
        around them per batch), when the current schedule would take more than
        :data:`REPLAN_TOLERANCE` more or less than planned (None: within it)."""
        plan, current = self._plan, self.schedule
        if not plan or current is None:
            return None
        planned: UpdateSeconds = plan["seconds"]
        actual = time.monotonic() - plan["end"]
        expected = planned.of(self._phases_of(done, current))
        timed = planned.of(self._phases_of(self._timed, current))
        if expected <= 0 or timed <= 0 or planned.of(current) <= 0:
            return None
        ratio = actual / expected
        seconds = observed_seconds(
            planned, timed, self._in_updates, self._between, max(1, self._timed - 1), current.n_critic
        )
        if abs(seconds.of(current) / planned.of(current) - 1) <= REPLAN_TOLERANCE:
            return None
        speed = self._in_updates / timed
        # What is left of the budget, plus what the batches done took: the whole run's updates.
        left = self.seconds - (time.monotonic() - self._fit_start)
        available = left * (1 - self.margin) - plan["validating"] * speed + actual
        # Validation comes every batches / validations: a schedule shorter than validations x
        # the batches done would skip some of them. (This check comes half way to the first
        # one: the schedule may shrink by half; a machine slower still ends late, and says so.)
        schedule, scale = fit_schedule(
            plan["reference"], seconds, available, self.validations, min_batches=(done + 1) * self.validations
        )
        done_coarse = self._phases_of(done, current).coarse
        if schedule.coarse < done_coarse:  # never fewer coarse updates than ran already
            schedule = Schedule(done_coarse, schedule.reconstruction, schedule.adversarial, schedule.n_critic)
        if schedule == current:
            return None
        self._warn_if_too_slow(schedule, scale, seconds, available)
        around = self._between / max(1, self._timed - 1)
        self._say(
            f"time budget: the first {done} batches took {actual:.0f} s, {ratio:.2f} x the timing; "
            f"rescheduled to {scale:g} x the reference schedule: {self._describe(schedule)} "
            f"(the updates ran at {speed:.2f} x the timing, with {around:.3f} s a batch around them: "
            f"data, logging); to repeat exactly: {schedule.overrides()}"
        )
        return schedule

    def _describe(self, schedule: Schedule | None = None) -> str:
        s = schedule or self.schedule
        return (
            f"{s.coarse} coarse + {s.reconstruction} reconstruction + {s.adversarial} adversarial "
            f"generator updates ({s.batches} batches)"
        )

    def _apply(self, trainer: pl.Trainer, module) -> None:
        s = self.schedule
        module.pretrain_coarse_steps = s.coarse
        module.reconstruction_steps = s.reconstruction
        module.lr_decay_steps = s.generator_updates
        trainer.fit_loop.epoch_loop.max_steps = s.batches
        interval = max(1, s.batches // self.validations)
        trainer.val_check_interval = interval
        trainer.val_check_batch = interval

    def _say(self, *lines: str) -> None:
        if pl.utilities.rank_zero_only.rank == 0:
            for line in lines:
                print(line, flush=True)
