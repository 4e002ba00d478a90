"""Contextual attention, forward + backward: the batched layer against a per-sample loop."""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch

from common import timed

# The per-sample loop is test code (the tests' independent second implementation).
TESTS = Path(__file__).resolve().parents[1] / "tests"


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
