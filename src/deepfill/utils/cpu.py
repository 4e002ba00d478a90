"""The CPU settings every command starts with (:func:`configure_cpu`: no subnormal floats,
freed memory reused) and what this CPU computes natively (:func:`cpu_native_bf16`, for
``trainer=cpu_bf16``). Only the standard library is imported at the top."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = [
    "configure_cpu",
    "cpu_native_bf16",
    "flush_denormals",
    "large_blocks_returned",
    "reuse_freed_memory",
]


def flush_denormals() -> None:
    """Flush subnormal floats to zero in CPU arithmetic, for the whole process.

    Subnormals (e.g. ELU outputs and gradients far below zero) make x86 CPUs run convolutions
    several times slower: training steps 0.2 s -> 1 s (seen); inference of the trained
    quickstart model at 512² 1.77 s -> 1.04 s (1.71x, measured side by side). The results change
    only below 1e-38. Every command calls it; GPU arithmetic is unaffected."""
    import torch

    torch.set_flush_denormal(True)


# glibc mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD, _M_MMAP_MAX = -1, -3, -4
# The largest threshold glibc accepts for a block's own mapping on 64-bit systems, and its
# default limit on how many blocks get one.
_LARGEST_MMAP_THRESHOLD, _DEFAULT_MMAP_MAX = 32 * 2**20, 65536
_REUSING: list = []  # glibc's libc, once reuse_freed_memory has taken effect in this process


def _libc():
    """glibc's C library through ctypes, or None (not Linux, or no malloc settings)."""
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    if not name or sys.platform != "linux":
        return None
    try:
        libc = ctypes.CDLL(name)
        libc.mallopt.argtypes, libc.mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
        libc.malloc_trim.argtypes, libc.malloc_trim.restype = [ctypes.c_size_t], ctypes.c_int
    except (OSError, AttributeError):
        return None
    return libc


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
    happens. :func:`large_blocks_returned` undoes it for work whose blocks are too large to
    recycle."""
    libc = _libc()
    if libc is None:
        return False
    took = bool(libc.mallopt(_M_MMAP_MAX, 0)) and bool(libc.mallopt(_M_TRIM_THRESHOLD, 2**31 - 1))
    if took and not _REUSING:
        _REUSING.append(libc)
    return took


@contextmanager
def large_blocks_returned() -> Iterator[None]:
    """Inside: blocks of 32 MiB and more get their own mapping again and go back to the system
    when freed, and the heap's free pages are released on entry. Outside, as before.

    For work that allocates blocks larger than the heap can recycle: each block freed inside the
    kept heap is split by the smaller objects allocated after it, so the next one grows the heap.
    Contextual attention once a single row of scores exceeds its chunk budget (above 2048² in
    the commands) grew a 4096² inference past 24 GB that way; with its blocks returned it peaks
    at 10.8 GiB. Each fresh block page-faults its way in: inside, the attention was 1.8x slower
    and took a third less memory (BENCHMARKS.md). Nothing happens unless
    :func:`reuse_freed_memory` took effect."""
    if not _REUSING:
        yield
        return
    libc = _REUSING[0]
    libc.mallopt(_M_MMAP_THRESHOLD, _LARGEST_MMAP_THRESHOLD)
    libc.mallopt(_M_MMAP_MAX, _DEFAULT_MMAP_MAX)
    libc.malloc_trim(0)  # the free pages the earlier layers left in the heap
    try:
        yield
    finally:
        libc.mallopt(_M_MMAP_MAX, 0)


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
