"""Sweeps: device assignment, job records and resume, the results table, launchers, Optuna."""

from __future__ import annotations

import csv
import itertools
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf

from deepfill.evaluation.metrics import higher_is_better, optimization_direction
from deepfill.sweeps.devices import choose_free, visible_gpus
from deepfill.sweeps.jobs import JobConflictError, begin_job, end_job, read_record
from deepfill.sweeps.report import write_results_table
from deepfill.sweeps.resolvers import device_count
from deepfill.sweeps.results import collect_results
from helpers.commands import call_cli, run_cli
from helpers.run_if import RunIf
from helpers.tiny import JOB, compose_cfg, options

# --- device assignment (no GPU needed) -------------------------------------------------------


def test_choose_free_takes_the_first_free_devices_in_pool_order() -> None:
    assert choose_free(["0", "1", "2"], set()) == ["0"]
    assert choose_free(["0", "1", "2"], {"0"}) == ["1"]
    assert choose_free(["3", "1"], {"3"}, count=1) == ["1"]
    assert choose_free(["0", "1", "2", "3"], {"1"}, count=2) == ["0", "2"]
    assert choose_free(["0", "1"], {"0", "1"}) is None
    assert choose_free(["0", "1"], {"1"}, count=2) is None
    with pytest.raises(ValueError, match="count"):
        choose_free(["0"], set(), count=0)


def test_visible_gpus_respects_cuda_visible_devices_and_never_needs_cuda() -> None:
    assert visible_gpus({"CUDA_VISIBLE_DEVICES": "2,3"}) == ["2", "3"]
    assert visible_gpus({"CUDA_VISIBLE_DEVICES": ""}) == []
    assert visible_gpus({"CUDA_VISIBLE_DEVICES": "-1"}) == []
    listing = "GPU 0: NVIDIA H100 (UUID: GPU-a)\nGPU 1: NVIDIA H100 (UUID: GPU-b)\n"
    assert visible_gpus({}, smi=lambda: listing) == ["0", "1"]
    assert visible_gpus({}, smi=lambda: "") == []
    assert device_count([4, 6, 7]) == 3
    with pytest.raises(ValueError, match="no GPU found"):
        device_count([])


CLAIM = """
import os, sys, time
from deepfill.sweeps.devices import claim_devices
got = claim_devices(["0", "1"], sys.argv[1], timeout_s=float(sys.argv[2]), poll_s=0.05)
again = claim_devices(["0", "1"], sys.argv[1])
print(got[0], os.environ["CUDA_VISIBLE_DEVICES"], again[0], flush=True)
time.sleep(float(sys.argv[3]))
"""


def _claim(lock_dir: Path, timeout: float, hold: float) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", CLAIM, str(lock_dir), str(timeout), str(hold)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_processes_claim_distinct_devices_and_wait_for_a_free_one(tmp_path) -> None:
    locks = tmp_path / "locks"
    holders = [_claim(locks, 5, 300), _claim(locks, 5, 300)]  # killed below, long before 300 s
    try:
        lines = [holder.stdout.readline().split() for holder in holders]
        # Each: its device, CUDA_VISIBLE_DEVICES set to it, and the same device when asked again.
        assert all(line[0] == line[1] == line[2] for line in lines), lines
        assert {lines[0][0], lines[1][0]} == {"0", "1"}
        # A third process finds both devices taken and gives up with one clear line.
        third = _claim(locks, 0.5, 0)
        _, err = third.communicate(timeout=60)
        assert third.returncode != 0
        assert "DeviceClaimError: no free device in pool ['0', '1']" in err
        # Once a holder exits its device is free again (the lock dies with the process).
        holders[0].kill()
        holders[0].wait()
        fourth = _claim(locks, 5, 0)
        out, err = fourth.communicate(timeout=60)
        assert fourth.returncode == 0, err
        assert out.split()[0] == lines[0][0]
    finally:
        for holder in holders:
            holder.kill()
            holder.wait()


