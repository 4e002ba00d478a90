"""A schedule fitted to a time budget (deepfill.training.budget): the arithmetic, the parsing, and
the quickstart recipe run with a small budget on a slowed step: every phase runs, the learning
rate ends at its end value, and the run ends on its schedule, not on the time cap."""

from __future__ import annotations

import csv
import re
import time

import pytest

from deepfill.training.budget import (
    SCALE_STEP,
    Schedule,
    UpdateSeconds,
    fit_schedule,
    measure_update_seconds,
    observed_seconds,
    parse_budget,
    scale_grid_floor,
)
from deepfill.utils.errors import ConfigError
from deepfill.utils.resolvers import budget_cap
from helpers.commands import call_cli
from helpers.tiny import TINY, make_module

REFERENCE = Schedule(coarse=500, reconstruction=300, adversarial=60, n_critic=1)


def test_budgets_are_read_in_every_usual_form() -> None:
    assert parse_budget("6min") == 360
    assert parse_budget("90s") == 90
    assert parse_budget("1.5h") == 5400
    assert parse_budget("00:06:00") == 360
    assert parse_budget(None) is None
    for bad in ("6", "six minutes", "0s", "-1min"):
        with pytest.raises(ConfigError, match=r"^budget: "):
            parse_budget(bad)
    assert budget_cap("6min") == "00:00:12:00"
    assert budget_cap("1.5h", 2) == "00:03:00:00"
    assert budget_cap(None) is None


def test_the_reference_is_scaled_to_fill_the_time_and_no_more() -> None:
    seconds = UpdateSeconds(coarse=0.2, reconstruction=0.4, adversarial=1.0, validation_batch=0.1)
    per_reference = seconds.of(REFERENCE)  # 100 + 120 + 60 = 280 s
    assert per_reference == pytest.approx(280)
    schedule, scale = fit_schedule(REFERENCE, seconds, available=560, multiple=8)
    assert scale == pytest.approx(2.0)
    assert (schedule.coarse, schedule.reconstruction, schedule.adversarial) == (1000, 600, 120)
    assert schedule.batches % 8 == 0 and seconds.of(schedule) <= 560
    assert schedule.generator_updates == 1720
    # Half a step short of the next multiple: rounded down, never over the time.
    schedule, scale = fit_schedule(REFERENCE, seconds, available=280 * (1 + SCALE_STEP * 0.99), multiple=1)
    assert scale == pytest.approx(1.0)
    assert schedule == REFERENCE
    # A machine too slow for the smallest step still runs every phase.
    schedule, scale = fit_schedule(REFERENCE, seconds, available=1.0, multiple=8)
    assert scale == pytest.approx(SCALE_STEP)
    assert min(schedule.coarse, schedule.reconstruction, schedule.adversarial) > 0
    assert schedule.batches % 8 == 0
    # On a slow machine the grid is finer: rounding down costs at most 10% there too.
    schedule, scale = fit_schedule(REFERENCE, seconds, available=280 * 0.149, multiple=1)
    assert scale == pytest.approx(0.14)
    schedule, scale = fit_schedule(REFERENCE, seconds, available=280 * 0.0999, multiple=1)
    assert scale == pytest.approx(0.095)
    # The same timings (a few percent apart) choose the same schedule.
    choices = {fit_schedule(REFERENCE, seconds, available=400 * f, multiple=8)[0] for f in (1.0, 1.01, 0.995)}
    assert len(choices) == 1


def test_time_around_the_updates_is_a_cost_per_batch_and_their_slowdown_a_factor() -> None:
    """What a run's first stretch shows corrects the timing: its updates' ratio to the timing
    scales every phase, the time spent around them (data, logging) is added per batch. A
    quickstart-like reference: cheap coarse updates, then dear updates of both stages."""
    planned = UpdateSeconds(coarse=0.1, reconstruction=0.3, adversarial=0.9, validation_batch=0.2)
    reference = Schedule(coarse=500, reconstruction=420, adversarial=0, n_critic=2)
    # 50 coarse updates as fast as timed, 0.05 s to fetch each batch: 1.5x the timing in all.
    seen = observed_seconds(planned, expected=5.0, in_updates=5.0, between=49 * 0.05, batches=49, n_critic=2)
    assert seen.coarse == pytest.approx(0.15) and seen.reconstruction == pytest.approx(0.35)
    assert seen.adversarial == pytest.approx(0.9 + 3 * 0.05)  # with its two critic batches
    assert seen.validation_batch == pytest.approx(0.2)
    # The schedule it fits uses the budget: at these true costs it takes at least 85% of what is
    # available (the grid's rounding aside), where scaling every phase by the 1.5x of the coarse
    # stretch would have left a fifth unused.
    true = UpdateSeconds(coarse=0.15, reconstruction=0.35, adversarial=1.05, validation_batch=0.2)
    available = 300.0
    schedule, _ = fit_schedule(reference, seen, available, multiple=8)
    assert 0.85 * available <= true.of(schedule) <= available
    scaled = UpdateSeconds(0.15, 0.45, 1.35, 0.3)
    schedule, _ = fit_schedule(reference, scaled, available, multiple=8)
    assert true.of(schedule) < 0.85 * available
    # Updates that ran slower (another process, the CPU's clock): every phase slows alike.
    seen = observed_seconds(planned, expected=5.0, in_updates=7.5, between=0.0, batches=49, n_critic=2)
    assert seen.reconstruction == pytest.approx(0.45) and seen.validation_batch == pytest.approx(0.3)


