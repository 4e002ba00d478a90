"""What every benchmark shares: the machine's description, the timing loop, the inputs, the
results file."""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / "results"


def machine() -> dict:
    info = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
    }
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info["device"] = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    # The vector instructions PyTorch's own kernels use, and the variables that narrow them (the
    # AVX2 emulation: ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2).
    info["aten_cpu_capability"] = torch.backends.cpu.get_cpu_capability()
    names = ("ONEDNN_MAX_CPU_ISA", "ATEN_CPU_CAPABILITY")
    limits = {name: os.environ[name] for name in names if name in os.environ}
    if limits:
        info["isa_limits"] = limits
    return info


def timed(fn, repeats: int) -> list[float]:
    fn()  # warm-up: allocator, oneDNN primitive caches
    times = []
    for _ in range(repeats):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return times


def inputs(size: int, batch: int = 1, device: str = "cpu"):
    g = torch.Generator().manual_seed(0)
    image = torch.rand(batch, 3, size, size, generator=g) * 2 - 1
    mask = torch.zeros(batch, 1, size, size)
    mask[..., size // 4 : size // 4 + size // 2, size // 4 : size // 4 + size // 2] = 1  # centred box
    return image.to(device), mask.to(device)


def write_results(results: dict, out: Path) -> None:
    """The JSON file of a benchmark run, written whole then renamed."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(results, indent=2))
    tmp.replace(out)
    print(f"results written to {out}")


# The timed part of every child program that times a generator in a fresh process (another
# version's included, so it is code, not an import): a centred box on random pixels of side
# {size}, one warm-up call, then {repeats} timed calls of generator(image, mask) inside `context`;
# it leaves the list `times` (seconds). Placeholders are filled by the program's own .format().
_TIMED_GENERATOR_CALLS = """
size = {size}
image = torch.rand(1, 3, size, size) * 2 - 1
mask = torch.zeros(1, 1, size, size)
mask[..., size // 4 : size // 4 + size // 2, size // 4 : size // 4 + size // 2] = 1
times = []
with {context}:
    generator(image, mask)
    for _ in range({repeats}):
        start = time.perf_counter()
        generator(image, mask)
        times.append(time.perf_counter() - start)
"""


def timed_generator_calls(context: str, warm_up: bool = True) -> str:
    """The shared timing block of the child programs, its calls made inside ``context``;
    ``warm_up=False``: no warm-up call, the first call timed (what a command does with one photo)."""
    block = _TIMED_GENERATOR_CALLS.replace("{context}", context)
    return block if warm_up else block.replace("    generator(image, mask)\n    for", "    for", 1)
