"""Running the console commands from a test: in a process of their own (:func:`run_cli`,
:func:`start_group`) or in the test process (:func:`call_cli`)."""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.metadata
import os
import signal
import subprocess
import sys
import warnings
from pathlib import Path

import torch
from hydra.core.global_hydra import GlobalHydra


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