def test_the_scale_grid_rounds_down_by_less_than_a_tenth() -> None:
    previous = 0.0
    for k in range(1, 400):
        wanted = SCALE_STEP + k * 0.0037
        scale = scale_grid_floor(wanted)
        assert scale <= wanted + 1e-12
        assert scale >= previous  # monotone
        assert wanted - scale < 0.1 * wanted + 1e-12
        previous = scale
    assert scale_grid_floor(0.01) == SCALE_STEP
    floors = [scale_grid_floor(x) for x in (0.0599, 0.1, 0.149, 0.5, 0.74, 1.0)]
    assert floors == [0.055, 0.1, 0.14, 0.5, 0.7, 1.0]


def test_overrides_repeat_the_schedule() -> None:
    schedule = Schedule(coarse=250, reconstruction=150, adversarial=30, n_critic=1)
    assert schedule.batches == 460
    assert schedule.overrides() == (
        "budget=null model.pretrain_coarse_steps=250 model.reconstruction_steps=150 "
        "model.lr_decay_steps=430 trainer.max_steps=460"
    )


def _slowed(monkeypatch, seconds: float) -> None:
    """Every pass through the coarse stage (each update, each validation batch, and the budget's
    own timing) takes ``seconds`` longer: a machine slower than the test's."""
    from deepfill.models.generator import CoarseGenerator

    forward = CoarseGenerator.forward

    def slow(self, *args, **kwargs):
        time.sleep(seconds)
        return forward(self, *args, **kwargs)

    monkeypatch.setattr(CoarseGenerator, "forward", slow)


def _budgeted_quickstart(run, budget: int, *extra: str):
    """The tiny quickstart with a ``budget`` of that many seconds, run in ``run``: the finished
    command's result and its wall time."""
    start = time.monotonic()
    result = call_cli(
        "deepfill-train",
        "experiment=quickstart",
        *[o for o in TINY if not o.startswith("budget=")],
        "data.val.length=4",
        *extra,
        f"budget={budget}s",
        "baseline_comparison=null",
        f"hydra.run.dir={run}",
        cwd=run.parent,
    )
    elapsed = time.monotonic() - start
    assert result.returncode == 0, result.stderr[-3000:]
    return result, elapsed


def test_a_budget_fits_every_phase_of_the_quickstart_into_it(tmp_path, monkeypatch) -> None:
    _slowed(monkeypatch, 0.02)
    run, budget = tmp_path / "run", 25
    # The three phases: the quickstart's two and the adversarial phase it can add.
    three_phases = ["callbacks.budget.adversarial_updates=60", "model.reconstruction_steps=300"]
    result, elapsed = _budgeted_quickstart(run, budget, *three_phases)
    out = result.stdout + result.stderr
    # The schedule the run ended with (planned, or fitted again after its first stretch).
    planned = re.search(
        r"time budget: trained (\d+) coarse \+ (\d+) reconstruction \+ (\d+) adversarial generator "
        r"updates \((\d+) batches\)",
        out,
    )
    assert planned, out[-3000:]
    coarse, reconstruction, adversarial, batches = (int(g) for g in planned.groups())
    assert min(coarse, reconstruction, adversarial) > 0  # every phase runs
    assert batches == coarse + reconstruction + 2 * adversarial
    assert f"`max_steps={batches}` reached" in out  # ended on its schedule ...
    assert "max_time" not in out.split("time budget")[-1]  # ... not on the cap (2x the budget)
    assert elapsed < 2 * budget + 30  # the command's start and close included
    # The user's log, not a library's notes on another library or its advertising.
    assert "LeafSpec" not in out and "litlogger" not in out, out[-3000:]
    rows = list(csv.DictReader((run / "csv" / "metrics.csv").open()))
    validations = [r for r in rows if r.get("val/psnr")]
    assert len(validations) == 8, "\n".join(line for line in out.splitlines() if "time budget" in line)
    import torch

    checkpoint = torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)
    assert int(checkpoint["state_dict"]["generator_steps"]) == coarse + reconstruction + adversarial
    # The learning rate decayed to its end: the last updates ran at a small fraction of the first's.
    (group,) = checkpoint["optimizer_states"][0]["param_groups"]
    assert group["lr"] < 0.02 * group["initial_lr"]
    # The schedule is in the checkpoint: a resumed run keeps it instead of timing again.
    (state,) = [v for k, v in checkpoint["callbacks"].items() if "TimeBudget" in k]
    assert state["schedule"]["coarse"] == coarse