def test_a_lock_file_of_another_user_counts_as_busy(tmp_path, monkeypatch) -> None:
    import os

    from deepfill.sweeps import devices

    locks = tmp_path / "locks"
    locks.mkdir()
    real_open = os.open

    def refuse_device_0(path, *args, **kwargs):
        if str(path).endswith("device-0.lock"):
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(devices.os, "open", refuse_device_0)
    monkeypatch.setattr(devices, "_HELD", {})
    monkeypatch.delenv("CUDA_DEVICE_ORDER", raising=False)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert devices.claim_devices(["0", "1"], locks, timeout_s=0) == ["1"]
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "1"
    assert os.environ["CUDA_DEVICE_ORDER"] == "PCI_BUS_ID"  # nvidia-smi's numbering
    monkeypatch.setattr(devices, "_HELD", {})
    with pytest.raises(devices.DeviceClaimError, match="no free device in pool"):
        devices.claim_devices(["0"], locks, timeout_s=0)


# --- job records and the results table -------------------------------------------------------


def test_job_record_skips_finished_runs_and_refuses_other_settings(tmp_path) -> None:
    run = tmp_path / "0"
    overrides = ["+sweep=attention", "model.generator.attention.ksize=3"]
    assert begin_job(run, overrides, resume=True) is None
    assert read_record(run)["status"] == "running"
    end_job(run, {"val/psnr": 20.5, "train/g_loss": 1.0, "val/lpips": 0.2})
    record = read_record(run)
    assert record["status"] == "finished"
    # Only validation / test scores are reported.
    assert record["metrics"] == {"val/psnr": 20.5, "val/lpips": 0.2}
    # Same settings (another order, another launcher): the finished metrics come back.
    again = [*reversed(overrides), "launcher=local_gpus", "job_devices.pool=[0,1]"]
    assert begin_job(run, again, resume=True) == {"val/psnr": 20.5, "val/lpips": 0.2}
    with pytest.raises(JobConflictError, match=r"there: \['model.generator.attention.ksize=3'\]"):
        begin_job(run, ["+sweep=attention", "model.generator.attention.ksize=5"], resume=True)
    # Without resume a run starts afresh.
    assert begin_job(run, overrides, resume=False) is None
    assert read_record(run)["status"] == "running"


def test_results_tables_list_every_run_and_every_setting_best_first(tmp_path) -> None:
    settings = {"0": ("3", 20.0), "1": ("5", 22.5), "2": ("7", None)}
    for job, (ksize, psnr) in settings.items():
        begin_job(tmp_path / job, ["+sweep=attention", f"model.generator.attention.ksize={ksize}"], True)
        if psnr is not None:
            end_job(tmp_path / job, {"val/psnr": psnr, "val/lpips": 0.5 - psnr / 100})
    rows = collect_results(tmp_path)
    assert [r["job"] for r in rows] == ["0", "1", "2"]
    assert [r["model.generator.attention.ksize"] for r in rows] == ["3", "5", "7"]
    assert "+sweep" not in rows[0]  # the same for every run: not a swept setting
    csv_path, md_path = write_results_table(tmp_path, rows, "val/psnr")
    with (tmp_path / "results_jobs.csv").open() as f:
        table = list(csv.DictReader(f))
    assert [(r["job"], r["status"]) for r in table] == [
        ("1", "finished"),
        ("0", "finished"),
        ("2", "running"),
    ]
    assert float(table[0]["val/psnr"]) == 22.5
    assert list(table[0])[:5] == ["job", "status", "model.generator.attention.ksize", "seed", "val/psnr"]
    jobs_md = (tmp_path / "results_jobs.md").read_text()
    assert "2 of 3 runs finished; sorted by val/psnr (higher is better)" in jobs_md
    # These records were written by hand, without a seed override or a run config: no seed.
    assert jobs_md.index("| 1 | finished | 5 |  | 22.5") < jobs_md.index("| 0 | finished | 3 |  | 20")
    with csv_path.open() as f:
        per_setting = list(csv.DictReader(f))
    assert [(r["model.generator.attention.ksize"], r["n"]) for r in per_setting] == [
        ("5", "1"),
        ("3", "1"),
        ("7", "0"),
    ]
    assert float(per_setting[0]["val/psnr_mean"]) == 22.5 and per_setting[0]["val/psnr_ci_low"] == "nan"
    md = md_path.read_text()
    assert "One run per setting: no interval and no verdict" in md
    assert "| 1 | 5 | 1 | 22.5 | 2.5 | n=1: no interval |" in md
    assert "| 3 | 7 | 0 |  |  | no finished run |" in md
    # Lower is better for LPIPS: the same runs in the same order.
    write_results_table(tmp_path, rows, "val/lpips")
    with (tmp_path / "results_jobs.csv").open() as f:
        assert [r["job"] for r in csv.DictReader(f)] == ["1", "0", "2"]


