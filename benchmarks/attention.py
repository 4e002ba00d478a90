"""Contextual attention, forward + backward: the batched layer against a per-sample loop."""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from common import timed

# The per-sample loop is test code (the tests' independent second implementation).
TESTS = Path(__file__).resolve().parents[1] / "tests"
# The benchmarks' command line: the child processes run it again.
RUN = Path(__file__).resolve().with_name("run.py")


# ---------------------------------------------------------------------- attention fwd + bwd
def attention(args: argparse.Namespace) -> dict:
    from deepfill import ContextualAttention
    from deepfill.models import set_cpu_chunk_bytes

    sys.path.insert(0, str(TESTS))
    from helpers.reference import contextual_attention_loop

    g = torch.Generator().manual_seed(0)
    n, c, h, w = 16, 128, 64, 64
    features = torch.randn(n, c, h, w, generator=g).to(args.device)
    mask = torch.zeros(n, 1, h, w, device=args.device)
    for i in range(n):  # a different box per sample, as in training
        top, left = 4 + (i * 3) % 24, 6 + (i * 5) % 24
        mask[i, :, top : top + 24, left : left + 24] = 1
    layer = set_cpu_chunk_bytes(ContextualAttention(rate=2), getattr(args, "cpu_chunk_bytes", None))

    def batched() -> None:
        x = features.clone().requires_grad_(True)
        y, _ = layer(x, x, mask)
        y.sum().backward()

    def loop() -> None:
        x = features.clone().requires_grad_(True)
        y, _ = contextual_attention_loop(x, x, mask, rate=2)
        y.sum().backward()

    t_batched = timed(batched, args.repeats)
    t_loop = timed(loop, args.repeats)
    result = {
        "shape": [n, c, h, w],
        "batched_median_s": statistics.median(t_batched),
        "loop_median_s": statistics.median(t_loop),
        "speedup": statistics.median(t_loop) / statistics.median(t_batched),
        "batched_times_s": t_batched,
        "loop_times_s": t_loop,
    }
    print(
        f"attention fwd+bwd 16x128x64x64: batched {result['batched_median_s']:.3f} s, "
        f"per-sample loop {result['loop_median_s']:.3f} s, speedup {result['speedup']:.2f}x",
        flush=True,
    )
    return result


# ------------------------------------------------------------ rows over the chunk budget
LARGE_ROW_MODES = ("kept", "returned", "default")


def large_rows(args: argparse.Namespace) -> dict:
    """Inference of one contextual attention layer whose single row of scores exceeds its chunk
    budget (features of ``--size`` squared, 128 channels, rate 2; ``--chunk-mb``), each run in a
    fresh process for a peak memory of its own, the modes alternating for ``--rounds``:

    - ``kept``: the commands' allocator setting (freed memory kept in the heap), with the loop
      kept there too, as before ``large_blocks_returned``;
    - ``returned``: the same setting, the loop's large blocks handed back (what the layer does now);
    - ``default``: glibc's defaults (a plain Python process)."""
    runs: dict[str, list[dict]] = {mode: [] for mode in LARGE_ROW_MODES}
    for _ in range(args.rounds):
        for mode in LARGE_ROW_MODES:
            cmd = [sys.executable, str(RUN), "large-rows-one", "--mode", mode]
            cmd += ["--size", str(args.size), "--chunk-mb", str(args.chunk_mb)]
            cmd += ["--threads", str(args.threads)]
            out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
            runs[mode].append(json.loads(out.strip().splitlines()[-1]))
            one = runs[mode][-1]
            print(f"{mode:9s} {one['seconds']:.1f} s, peak {one['peak_gib']:.2f} GiB", flush=True)
    result = {"size": args.size, "chunk_mb": args.chunk_mb, "rounds": args.rounds, "runs": runs}
    for mode, of_mode in runs.items():
        result[f"{mode}_median_s"] = statistics.median(r["seconds"] for r in of_mode)
        result[f"{mode}_median_peak_gib"] = statistics.median(r["peak_gib"] for r in of_mode)
    return result


def large_rows_one(args: argparse.Namespace) -> dict:
    """One run of :func:`large_rows` in this process (``--mode``), set up before anything else."""
    from contextlib import nullcontext

    from deepfill.utils.cpu import configure_cpu

    if args.mode != "default":
        configure_cpu()
    from deepfill import ContextualAttention
    from deepfill.models import contextual_attention

    if args.mode == "kept":
        contextual_attention.large_blocks_returned = nullcontext
    g = torch.Generator().manual_seed(0)
    f = torch.randn(1, 128, args.size, args.size, generator=g)
    b = torch.randn(1, 128, args.size, args.size, generator=g)
    mask = torch.zeros(1, 1, args.size, args.size)
    mask[..., args.size // 4 : args.size // 2, args.size // 3 : 2 * args.size // 3] = 1
    layer = ContextualAttention(rate=2, chunk_bytes=args.chunk_mb * 2**20)
    start = time.perf_counter()
    with torch.inference_mode():
        y, _ = layer(f, b, mask)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB
    return {"mode": args.mode, "seconds": seconds, "peak_gib": peak, "y_abs_mean": float(y.abs().mean())}
