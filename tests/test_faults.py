"""Faults a long run meets: SIGKILL at any moment (the OOM killer, a lost node), a full disk, a
checkpoint that no longer loads. Nothing already written is lost, and the same command with
``resume=true`` ends with the uninterrupted run's weights."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers.tiny import TINY

TRAIN = str(Path(sys.executable).parent / "deepfill-train")

# The quickstart recipe, tiny: 4 batches an epoch, every phase, last.ckpt after every batch.
QUICK = [
    "experiment=quickstart",
    *TINY,
    "data.train.length=8",
    "data.val.length=2",
    "model.pretrain_coarse_steps=2",
    "model.reconstruction_steps=2",
    "trainer.val_check_interval=4",
    "callbacks.last.every_n_train_steps=1",
    "baseline_comparison=null",
    "resume=true",
]


def _train(folder: Path, *extra: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [TRAIN, *QUICK, f"hydra.run.dir={folder}", *extra],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """``straight(max_epochs)``: the folder of an uninterrupted run of ``QUICK`` for that many
    epochs, run once per module: the tests compare their interrupted runs with it."""
    folders: dict[int, Path] = {}

    def run(max_epochs: int) -> Path:
        if max_epochs not in folders:
            folder = tmp_path_factory.mktemp(f"straight{max_epochs}") / "run"
            result = _train(folder, f"trainer.max_epochs={max_epochs}")
            assert result.returncode == 0, result.stderr[-2000:]
            folders[max_epochs] = folder
        return folders[max_epochs]

    return run


def _status(folder: Path) -> str | None:
    try:
        return json.loads((folder / "job.json").read_text()).get("status")
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    return torch.load(folder / "checkpoints" / "last.ckpt", weights_only=False, map_location="cpu")[
        "state_dict"
    ]


def _kill_at_random_moments(
    folder: Path, extra: list[str], kills: int, rng: np.random.Generator, duration: float
) -> int:
    """Start the run, SIGKILL it at a random moment once it is under way (within the first half
    of ``duration``, an uninterrupted run's time from its record to its end), start it again with
    the same command; ``kills`` times, then let it finish. Returns how many kills landed."""
    landed = 0
    for _ in range(kills):
        process = subprocess.Popen(
            [TRAIN, *QUICK, f"hydra.run.dir={folder}", *extra],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        # Under way: its job record says running (the imports and the set-up are behind it).
        deadline = time.monotonic() + 120
        while _status(folder) != "running" and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(float(rng.uniform(0.0, 0.5 * duration)))
        if process.poll() is None:
            process.send_signal(signal.SIGKILL)
            landed += 1
        process.wait(timeout=60)
    return landed


@pytest.mark.parametrize(
    ("seed", "kills"),
    [(0, 3), pytest.param(1, 8, marks=pytest.mark.slow), pytest.param(2, 8, marks=pytest.mark.slow)],
)
def test_sigkill_at_random_moments_then_the_same_command_ends_with_the_uninterrupted_weights(
    seed, kills, tmp_path, straight
) -> None:
    extra = ["trainer.max_epochs=5"]
    uninterrupted = straight(5)
    record = json.loads((uninterrupted / "job.json").read_text())
    duration = record["ended"] - record["started"]
    folder = tmp_path / "killed"
    landed = _kill_at_random_moments(folder, extra, kills, np.random.default_rng(seed), duration)
    assert landed >= 2  # most kills must land before the run ends by itself
    assert _status(folder) in ("running", "finished")
    final = _train(folder, *extra)
    assert final.returncode == 0, final.stderr[-2000:]
    assert _status(folder) == "finished"
    record = json.loads((folder / "job.json").read_text())
    assert record["attempts"] >= 2
    expected, got = _weights(uninterrupted), _weights(folder)
    for name, value in expected.items():
        assert torch.equal(value, got[name]), name
    # No temporaries of interrupted checkpoint writes are left behind.
    assert not [p.name for p in (folder / "checkpoints").iterdir() if p.name.endswith(".tmp")]


# ---------------------------------------------------------------------------- a full disk
@pytest.fixture
def small_disk(tmp_path):
    """A 16 MiB tmpfs (CI runs as root); ``fill(free)`` leaves ``free`` bytes, ``empty()`` frees
    them again. Skipped only where mounting is refused."""
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(mount)], capture_output=True, check=False
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip() or done.returncode}")

    class Disk:
        path = mount
        filler = mount / ".filler"

        def fill(self, free: int) -> None:
            self.filler.unlink(missing_ok=True)
            available = os.statvfs(mount).f_bavail * os.statvfs(mount).f_frsize
            with self.filler.open("wb") as file:
                file.truncate(0)
                os.posix_fallocate(file.fileno(), 0, max(available - free, 0))

        def empty(self) -> None:
            self.filler.unlink(missing_ok=True)

    yield Disk()
    subprocess.run(["umount", "-l", str(mount)], check=False)


def _no_temporaries(folder: Path) -> list[str]:
    return [str(p) for p in folder.rglob("*.tmp")]


def _assert_disk_full_line(result: subprocess.CompletedProcess, command: str, disk: Path) -> None:
    err = result.stderr.strip().splitlines()
    assert result.returncode == 74, result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    assert err[-1].startswith(f"{command}: error: {disk}/"), err[-1]
    assert "no space left on device" in err[-1]
    assert sum(line.startswith(f"{command}: error:") for line in err) == 1


@pytest.mark.parametrize(
    "free_mb",
    # 7 MB fills up during training; 1.5 MB and 11.5 MB at the start and near the end (slow).
    [pytest.param(7.0, id="7.0MB")]
    + [pytest.param(f, id=f"{f}MB", marks=pytest.mark.slow) for f in (1.5, 11.5)],
)
def test_a_full_disk_stops_training_in_one_line_and_the_run_resumes_once_space_is_freed(
    free_mb, small_disk, straight
) -> None:
    """The run folder fills up part-way (at a checkpoint, a metrics flush, an image grid, the
    job record, Hydra's own config files: where depends on the space left). The command ends in
    one line naming the file; last.ckpt, if any, still loads; no temporary is left; after the
    space is freed the same command finishes with the uninterrupted run's weights."""
    extra = ["trainer.max_epochs=3"]
    folder = small_disk.path / "run"
    small_disk.fill(int(free_mb * 2**20))
    full = _train(folder, *extra)
    _assert_disk_full_line(full, "deepfill-train", small_disk.path)
    assert _no_temporaries(small_disk.path) == []
    last = folder / "checkpoints" / "last.ckpt"
    if last.exists():
        torch.load(last, weights_only=False)
    small_disk.empty()
    final = _train(folder, *extra)
    assert final.returncode == 0, final.stderr[-2000:]
    expected, got = _weights(straight(3)), _weights(folder)
    for name, value in expected.items():
        assert torch.equal(value, got[name]), name
    rows = (folder / "csv" / "metrics.csv").read_text().splitlines()
    assert rows[0].startswith(("epoch", "step", "train", "val")) and len(rows) > 3


def test_a_full_disk_stops_inpainting_and_converting_in_one_line_with_only_whole_files(
    small_disk, tmp_path
) -> None:
    from PIL import Image

    from helpers.commands import run_cli
    from helpers.paths import GOLDENS

    photos = tmp_path / "photos"
    photos.mkdir()
    rng = np.random.default_rng(0)
    for i in range(6):
        image = rng.integers(0, 255, (256, 320, 4), dtype=np.uint8)
        image[..., 3] = 255
        image[64:160, 64:200, 3] = 0  # the hole
        Image.fromarray(image).save(photos / f"{i}.png")
    torch.save(
        {"state_dict": __import__("deepfill").InpaintGenerator(cnum=8).state_dict()}, tmp_path / "w.pt"
    )
    small_disk.fill(400_000)  # room for a few of the six results
    out = small_disk.path / "filled"
    args = [
        f"weights={tmp_path / 'w.pt'}",
        f"input={photos}",
        f"output={out}",
        f"hydra.run.dir={tmp_path}/run",
    ]
    result = run_cli("deepfill-inpaint", *args, cwd=tmp_path)
    _assert_disk_full_line(result, "deepfill-inpaint", small_disk.path)
    written = sorted(out.glob("*.png"))
    assert 0 < len(written) < 6
    for path in written:
        with Image.open(path) as image:
            image.load()  # whole, not truncated
    assert _no_temporaries(small_disk.path) == []
    small_disk.empty()
    assert run_cli("deepfill-inpaint", *args, cwd=tmp_path).returncode == 0
    assert len(list(out.glob("*.png"))) == 6

    # Converted official weights: an earlier output stays as it was.
    target = small_disk.path / "official.pt"
    target.write_bytes(b"earlier")
    small_disk.fill(2_000_000)
    result = run_cli("deepfill-convert", str(GOLDENS / "gen_256.npz"), str(target), cwd=tmp_path)
    _assert_disk_full_line(result, "deepfill-convert", small_disk.path)
    assert target.read_bytes() == b"earlier"
    assert _no_temporaries(small_disk.path) == []


def test_sigkill_during_a_checkpoint_write_keeps_the_previous_checkpoint(tmp_path) -> None:
    """Killed while last.ckpt is being replaced: the previous one still loads, and the killed
    write's temporary (no cleanup runs on SIGKILL) is removed by the next resume."""
    from deepfill.utils.files import remove_stale_temporaries

    target = tmp_path / "run" / "checkpoints" / "last.ckpt"
    program = (
        "import sys, torch\n"
        "from deepfill.training.callbacks import AtomicCheckpointIO\n"
        "io = AtomicCheckpointIO()\n"
        "io.save_checkpoint({'step': 1, 'w': torch.ones(4)}, sys.argv[1])\n"
        "print('saved', flush=True)\n"
        "io.save_checkpoint({'step': 2, 'w': torch.randn(40_000_000)}, sys.argv[1])\n"
    )
    process = subprocess.Popen(
        [sys.executable, "-c", program, str(target)], stdout=subprocess.PIPE, text=True
    )
    assert process.stdout.readline().strip() == "saved"
    deadline = time.monotonic() + 60
    partial: list[Path] = []
    while not partial and time.monotonic() < deadline:
        for path in target.parent.glob(".last.ckpt.*.tmp"):
            with contextlib.suppress(FileNotFoundError):  # renamed between listing and looking
                if path.stat().st_size > 0:
                    partial.append(path)
        time.sleep(0.001)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    assert partial, "the write was not caught under way"
    assert torch.load(target, weights_only=False)["step"] == 1
    assert remove_stale_temporaries(tmp_path / "run") == partial
    assert sorted(p.name for p in target.parent.iterdir()) == ["last.ckpt"]


def test_a_corrupt_last_checkpoint_falls_back_to_the_newest_that_loads(tmp_path, straight) -> None:
    folder = tmp_path / "run"
    assert _train(folder, "trainer.max_epochs=2").returncode == 0
    last = folder / "checkpoints" / "last.ckpt"
    best = sorted((folder / "checkpoints").glob("best-*.ckpt"))
    assert best
    last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])  # truncated
    result = _train(folder, "trainer.max_epochs=3")
    assert result.returncode == 0, result.stderr[-2000:]
    warning = f"warning: {last} is not a readable PyTorch checkpoint: truncated, or another format"
    assert warning in result.stdout
    assert f"resuming from {best[-1]}, the newest that loads" in result.stdout
    expected, got = _weights(straight(3)), _weights(folder)
    for name, value in expected.items():
        assert torch.equal(value, got[name]), name

    # Nothing loads: one line saying what to do, nothing started over silently.
    for path in (folder / "checkpoints").glob("*.ckpt"):
        path.write_bytes(b"PK\x03\x04" + bytes(60))
    result = _train(folder, "trainer.max_epochs=4")
    assert result.returncode == 2, result.stderr[-2000:]
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith(f"deepfill-train: error: resume=true: {last} is not a readable PyTorch checkpoint")
    assert "no other checkpoint" in line and "Traceback" not in result.stderr


