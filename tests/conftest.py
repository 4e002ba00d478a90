"""Shared fixtures."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import importlib.metadata
import os
import signal
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
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
from deepfill.models import GlobalCritic, InpaintGenerator, LocalCritic
from deepfill.official.tf_checkpoint import _tensorflow_installed
from deepfill.training.module import DeepFillModule
from deepfill.utils.config import CONFIG_DIR

REPO = Path(__file__).resolve().parents[1]

# Start the CPU's worker threads now, with this process's default floating-point settings.
# Commands run in this process (call_cli) flush subnormal floats to zero as they start, which
# sets the calling thread's flags and those of threads created after it; worker threads started
# then would keep flushing for the rest of the test session, and the tests that follow would
# compute on another arithmetic than when run alone.
torch.ones(1 << 22).add_(1.0)


def _goldens_dir() -> Path:
    env = os.environ.get("DEEPFILL_GOLDENS")
    if env:
        return Path(env)
    # The official goldens live in the shared folder beside the checkout.
    return REPO.parent / "shared" / "goldens" / "official_v1"


GOLDENS = _goldens_dir()


@pytest.fixture(autouse=True)
def _deterministic() -> None:
    torch.manual_seed(0)


@pytest.fixture(autouse=True)
def _own_wandb_service() -> None:
    """Commands started by a test get a W&B service of their own, as from a shell. A test that
    used W&B in this process leaves its service's address in WANDB_SERVICE, which subprocesses
    inherit: two commands in a row then share that service, and a resumed run can find its own
    run id still held by the previous command ("run ID ... is in use")."""
    os.environ.pop("WANDB_SERVICE", None)


@pytest.fixture(scope="session")
def goldens() -> Path:
    if not (GOLDENS / "gen_256.npz").exists():
        pytest.fail(
            f"official goldens not found at {GOLDENS}; set DEEPFILL_GOLDENS to the official_v1 folder"
        )
    return GOLDENS


def skip_without_tensorflow() -> None:
    """Skip unless the ``tf`` extra is installed, without importing TensorFlow into the test
    process: TensorFlow and Triton (which torch imports on demand) each bundle LLVM, and the
    second one loaded into a process crashes it. TensorFlow only ever runs in subprocesses."""
    if not _tensorflow_installed():
        pytest.skip("the tf extra is installed by `make install`")


def start_group(args: list[str], cwd: Path, merge_output: bool = False) -> subprocess.Popen:
    """Start a command in a session of its own, so that a hang can be ended together with every
    process it started (the DDP ranks)."""
    return subprocess.Popen(
        args,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT if merge_output else subprocess.PIPE,
        text=True,
        cwd=cwd,
        start_new_session=True,
    )


def finish_group(process: subprocess.Popen, timeout: float, hang: str) -> tuple[str, str | None]:
    """Its (stdout, stderr) once it ends; after ``timeout`` seconds every process of its session
    is killed and the test fails with ``hang``."""
    try:
        return process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        raise AssertionError(hang) from None


def run_cli(name: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    """Run one of the installed console scripts (deepfill-train, -eval, ...) and capture its output."""
    script = Path(sys.executable).parent / name
    return subprocess.run(
        [str(script), *args], capture_output=True, text=True, cwd=cwd, check=False, timeout=300
    )


@dataclasses.dataclass
class CommandResult:
    """What a command left: its exit status and its output (as ``subprocess.CompletedProcess``)."""

    args: list[str]
    returncode: int
    stdout: str
    stderr: str


def _entry_point(name: str):
    (entry,) = (e for e in importlib.metadata.entry_points(group="console_scripts") if e.name == name)
    return entry.load()


@contextlib.contextmanager
def _process_state():
    """Everything a command changes in its process, restored after it: the environment, the
    working directory, sys.argv, the root logger, warning filters, the CPU settings of
    configure_cpu (subnormals flushed), torch's threads, default dtype, float32 matmul precision
    and deterministic mode, Hydra's global state."""
    import logging

    environ, cwd, argv = dict(os.environ), os.getcwd(), list(sys.argv)
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    threads, dtype = torch.get_num_threads(), torch.get_default_dtype()
    flushing = torch.tensor(1e-40, dtype=torch.float32).mul(1.0).item() == 0.0
    # float32_matmul_precision (training sets "high") changes CPU matmuls on some machines.
    matmul, deterministic = torch.get_float32_matmul_precision(), torch.are_deterministic_algorithms_enabled()
    try:
        with warnings.catch_warnings():
            yield
    finally:
        for handler in root.handlers:
            if handler not in handlers:
                handler.close()
        root.handlers[:], root.level = handlers, level
        os.environ.clear()
        os.environ.update(environ)
        os.chdir(cwd)
        sys.argv[:] = argv
        torch.set_flush_denormal(flushing)
        torch.set_num_threads(threads)
        torch.set_default_dtype(dtype)
        torch.set_float32_matmul_precision(matmul)
        torch.use_deterministic_algorithms(deterministic)
        GlobalHydra.instance().clear()


def _print_warning(message, category, filename, lineno, file=None, line=None) -> None:
    # Python's own way of showing a warning (the command's formatwarning), to the captured
    # stderr: the test runner records warnings instead of printing them.
    sys.stderr.write(warnings.formatwarning(message, category, filename, lineno, line))


def call_cli(name: str, *args: str, cwd: Path) -> CommandResult:
    """Run a console command (``deepfill-train``, ``-eval``, ...) in this process, as its console
    script would: its entry point with ``sys.argv`` set, in ``cwd``, output captured, the exit
    status taken from ``SystemExit`` (1 and the traceback for an exception that escapes, as
    Python's own handler prints it). For tests of the command's logic, which then share this
    process's imports instead of paying for them in a new process each; what only a process
    shows (signals, console scripts, exit codes of the interpreter) is tested with
    :func:`run_cli`."""
    import io
    import logging
    import traceback

    main = _entry_point(name)
    out, err = io.StringIO(), io.StringIO()
    # Streams other libraries bound at import (Lightning's handler) write into the capture too.
    moved = []
    for logger in [logging.getLogger(), *logging.Logger.manager.loggerDict.values()]:
        for handler in getattr(logger, "handlers", []):
            if isinstance(handler, logging.StreamHandler) and handler.stream in (sys.stdout, sys.stderr):
                moved.append((handler, handler.stream))
                handler.setStream(out if handler.stream is sys.stdout else err)
    code = 0
    with _process_state(), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        # Warnings printed as a command prints them (the test runner records them otherwise).
        warnings.showwarning = _print_warning
        warnings.simplefilter("default")
        os.chdir(cwd)
        sys.argv[:] = [name, *args]
        try:
            result = main()
            code = result if isinstance(result, int) else 0
        except SystemExit as stop:
            code = stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 1)
            if stop.code is not None and not isinstance(stop.code, int):
                print(stop.code, file=sys.stderr)
        except Exception:
            traceback.print_exc()
            code = 1
    for handler, stream in moved:
        handler.setStream(stream)
    return CommandResult([name, *args], code, out.getvalue(), err.getvalue())


# ---------------------------------------------------------------- a tiny model, in code
SIZE = 64


def adam(lr: float) -> functools.partial:
    return functools.partial(torch.optim.Adam, lr=lr, betas=(0.5, 0.9))


def make_module(size: int = SIZE, cnum: int = 8, **kwargs) -> DeepFillModule:
    torch.manual_seed(0)
    kwargs.setdefault("lpips_pretrained", False)
    kwargs.setdefault("log_images_every_n_steps", 0)
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


# ---------------------------------------------------------------- a tiny model, through the configs
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