def test_a_budget_on_a_recipe_without_a_schedule_is_refused_in_one_line(tmp_path) -> None:
    tiny = [o for o in TINY if not o.startswith("budget=")]
    run = f"hydra.run.dir={tmp_path}/r"
    result = call_cli("deepfill-train", *tiny, "debug=fast_dev_run", "budget=1min", run, cwd=tmp_path)
    assert result.returncode == 2, result.stderr[-2000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("deepfill-train: error: budget: this configuration"), last


def test_the_timing_leaves_the_run_untouched_and_skips_a_phase_the_schedule_lacks() -> None:
    import torch

    module = make_module(n_critic=2)
    before = {k: v.clone() for k, v in module.state_dict().items()}
    state = torch.random.get_rng_state()
    without = measure_update_seconds(module, batch_size=2, eval_batch_size=2, repeats=1, adversarial=False)
    assert without.adversarial == 0.0
    assert min(without.coarse, without.reconstruction, without.validation_batch) > 0
    # The full model costs more per update than its coarse stage alone.
    assert without.reconstruction > without.coarse
    seconds = measure_update_seconds(module, batch_size=2, eval_batch_size=2, repeats=1)
    assert seconds.adversarial > seconds.reconstruction  # two critic updates and a generator update
    assert torch.equal(torch.random.get_rng_state(), state)
    for name, value in module.state_dict().items():
        assert torch.equal(value, before[name]), name


def test_a_run_slower_than_its_timing_is_fitted_again_and_still_ends_within_its_budget(
    tmp_path, monkeypatch
) -> None:
    """The machine slows down once the timing is done (another process starts, a thermal
    limit): the first stretch shows it, and the schedule is fitted again to end in time."""
    from deepfill.models.generator import CoarseGenerator
    from deepfill.training.budget import TimeBudget

    slowdown = {"factor": 0.0}
    forward = CoarseGenerator.forward

    def slow(self, *args, **kwargs):
        start = time.perf_counter()
        out = forward(self, *args, **kwargs)
        # The stage takes (1 + factor) times as long: every phase slows by a similar ratio.
        time.sleep(slowdown["factor"] * (time.perf_counter() - start) * 4)
        return out

    make_plan = TimeBudget._make_plan

    def plan_then_slow_down(self, *args):
        schedule = make_plan(self, *args)
        slowdown["factor"] = 0.5
        return schedule

    monkeypatch.setattr(CoarseGenerator, "forward", slow)
    monkeypatch.setattr(TimeBudget, "_make_plan", plan_then_slow_down)
    run, budget = tmp_path / "run", 20
    result, elapsed = _budgeted_quickstart(run, budget)
    out = result.stdout
    lines = "\n".join(line for line in out.splitlines() if "time budget" in line)
    first = re.search(r"reference schedule: .*?\((\d+) batches\)", lines)
    again = re.search(r"took \d+ s, ([\d.]+) x the timing; rescheduled .*?\((\d+) batches\)", lines)
    assert first and again, lines
    assert float(again.group(1)) > 1.1 and int(again.group(2)) < int(first.group(1)), lines
    # What slowed down were the updates, not the time around them.
    speed = re.search(r"the updates ran at ([\d.]+) x the timing", lines)
    assert speed and float(speed.group(1)) > 1.1, lines
    assert f"`max_steps={again.group(2)}` reached" in result.stdout + result.stderr
    assert elapsed < 2 * budget + 30
    rows = list(csv.DictReader((run / "csv" / "metrics.csv").open()))
    assert len([r for r in rows if r.get("val/psnr")]) == 8, lines