def test_a_sweep_killed_mid_job_is_finished_by_rerunning_it(tmp_path) -> None:
    args = [
        TRAIN,
        "-m",
        "+sweep=custom",
        "sweep_name=killed",
        f"paths.log_dir={tmp_path}",
        "model.loss.l1=1.2,2.4",
        "optimized_metric=val/psnr",
        "trainer.max_epochs=4",
        *QUICK,
    ]
    sweep = tmp_path / "sweeps" / "killed"
    process = subprocess.Popen(
        args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    deadline = time.monotonic() + 120
    while _status(sweep / "1") != "running" and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    first = json.loads((sweep / "0" / "job.json").read_text())  # finished: its length is known
    time.sleep(float(np.random.default_rng(0).uniform(0.1, 0.4)) * (first["ended"] - first["started"]))
    os.killpg(process.pid, signal.SIGKILL)  # the sweep and its job, as a lost node would
    process.wait(timeout=60)
    assert _status(sweep / "0") == "finished" and _status(sweep / "1") == "running"
    result = subprocess.run(args, capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    records = {job: json.loads((sweep / job / "job.json").read_text()) for job in ("0", "1")}
    assert records["0"]["attempts"] == 1  # finished before: skipped
    assert records["1"]["attempts"] == 2 and records["1"]["status"] == "finished"
    assert "2 of 2 runs finished" in (sweep / "results.md").read_text()


def test_metrics_csv_keeps_the_rows_before_the_resumed_step_and_never_ends_in_half_a_row(
    tmp_path, monkeypatch
) -> None:
    import csv
    import errno

    from deepfill.training.loggers import CSVLogger
    from deepfill.utils.errors import NoSpaceError

    def rows() -> list[dict]:
        with (tmp_path / "csv" / "metrics.csv").open() as file:
            return list(csv.DictReader(file))

    first = CSVLogger(tmp_path, name="csv", version="")
    for step in range(10):
        first.log_metrics({"train/loss": float(step)}, step=step)
    first.save()
    # Killed after step 9, resumed from a checkpoint at step 6: steps 6-9 are trained again.
    resumed = CSVLogger(tmp_path, name="csv", version="")
    for step in range(6, 12):
        resumed.log_metrics({"train/loss": 100.0 + step, "val/psnr": 20.0}, step=step)
    resumed.save()
    assert [(r["step"], r["train/loss"]) for r in rows()] == [(str(s), f"{s}.0") for s in range(6)] + [
        (str(s), f"{100.0 + s}") for s in range(6, 12)
    ]
    assert rows()[0]["val/psnr"] == "" and rows()[-1]["val/psnr"] == "20.0"
    # An append that fails part-way (a full disk) is cut back: the file ends in a whole row.
    resumed.log_metrics({"train/loss": 1.0, "val/psnr": 21.0}, step=12)
    real_open = Path.open

    def failing_open(self, mode="r", *args, **kwargs):
        file = real_open(self, mode, *args, **kwargs)
        if mode == "a":
            file.write("12,1.0,2")  # half a row reaches the disk, then the disk is full
            file.flush()
            raise OSError(errno.ENOSPC, "No space left on device")
        return file

    monkeypatch.setattr(Path, "open", failing_open)
    with pytest.raises(NoSpaceError, match=r"metrics\.csv: no space left on device"):
        resumed.save()
    monkeypatch.undo()
    assert len(rows()) == 12 and rows()[-1]["step"] == "11"
    # A fresh run (from step 0) in the same folder replaces the old rows, as Lightning's does.
    fresh = CSVLogger(tmp_path, name="csv", version="")
    fresh.log_metrics({"train/loss": 5.0}, step=0)
    fresh.save()
    assert [r["train/loss"] for r in rows()] == ["5.0"]


def test_a_resumed_run_goes_on_logging_to_the_same_wandb_run(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("WANDB_MODE", "offline")
    folder = tmp_path / "run"
    for epochs in (1, 2):
        result = _train(folder, f"trainer.max_epochs={epochs}", "logger=wandb_csv")
        assert result.returncode == 0, result.stderr[-2000:]
    runs = sorted(p.name for p in (folder / "wandb").glob("offline-run-*"))
    assert len(runs) == 2
    assert len({name.rsplit("-", 1)[1] for name in runs}) == 1, runs  # one W&B run id, resumed
