"""Replicated sweeps: the statistics against independent computations (scipy), the results table
on job records with known values, and a real replicated sweep."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from deepfill.evaluation.statistics import bootstrap_mean_difference, paired_difference, summarise_values
from deepfill.sweeps.jobs import begin_job, end_job
from deepfill.sweeps.report import write_results_table
from deepfill.sweeps.results import collect_results
from deepfill.sweeps.settings import setting_job_type
from deepfill.utils.errors import UserError
from helpers.commands import call_cli
from helpers.tiny import TINY, compose_cfg

# The quickstart recipe, tiny: one epoch of 2 batches, every phase.
ONE_EPOCH_QUICKSTART = [
    "experiment=quickstart",
    *TINY,
    "data.train.length=4",
    "data.val.length=2",
    "model.pretrain_coarse_steps=1",
    "model.reconstruction_steps=1",
    "trainer.max_epochs=1",
]


# ----------------------------------------------------------------------------- the statistics
@pytest.mark.parametrize("n", [2, 3, 5, 12])
def test_mean_interval_is_scipys_student_t_interval(n) -> None:
    values = np.random.default_rng(n).normal(22.0, 0.4, n)
    summary = summarise_values(values)
    low, high = stats.t.interval(0.95, n - 1, loc=values.mean(), scale=stats.sem(values))
    assert summary.n == n
    assert summary.mean == pytest.approx(values.mean(), abs=1e-12)
    assert summary.std == pytest.approx(np.std(values, ddof=1), abs=1e-12)
    assert (summary.ci_low, summary.ci_high) == pytest.approx((low, high), abs=1e-10)


def test_one_value_has_no_spread_and_no_interval() -> None:
    summary = summarise_values([21.5])
    assert summary.n == 1 and summary.mean == 21.5
    assert math.isnan(summary.std) and math.isnan(summary.ci_low) and math.isnan(summary.ci_high)
    assert summarise_values([float("nan")]).n == 0


def test_paired_difference_is_scipys_paired_t_interval_over_the_common_seeds() -> None:
    rng = np.random.default_rng(0)
    seeds = [42, 43, 44, 45]
    noise = rng.normal(0, 0.5, len(seeds))  # what each seed does to both settings
    reference = {s: 22.0 + e for s, e in zip(seeds, noise, strict=True)}
    setting = {s: 22.3 + e + rng.normal(0, 0.05) for s, e in zip(seeds, noise, strict=True)}
    setting.pop(45)  # a failed job: only the seeds both have are paired
    diff = paired_difference(setting, reference)
    a = np.array([setting[s] for s in seeds[:3]])
    b = np.array([reference[s] for s in seeds[:3]])
    interval = stats.ttest_rel(a, b).confidence_interval(0.95)
    assert diff.n == 3
    assert diff.mean == pytest.approx((a - b).mean(), abs=1e-12)
    assert (diff.ci_low, diff.ci_high) == pytest.approx((interval.low, interval.high), abs=1e-10)
    # Pairing removes the seed's effect: the unpaired interval would straddle zero.
    assert diff.distinguishable and diff.ci_low > 0
    unpaired = stats.ttest_ind(a, b).confidence_interval(0.95)
    assert unpaired.low < 0 < unpaired.high


def test_bootstrap_over_images_brackets_the_mean_difference() -> None:
    rng = np.random.default_rng(1)
    a = rng.normal(20, 2, 64)
    b = a - 0.5 + rng.normal(0, 0.2, 64)
    mean, low, high = bootstrap_mean_difference(a, b)
    assert mean == pytest.approx(0.5 + (a - b - 0.5).mean())
    assert low < mean < high and low > 0
    sem = stats.sem(a - b)
    assert high - low == pytest.approx(2 * 1.96 * sem, rel=0.15)
    with pytest.raises(ValueError, match="equal-length"):
        bootstrap_mean_difference(a, b[:10])


# ----------------------------------------------------------------------------- the table
def _records(folder: Path, jobs: list[tuple[str, str, int, dict | None]]) -> None:
    """(job, setting override, seed, metrics or None for a job that failed)."""
    for job, setting, seed, metrics in jobs:
        begin_job(folder / job, ["+sweep=custom", setting, f"seed={seed}"], True)
        if metrics is None:
            end_job(folder / job, {}, status="failed", error="RuntimeError: boom")
        else:
            end_job(folder / job, metrics)


def _table(folder: Path) -> dict[str, dict]:
    with (folder / "results.csv").open() as f:
        return {row["model.optimizer.lr"]: row for row in csv.DictReader(f)}


def test_the_table_reports_mean_interval_and_paired_difference_per_setting(tmp_path) -> None:
    psnr = {"1e-4": [22.0, 22.6, 21.8], "2e-4": [22.4, 23.1, 22.1], "4e-4": [21.0, 22.9, 21.2]}
    lpips = {"1e-4": [0.20, 0.18, 0.21], "2e-4": [0.19, 0.17, 0.20], "4e-4": [0.25, 0.15, 0.24]}
    jobs, number = [], 0
    for i, seed in enumerate((42, 43, 44)):
        for lr in psnr:
            failed = lr == "4e-4" and seed == 44
            metrics = None if failed else {"val/psnr": psnr[lr][i], "val/lpips": lpips[lr][i]}
            jobs.append((str(number), f"model.optimizer.lr={lr}", seed, metrics))
            number += 1
    _records(tmp_path, jobs)
    rows = collect_results(tmp_path)
    assert {r["seed"] for r in rows} == {42, 43, 44}
    write_results_table(tmp_path, rows, "val/lpips")
    table = _table(tmp_path)
    # Ranked by mean LPIPS, lower first; 4e-4 has two finished runs of three.
    assert list(table) == ["2e-4", "1e-4", "4e-4"]
    assert table["4e-4"]["n"] == "2" and table["4e-4"]["jobs"] == "3" and table["4e-4"]["seeds"] == "42 43"
    for lr, values in psnr.items():
        kept = values[:2] if lr == "4e-4" else values
        low, high = stats.t.interval(0.95, len(kept) - 1, loc=np.mean(kept), scale=stats.sem(kept))
        assert float(table[lr]["val/psnr_mean"]) == pytest.approx(np.mean(kept))
        assert float(table[lr]["val/psnr_std"]) == pytest.approx(np.std(kept, ddof=1))
        assert (float(table[lr]["val/psnr_ci_low"]), float(table[lr]["val/psnr_ci_high"])) == pytest.approx(
            (low, high)
        )
        # Paired by seed with the reference (the first setting, 1e-4), over the seeds both have.
        n = len(kept)
        diff = stats.ttest_rel(np.array(kept), np.array(psnr["1e-4"][:n])).confidence_interval(0.95)
        if lr != "1e-4":
            assert int(table[lr]["val/psnr_diff_n"]) == n
            assert float(table[lr]["val/psnr_diff"]) == pytest.approx(
                np.mean(kept) - np.mean(psnr["1e-4"][:n])
            )
            assert float(table[lr]["val/psnr_diff_ci_low"]) == pytest.approx(diff.low)
            assert float(table[lr]["val/psnr_diff_ci_high"]) == pytest.approx(diff.high)
    assert table["1e-4"]["reference"] == "True"
    md = (tmp_path / "results.md").read_text()
    # 2e-4 is better than 1e-4 on every seed (paired), by LPIPS; 4e-4 is not distinguishable.
    assert "| 1 | 2e-4 | 3 |" in md and "| better |" in md
    assert "not distinguishable at n=2" in md
    # Another reference, by the last part of its key.
    write_results_table(tmp_path, rows, "val/lpips", reference="lr=2e-4")
    assert _table(tmp_path)["2e-4"]["reference"] == "True"
    assert "| worse |" in (tmp_path / "results.md").read_text()  # 1e-4 against 2e-4, paired


@pytest.mark.parametrize(
    ("reference", "message"),
    [
        ("lr=8e-4", "reference: 'lr=8e-4' is not a setting of this sweep (settings: lr=1e-4; lr=2e-4)"),
        ("gan=0.1", "reference: 'gan' is not a swept key of this sweep (swept: model.optimizer.lr)"),
        ("lr", "reference: expected key=value pairs"),
    ],
)
def test_a_reference_that_is_not_a_setting_is_one_line(reference, message, tmp_path) -> None:
    _records(tmp_path, [("0", "model.optimizer.lr=1e-4", 42, {"val/psnr": 1.0})])
    _records(tmp_path, [("1", "model.optimizer.lr=2e-4", 42, {"val/psnr": 2.0})])
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)")):
        write_results_table(tmp_path, collect_results(tmp_path), "val/psnr", reference=reference)
    result = call_cli("deepfill-sweep-table", str(tmp_path), "--reference", reference, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith(f"deepfill-sweep-table: error: {message}")


def test_a_sweep_folder_mixing_other_settings_is_one_line(tmp_path) -> None:
    _records(tmp_path, [("0", "model.optimizer.lr=1e-4", 42, {"val/psnr": 1.0})])
    begin_job(tmp_path / "1", ["+sweep=custom", "model.loss.gan=0.01", "seed=42"], True)
    result = call_cli("deepfill-sweep-table", str(tmp_path), cwd=tmp_path)
    assert result.returncode == 2
    line = result.stderr.strip().splitlines()[-1]
    assert "mixes runs of other sweeps: model.loss.gan is set in job(s) 1 but not in 0" in line


def test_a_settings_replicates_share_one_wandb_job_type() -> None:
    a = setting_job_type(["+sweep=attention", "model.generator.attention.ksize=3", "seed=42"])
    b = setting_job_type(["model.generator.attention.ksize=3", "seed=43", "+sweep=attention"])
    c = setting_job_type(["+sweep=attention", "model.generator.attention.ksize=5", "seed=42"])
    assert a == b == "model.generator.attention.ksize=3"
    assert c != a
    long = [f"model.loss.l{i}=0.00123456789" for i in range(6)]
    assert len(setting_job_type(long)) == 64
    assert setting_job_type(long) != setting_job_type([*long[:-1], "model.loss.l5=0.5"])


# ----------------------------------------------------------------------------- the sweep itself
def test_every_job_of_a_seed_gets_its_data_masks_and_weights_from_that_seed(tmp_path) -> None:
    """Common random numbers: a replicate's seed reaches the data order and training masks, the
    initial weights and the critics' penalty draws; evaluation masks are fixed for every job."""
    base = compose_cfg(["+sweep=custom", "replicates=3", "seed=7"], tmp_path, extra=None)
    assert base.hydra.sweeper.params.seed == "7,8,9"
    job = compose_cfg(["+sweep=custom", "seed=8", "model.loss.gan=0.01"], tmp_path)
    assert job.data.seed == 8 and job.model.seed == 8 and job.data.eval_seed == 0
    other = compose_cfg(["+sweep=custom", "seed=8", "model.loss.gan=0.1"], tmp_path)
    assert other.data.seed == job.data.seed and other.data.eval_seed == job.data.eval_seed


