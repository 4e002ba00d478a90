"""One GPU per job for local parallel sweeps (``launcher=local_gpus``).

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
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from deepfill.utils.errors import DeviceClaimError

__all__ = ["DeviceClaimError", "choose_free", "claim_devices", "claim_job_devices", "visible_gpus"]

# Device id -> open lock file, for this process's whole life.
_HELD: dict[str, int] = {}


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
