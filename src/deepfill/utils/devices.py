"""Devices and the CPU runtime: one GPU per job for local parallel sweeps
(``launcher=local_gpus``), and the CPU settings every command starts with (:func:`configure_cpu`:
no subnormal floats, freed memory reused; :func:`cpu_native_bf16` for ``trainer=cpu_bf16``).

The joblib launcher runs N jobs at once in N worker processes and reuses each worker for
later jobs. A job cannot be steered to a device from outside, so each worker claims its own
device: the first time a job runs in a process (before anything touches CUDA), the process
takes an exclusive lock on a free device of the pool and sets ``CUDA_VISIBLE_DEVICES`` to
it. The lock is held for the life of the process, which also keeps later jobs of a reused
worker on the device its CUDA context is already bound to. Locks are ``flock``-based, so a
crashed worker frees its device. The same lock folder shared by two sweeps on one machine
keeps them off each other's devices too.

Only the standard library is imported here: this runs before torch initialises CUDA.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from deepfill.utils.errors import DeviceClaimError

__all__ = [
    "DeviceClaimError",
    "choose_free",
    "claim_devices",
    "claim_job_devices",
    "configure_cpu",
    "cpu_native_bf16",
    "flush_denormals",
    "reuse_freed_memory",
    "visible_gpus",
]


# Device id -> open lock file, for this process's whole life.
_HELD: dict[str, int] = {}


def flush_denormals() -> None:
    """Flush subnormal floats to zero in CPU arithmetic, for the whole process.

    Subnormals (e.g. ELU outputs and gradients far below zero) make x86 CPUs run convolutions
    several times slower: training steps 0.2 s -> 1 s (seen); inference of the trained
    quickstart model at 512² 1.77 s -> 1.04 s (1.71x, measured side by side). The results change
    only below 1e-38. Every command calls it; GPU arithmetic is unaffected."""
    import torch

    torch.set_flush_denormal(True)


# glibc mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4


def reuse_freed_memory() -> bool:
    """Let glibc's malloc keep freed memory for the next allocation; True when it took effect.

    By default every allocation over 32 MiB at most gets its own ``mmap`` and is unmapped when
    freed, so the next one of that size page-faults its way through fresh zero pages: on a CPU a
    model that allocates its large activations anew on every step spends a good part of its time
    in the kernel (contextual attention at 1024²: about a third; a training step's backward: a
    fifth; BENCHMARKS.md). Here large blocks come from the heap and freed memory is kept (up to
    2 GiB of free space at its top) for reuse. What jemalloc or tcmalloc would do, without
    preloading a library. The process gives memory back to the system only at exit, and its
    peak can be higher: while small long-lived objects are still being created, a freed large
    block that one of them follows cannot merge with the free top, and the next large block
    grows the heap (2048² inference: 4.75 GB, BENCHMARKS.md). Not glibc (macOS, musl): nothing
    happens."""
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    if not name or sys.platform != "linux":
        return False
    try:
        mallopt = ctypes.CDLL(name).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, 2**31 - 1))


def configure_cpu() -> bool:
    """What every command does first for CPU speed: :func:`flush_denormals` and
    :func:`reuse_freed_memory`. True when freed memory is now reused (the command then gives
    contextual attention larger CPU chunks: ``deepfill.models.set_cpu_chunk_bytes``)."""
    flush_denormals()
    return reuse_freed_memory()


def cpu_native_bf16(cpuinfo: str | None = None) -> bool:
    """True when this CPU computes bf16 in hardware (the ``avx512_bf16`` or ``amx_bf16`` flag
    of ``/proc/cpuinfo``); elsewhere oneDNN emulates bf16, slower than float32. ``cpuinfo``:
    that file's text (for tests)."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:  # not Linux: no way to tell, say no (bf16 stays opt-in there)
            return False
    for line in cpuinfo.splitlines():
        if line.startswith("flags"):
            flags = set(line.split(":", 1)[-1].split())
            return bool(flags & {"avx512_bf16", "amx_bf16"})
    return False