def test_a_replicated_sweep_runs_each_setting_with_each_seed_and_resumes_by_skipping(tmp_path) -> None:
    args = [
        "-m",
        "+sweep=custom",
        "sweep_name=rep",
        "model.optimizer.lr=0.0001,0.0004",
        "replicates=2",
        f"paths.log_dir={tmp_path}",
        "optimized_metric=val/psnr",
        *ONE_EPOCH_QUICKSTART,
        "baseline_comparison.limit=2",
    ]
    result = call_cli("deepfill-train", *args, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    sweep = tmp_path / "sweeps" / "rep"
    records = {p.parent.name: json.loads(p.read_text()) for p in sweep.glob("*/job.json")}
    settings = set()
    for record in records.values():
        overrides = dict(o.split("=", 1) for o in record["overrides"])
        settings.add((overrides["model.optimizer.lr"], overrides["seed"]))
    assert settings == {("0.0001", "42"), ("0.0004", "42"), ("0.0001", "43"), ("0.0004", "43")}
    with (sweep / "results.csv").open() as f:
        table = list(csv.DictReader(f))
    assert [r["n"] for r in table] == ["2", "2"]
    assert all(r["val/psnr_ci_low"] not in ("", "nan") for r in table)
    assert "| reference |" in (sweep / "results.md").read_text()
    with (sweep / "results_jobs.csv").open() as f:
        assert len(list(csv.DictReader(f))) == 4
    # Every run keeps its per-image evaluation values.
    per_image = (sweep / "0" / "comparison_images.csv").read_text().splitlines()
    assert per_image[0].startswith("method,image,hole_ratio,psnr") and len(per_image) == 1 + 2 * 3
    # Rerunning the command skips all four jobs.
    again = call_cli("deepfill-train", *args, cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stdout.count("finished earlier (resume=true), skipping") == 4
    after = {p.parent.name: json.loads(p.read_text()) for p in sweep.glob("*/job.json")}
    assert all(after[j]["started"] == records[j]["started"] for j in records)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["-m", "+sweep=custom", "replicates=0"], "replicates: must be a whole number >= 1, got 0"),
        (["replicates=2"], "replicates=2 needs a multirun: add -m"),
    ],
)
def test_bad_replicates_are_one_line(args, message, tmp_path) -> None:
    logs = f"paths.log_dir={tmp_path}"
    result = call_cli("deepfill-train", *args, "debug=fast_dev_run", logs, cwd=tmp_path)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert message in result.stderr.strip().splitlines()[-1]