def test_metric_directions() -> None:
    assert higher_is_better("val/psnr") and higher_is_better("test/ssim")
    assert not higher_is_better("val/lpips") and not higher_is_better("val/l1_hole")
    assert optimization_direction("val/psnr") == "maximize"
    assert optimization_direction("val/lpips") == "minimize"
    with pytest.raises(ValueError, match="optimized_metric"):
        optimization_direction(None)


def test_sweep_table_cli_rebuilds_a_table(tmp_path) -> None:
    begin_job(tmp_path / "0", ["model.optimizer.lr=0.0001"], True)
    end_job(tmp_path / "0", {"val/psnr": 18.0})
    begin_job(tmp_path / "1", ["model.optimizer.lr=0.0002"], True)
    end_job(tmp_path / "1", {"val/psnr": 19.0})
    result = call_cli("deepfill-sweep-table", str(tmp_path), "--metric", "val/psnr", "--plot", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "| 1 | 0.0002 | 1 | 19 | 1 | n=1: no interval |" in result.stdout
    assert "| 2 | 0.0001 | 1 | 18 |  | reference |" in result.stdout
    from PIL import Image

    with Image.open(tmp_path / "results.png") as picture:
        assert picture.size[0] > 300 and picture.size[1] > 100
    empty = tmp_path / "empty"
    empty.mkdir()
    result = call_cli("deepfill-sweep-table", str(empty), cwd=tmp_path)
    assert result.returncode == 2
    assert "holds no job.json" in result.stderr.strip().splitlines()[-1]


# --- the sweep presets and launchers compose --------------------------------------------------


@pytest.mark.parametrize("name", [n for n in options("sweep")])
def test_every_sweep_preset_composes_and_its_values_are_valid(name, tmp_path) -> None:
    from deepfill.utils.validation import validate_config

    overrides = [f"+sweep={name}"]
    cfg = compose_cfg(overrides, tmp_path)
    assert cfg.resume is True
    assert cfg.sweep_name == name
    assert cfg.hydra.sweep.dir.endswith(f"sweeps/{name}")
    assert cfg.group == cfg.sweep_name == cfg.logger.wandb.group  # one W&B group per sweep
    assert cfg.logger.wandb.name == f"{name}-0"
    params = dict(cfg.hydra.sweeper.get("params") or {})
    # Every multirun sweeps the seed: seed, seed+1, ... for the preset's replicates.
    seeds = ",".join(str(cfg.seed + i) for i in range(cfg.replicates))
    assert str(params.pop("seed")) == seeds
    if name == "custom":
        assert not params
        return
    parser = OverridesParser.create()
    for key, value in params.items():
        (override,) = parser.parse_overrides([f"{key}={value}"])
        assert override.is_sweep_override(), key
        if name.startswith("optuna"):
            continue
        values = list(override.sweep_string_iterator())
        assert len(values) >= 2, key
        for value in values:  # every grid point is a valid configuration
            validate_config(compose_cfg([f"{key}={value}"], tmp_path))
    if name == "dilation":
        (override,) = parser.parse_overrides(
            [f"model.generator.dilations={params['model.generator.dilations']}"]
        )
        assert next(iter(override.sweep_iterator())) == [2, 4, 8, 16]


def test_optuna_preset_optimises_the_metric_in_its_direction(tmp_path) -> None:
    cfg = compose_cfg(["+sweep=optuna_loss_weights", f"paths.log_dir={tmp_path}"], tmp_path)
    sweeper = cfg.hydra.sweeper
    assert "OptunaSweeper" in sweeper._target_
    assert sweeper.direction == "minimize"  # val/lpips
    assert sweeper.storage == f"sqlite:///{tmp_path}/sweeps/optuna_loss_weights/optuna.db"
    assert sweeper.n_jobs == 1
    assert set(sweeper.params) == {
        "seed",
        "model.loss.l1",
        "model.loss.ae",
        "model.loss.gan",
        "model.loss.gp",
    }
    assert str(sweeper.params.seed) == str(cfg.seed)  # one seed for every trial: no replicates
    cfg = compose_cfg(["+sweep=optuna_loss_weights", "optimized_metric=val/psnr"], tmp_path)
    assert cfg.hydra.sweeper.direction == "maximize"


def test_launchers_compose(tmp_path) -> None:
    cfg = compose_cfg(["launcher=local_gpus", "job_devices.pool=[3,5]"], tmp_path)
    assert "JoblibLauncher" in cfg.hydra.launcher._target_
    assert cfg.hydra.launcher.n_jobs == 2
    assert cfg.trainer.accelerator == "gpu" and cfg.trainer.devices == 1
    cfg = compose_cfg(["launcher=local_gpus"], tmp_path)
    if not visible_gpus():
        with pytest.raises(Exception, match="no GPU found"):
            OmegaConf.select(cfg, "hydra.launcher.n_jobs", throw_on_resolution_failure=True)
    cfg = compose_cfg(
        ["launcher=slurm", "hydra.launcher.gpus_per_node=8", "hydra.launcher.nodes=2"], tmp_path
    )
    assert "SlurmLauncher" in cfg.hydra.launcher._target_
    # DDP across every GPU of every node the job gets: one task per GPU.
    assert (cfg.trainer.devices, cfg.trainer.num_nodes) == (8, 2)
    assert cfg.trainer.strategy.startswith("ddp")
    assert cfg.trainer.plugins[0].auto_requeue is False
    assert cfg.resume is True
    cfg = compose_cfg(["launcher=submitit_local"], tmp_path)
    assert "LocalLauncher" in cfg.hydra.launcher._target_


# --- real multiruns ----------------------------------------------------------------------------


def _job_records(sweep: Path) -> dict[str, dict]:
    return {p.parent.name: json.loads(p.read_text()) for p in sweep.glob("*/job.json")}


def test_2x2_sweep_runs_two_jobs_at_once_on_distinct_devices_writes_the_table_and_resumes(tmp_path) -> None:
    args = [
        "-m",
        "+sweep=custom",
        "sweep_name=grid",
        "model.loss.l1=1.2,2.4",
        "model.optimizer.lr=0.0001,0.001",
        "launcher=local_gpus",
        "job_devices.pool=[0,1]",
        f"job_devices.lock_dir={tmp_path / 'locks'}",
        f"paths.log_dir={tmp_path}",
        "optimized_metric=val/psnr",
        *JOB,
    ]
    result = run_cli("deepfill-train", *args, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    sweep = tmp_path / "sweeps" / "grid"
    with (sweep / "results_jobs.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 4
    assert {(r["model.loss.l1"], r["model.optimizer.lr"]) for r in rows} == {
        ("1.2", "0.0001"),
        ("1.2", "0.001"),
        ("2.4", "0.0001"),
        ("2.4", "0.001"),
    }
    for row in rows:
        assert row["status"] == "finished"
        assert 0 < float(row["val/psnr"]) < 100 and 0 <= float(row["val/ssim"]) <= 1
    psnr = [float(r["val/psnr"]) for r in rows]
    assert psnr == sorted(psnr, reverse=True)
    assert len(set(psnr)) > 1  # the settings reached the runs
    assert "4 of 4 runs finished" in (sweep / "results_jobs.md").read_text()
    assert "4 setting(s), 4 of 4 runs finished" in (sweep / "results.md").read_text()
    # Each worker process holds one device of the pool for all its jobs, no two workers the same
    # one, and jobs on one device never overlap in time. (Which worker takes which job, and
    # whether the second worker is up before the first finishes everything, is up to joblib.)
    records = _job_records(sweep)
    device_of = {r["pid"]: r["devices"] for r in records.values()}
    assert all(device_of[r["pid"]] == r["devices"] and r["devices"] in ("0", "1") for r in records.values())
    assert len(set(device_of.values())) == len(device_of)
    for device in set(device_of.values()):
        spans = sorted((r["started"], r["ended"]) for r in records.values() if r["devices"] == device)
        assert all(a[1] <= b[0] for a, b in itertools.pairwise(spans)), spans

    # Rerun after an interruption: job 3 was cut short (record 'running', checkpoint written).
    interrupted = records["3"] | {"status": "running"}
    (sweep / "3" / "job.json").write_text(json.dumps(interrupted))
    time.sleep(0.01)
    result = run_cli("deepfill-train", *args, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    again = _job_records(sweep)
    for job in ("0", "1", "2"):  # finished: skipped, records untouched
        assert again[job]["started"] == records[job]["started"]
    assert again["3"]["started"] > records["3"]["started"]
    assert again["3"]["attempts"] == 2 and again["3"]["status"] == "finished"
    assert again["3"]["metrics"]["val/psnr"] > 0
    assert f"resuming from {sweep / '3' / 'checkpoints' / 'last.ckpt'}" in result.stdout


def test_submitit_local_launcher_runs_a_job(tmp_path) -> None:
    args = ["-m", "+sweep=custom", "sweep_name=sub", "launcher=submitit_local"]
    args += [f"paths.log_dir={tmp_path}", "hydra.launcher.timeout_min=10", *JOB]
    result = run_cli("deepfill-train", *args, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    sweep = tmp_path / "sweeps" / "sub"
    record = read_record(sweep / "0")
    assert record["status"] == "finished"
    assert record["pid"] != 0 and float(record["metrics"]["val/psnr"]) > 0
    assert list((sweep / ".submitit").glob("*/*_result.pkl")), "not run through submitit"
    assert (sweep / "results.csv").read_text().count("\n") == 2


def test_optuna_search_runs_trials_and_continues_its_study(tmp_path) -> None:
    args = ["-m", "+sweep=optuna_loss_weights", "hydra.sweeper.n_trials=2", "optimized_metric=val/psnr"]
    args += [f"paths.log_dir={tmp_path}", *JOB]
    result = call_cli("deepfill-train", *args, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    sweep = tmp_path / "sweeps" / "optuna_loss_weights"
    best = OmegaConf.load(sweep / "optimization_results.yaml")
    assert set(best.best_params) == {"model.loss.l1", "model.loss.ae", "model.loss.gan", "model.loss.gp"}
    rows = collect_results(sweep)
    assert len(rows) == 2 and all(r["status"] == "finished" for r in rows)
    assert best.best_value == pytest.approx(max(r["val/psnr"] for r in rows))
    # The study is stored: a second invocation adds its trials to the same study and table.
    time.sleep(1.1)  # trial folders are named by the start time (seconds)
    result = call_cli("deepfill-train", *args, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert len(collect_results(sweep)) == 4
    with (sweep / "results_jobs.csv").open() as f:
        assert len(list(csv.DictReader(f))) == 4


def test_an_optuna_metric_that_is_not_computed_stops_before_training(tmp_path) -> None:
    args = ["-m", "+sweep=optuna_loss_weights", "hydra.sweeper.n_trials=1", f"paths.log_dir={tmp_path}"]
    result = call_cli("deepfill-train", *args, "model.lpips=false", *JOB, cwd=tmp_path)
    assert result.returncode == 2
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("deepfill-train: error: optimized_metric: 'val/lpips' is not computed")
    record = read_record(next((tmp_path / "sweeps" / "optuna_loss_weights").glob("*_0")))
    assert record["status"] == "failed" and "not computed" in record["error"]
    assert not list(tmp_path.rglob("*.ckpt"))


def test_a_table_ranks_by_psnr_when_its_metric_was_not_computed(tmp_path) -> None:
    for job, psnr in (("0", 18.0), ("1", 21.0)):
        begin_job(tmp_path / job, [f"model.optimizer.lr={job}"], True)
        end_job(tmp_path / job, {"val/psnr": psnr, "val/ssim": 0.5})
    _, md_path = write_results_table(tmp_path, collect_results(tmp_path), "val/lpips")
    md = (tmp_path / "results_jobs.md").read_text()
    assert "val/lpips was not computed; sorted by val/psnr (higher is better)" in md
    assert md.index("| 1 | finished") < md.index("| 0 | finished")
    assert "val/lpips was not computed; ranked by the mean val/psnr (higher is better)" in md_path.read_text()


def test_rows_without_a_metric_keep_numeric_job_order(tmp_path) -> None:
    for job in ("10", "9", "20261123-221000_0"):
        begin_job(tmp_path / job, [f"model.optimizer.lr={job}"], True)
    rows = collect_results(tmp_path)
    write_results_table(tmp_path, rows, None)
    with (tmp_path / "results_jobs.csv").open() as f:
        assert [r["job"] for r in csv.DictReader(f)] == ["9", "10", "20261123-221000_0"]


_FRESH_BUFFER = """
import resource, statistics, torch
from deepfill.utils.cpu import large_blocks_returned, reuse_freed_memory

def faults_of_a_fresh_64_mib_buffer():
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    torch.ones(16 << 20)  # 64 MiB, written, then freed
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
"""

_FAULTS = (
    _FRESH_BUFFER
    + """
default = statistics.median(faults_of_a_fresh_64_mib_buffer() for _ in range(3))
took = reuse_freed_memory()
# The first reallocations grow the heap: while small long-lived objects are still being created
# (lazy initialisation), one lands above the large block and keeps it from merging with the
# free top. How many depends on the environment's layout (2 to 9 of them, seen over a hundred
# environments); then every reallocation reuses the freed block. A long run sees that steady state.
for _ in range(16):
    faults_of_a_fresh_64_mib_buffer()
reused = statistics.median(faults_of_a_fresh_64_mib_buffer() for _ in range(7))
print(default, took, reused)
"""
)

_RETURNED = (
    _FRESH_BUFFER
    + """
with large_blocks_returned():  # before the setting: nothing to undo, blocks are mapped anyway
    plain = statistics.median(faults_of_a_fresh_64_mib_buffer() for _ in range(3))
reuse_freed_memory()
for _ in range(16):  # (the first reallocations grow the heap, see above)
    faults_of_a_fresh_64_mib_buffer()
kept = statistics.median(faults_of_a_fresh_64_mib_buffer() for _ in range(7))
with large_blocks_returned():
    inside = statistics.median(faults_of_a_fresh_64_mib_buffer() for _ in range(3))
for _ in range(4):  # the heap's free pages were released on entry: faulted in once more
    faults_of_a_fresh_64_mib_buffer()
after = statistics.median(faults_of_a_fresh_64_mib_buffer() for _ in range(7))
print(plain, kept, inside, after)
"""
)


@RunIf(linux=True)  # glibc's malloc
def test_reuse_freed_memory_stops_large_buffers_page_faulting_on_every_allocation() -> None:
    """By default a large freed block goes back to the system and the next one page-faults
    all its 16384 pages again; with the commands' allocator setting it is reused."""
    out = subprocess.run([sys.executable, "-c", _FAULTS], capture_output=True, text=True, check=True)
    default, took, reused = out.stdout.split()
    assert took == "True"
    assert float(default) > 10_000
    assert float(reused) < 1_000


@RunIf(linux=True)  # glibc's malloc
def test_large_blocks_returned_maps_large_blocks_again_only_inside() -> None:
    """Inside the context a large block gets its own mapping and goes back to the system when
    freed (every allocation page-faults anew); outside, freed memory is reused as before."""
    out = subprocess.run([sys.executable, "-c", _RETURNED], capture_output=True, text=True, check=True)
    plain, kept, inside, after = map(float, out.stdout.split())
    assert plain > 10_000
    assert kept < 1_000
    assert inside > 10_000
    assert after < 1_000