def visible_gpus(env: dict[str, str] | None = None, smi: Callable[[], str] | None = None) -> list[str]:
    """GPU ids this machine offers: ``CUDA_VISIBLE_DEVICES`` when set, else what ``nvidia-smi -L`` lists.

    Never initialises CUDA (torch would bind the process to the devices visible at that moment).
    """
    env = os.environ if env is None else env
    spec = env.get("CUDA_VISIBLE_DEVICES")
    if spec is not None:
        return [d.strip() for d in spec.split(",") if d.strip() and d.strip() != "-1"]
    if smi is None:
        if shutil.which("nvidia-smi") is None:
            return []

        def smi() -> str:
            run = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, check=False)
            return run.stdout if run.returncode == 0 else ""

    return [str(i) for i, line in enumerate(smi().splitlines()) if line.startswith("GPU ")]


def choose_free(pool: Sequence[str], busy: set[str], count: int = 1) -> list[str] | None:
    """The first ``count`` devices of ``pool`` not in ``busy`` (pool order), or None if too few are free."""
    if count < 1:
        raise ValueError(f"count must be >= 1, got {count}")
    free = [d for d in pool if d not in busy]
    return free[:count] if len(free) >= count else None


def _try_lock(path: Path) -> int | None:
    """The open, locked file; None when another process holds the lock or the file is not ours
    to open (a lock file left by another user: the device counts as busy)."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    except PermissionError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return None
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    return fd


def claim_devices(
    pool: Sequence[str | int],
    lock_dir: str | os.PathLike,
    count: int = 1,
    timeout_s: float = 600.0,
    poll_s: float = 0.5,
) -> list[str]:
    """Claim ``count`` devices of ``pool`` for this process and point ``CUDA_VISIBLE_DEVICES`` at them.

    Waits up to ``timeout_s`` for devices held by other processes to be freed. A process that
    already holds devices keeps them (its CUDA context may already be bound to them).
    Raises :class:`DeviceClaimError` when the pool is too small or nothing frees up in time.
    """
    if _HELD:
        return list(_HELD)
    pool = [str(d) for d in pool]
    if len(pool) < count:
        raise DeviceClaimError(
            f"job_devices.pool: {count} device(s) per job, but the pool holds {len(pool)} ({pool}); "
            "set job_devices.pool or CUDA_VISIBLE_DEVICES"
        )
    lock_dir = Path(lock_dir)
    lock_dir.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + timeout_s
    while True:
        taken: dict[str, int] = {}
        busy: set[str] = set()
        while len(taken) < count:
            choice = choose_free(pool, busy | set(taken), 1)
            if choice is None:
                break
            fd = _try_lock(lock_dir / f"device-{choice[0]}.lock")
            if fd is None:
                busy.add(choice[0])
            else:
                taken[choice[0]] = fd
        if len(taken) == count:
            _HELD.update(taken)
            # nvidia-smi numbers GPUs by PCI bus; CUDA by speed unless told otherwise.
            os.environ.setdefault("CUDA_DEVICE_ORDER", "PCI_BUS_ID")
            os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(taken)
            return list(taken)
        for fd in taken.values():
            os.close(fd)
        if time.monotonic() >= deadline:
            foreign = [d for d in sorted(busy) if not os.access(lock_dir / f"device-{d}.lock", os.W_OK)]
            hint = f"; lock files of device(s) {foreign} belong to another user" if foreign else ""
            raise DeviceClaimError(
                f"no free device in pool {pool} after {timeout_s:g} s (locks in {lock_dir}): "
                f"more jobs run at once than there are devices; lower hydra.launcher.n_jobs{hint}"
            )
        time.sleep(poll_s)


def claim_job_devices(spec) -> list[str]:
    """With ``launcher=local_gpus`` (``spec``: the ``job_devices`` config: ``pool``, ``lock_dir``,
    ``timeout_s``): give this job process its own GPU before CUDA starts; [] without a spec."""
    if not spec:
        return []
    pool = list(spec.pool) if spec.get("pool") is not None else visible_gpus()
    return claim_devices(pool, spec.lock_dir, count=1, timeout_s=float(spec.timeout_s))