def test_the_best_trials_of_a_search_rerun_with_replicate_seeds(tmp_path) -> None:
    """An Optuna search ranks single runs; its k best settings are rerun with seeds by the command
    that `deepfill-sweep-table --export-best` prints, and give the same kind of table."""
    import shlex

    search = tmp_path / "search"
    shared = [
        "+sweep=optuna_loss_weights",
        *ONE_EPOCH_QUICKSTART,
        "baseline_comparison=null",
        f"paths.log_dir={tmp_path / 'logs'}",
    ]
    trials = {"0": (1.7, 0.003, 0.31), "1": (0.9, 0.0005, 0.25), "2": (2.4, 0.008, 0.40)}
    for job, (l1, gan, lpips) in trials.items():
        begin_job(search / job, [*shared, f"model.loss.l1={l1}", f"model.loss.gan={gan}", "seed=42"], True)
        end_job(search / job, {"val/lpips": lpips, "val/psnr": 20.0})
    export = ["--export-best", "2", "--replicates", "2", "--metric", "val/lpips"]
    result = call_cli("deepfill-sweep-table", str(search), *export, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert (search / "best" / "best" / "trial_1.yaml").read_text().splitlines()[2:] == [
        "model:",
        "  loss:",
        "    gan: 0.0005",
        "    l1: 0.9",
    ]
    command = shlex.split(result.stdout.strip().splitlines()[-1])
    assert command[:2] == ["deepfill-train", "-m"] and "+best=trial_1,trial_0" in command
    assert "+sweep=optuna_loss_weights" not in command and "replicates=2" in command
    rerun = call_cli(*command, cwd=tmp_path)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    with (tmp_path / "logs" / "sweeps" / "search_best2" / "results.csv").open() as f:
        table = {row["best"]: row for row in csv.DictReader(f)}
    assert set(table) == {"trial_0", "trial_1"} and {r["n"] for r in table.values()} == {"2"}
    config = (tmp_path / "logs" / "sweeps" / "search_best2" / "0" / ".hydra" / "config.yaml").read_text()
    assert "l1: 0.9" in config or "l1: 1.7" in config
