"""Generator inference: one size per process (peak memory of its own), against an older
version side by side, bf16 precision, FLOPs and a profile."""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

from common import inputs, timed, timed_generator_calls

# The benchmarks' command line: the child processes run it again.
RUN = Path(__file__).resolve().with_name("run.py")


# ---------------------------------------------------------------------- inference precision
def precision(args: argparse.Namespace) -> dict:
    """fp32 against bf16 autocast (deepfill.inference's ``precision``), side by side in one
    process: the generator's time at ``--size`` (alternating rounds), and on trained weights
    (``--weights``) the bf16 result against the fp32 one on the embedded validation photos."""
    from deepfill import InpaintGenerator
    from deepfill.data import masks as M
    from deepfill.data.datasets import SampleImages
    from deepfill.inference import autocast, inpaint_array, load_generator
    from deepfill.models import set_cpu_chunk_bytes

    device = torch.device(args.device)
    generator = (
        set_cpu_chunk_bytes(InpaintGenerator(), getattr(args, "cpu_chunk_bytes", None)).eval().to(device)
    )
    image, mask = inputs(args.size, device=device)
    times: dict[str, list[float]] = {"fp32": [], "bf16": []}
    for _ in range(args.repeats):
        for name in times:

            def run(name=name) -> None:
                with torch.inference_mode(), autocast(device, name):
                    generator(image, mask)

            times[name] += timed(run, 1)
    speed = {name: statistics.median(t) for name, t in times.items()}
    result = {"size": args.size, "device": str(device), "median_s": speed, "times_s": times}
    result["bf16_speedup"] = speed["fp32"] / speed["bf16"]
    print(
        f"generator {args.size}^2: fp32 {speed['fp32']:.3f} s, bf16 {speed['bf16']:.3f} s "
        f"({result['bf16_speedup']:.2f}x)",
        flush=True,
    )
    if args.weights is None:
        return result
    trained = load_generator(args.weights, device)
    photos = SampleImages("val", 256, length=16)
    rows = []
    for i in range(len(photos)):
        photo = ((photos[i].permute(1, 2, 0).numpy() + 1) * 127.5).round().astype(np.uint8)
        for kind, draw in (("box", M.centered_rectangle), ("strokes", M.free_form)):
            hole = draw(256, 256, np.random.default_rng(i))[0].numpy() > 0.5
            a = inpaint_array(trained, photo, hole, "fp32")
            b = inpaint_array(trained, photo, hole, "bf16")
            diff = (a.completed[hole].astype(np.float64) - b.completed[hole]) / 255.0
            truth = (photo[hole].astype(np.float64)) / 255.0

            def psnr(x: np.ndarray, y: np.ndarray) -> float:
                return float(10 * np.log10(1.0 / max(np.mean((x - y) ** 2), 1e-10)))

            rows.append(
                {
                    "kind": kind,
                    "psnr_bf16_vs_fp32_hole": psnr(diff, 0 * diff),
                    "psnr_fp32_vs_truth_hole": psnr(a.completed[hole] / 255.0, truth),
                    "psnr_bf16_vs_truth_hole": psnr(b.completed[hole] / 255.0, truth),
                    "flow_changed": float((a.flow != b.flow).any(axis=-1)[hole].mean()),
                }
            )
    quality = {key: float(np.median([r[key] for r in rows])) for key in rows[0] if key != "kind"}
    result["quality"] = quality | {"images": len(rows), "weights": str(args.weights)}
    print(
        f"on {len(rows)} image/mask pairs: bf16 vs fp32 in the hole PSNR "
        f"{quality['psnr_bf16_vs_fp32_hole']:.1f} dB; "
        f"against the truth fp32 {quality['psnr_fp32_vs_truth_hole']:.2f} dB, bf16 "
        f"{quality['psnr_bf16_vs_truth_hole']:.2f} dB; attention flow changed at "
        f"{quality['flow_changed']:.1%} of hole pixels (medians)",
        flush=True,
    )
    return result


def _generator_conv_flop(generator, image: torch.Tensor, mask: torch.Tensor) -> float:
    """FLOPs of the generator's convolutions (and matrix products) for one forward."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with torch.inference_mode(), counter:
        generator(image, mask)
    return float(counter.get_total_flops())


def _conv_peak_gflops(device: str, dtype) -> float:
    """This machine's rate for a 128->128 3x3 convolution at 128x128 (channels_last): the
    reference the generator's rate is divided by. Median of 5 after a warm-up."""
    x = torch.randn(1, 128, 128, 128, device=device).contiguous(memory_format=torch.channels_last)
    w = torch.randn(128, 128, 3, 3, device=device).contiguous(memory_format=torch.channels_last)

    def run() -> None:
        with torch.inference_mode(), torch.autocast(device, dtype=dtype, enabled=dtype is not None):
            torch.nn.functional.conv2d(x, w, padding=1)

    seconds = statistics.median(timed(run, 5))
    return 2 * 128 * 128 * 9 * 128 * 128 / seconds / 1e9


# ---------------------------------------------------------------------- generator (one size)
def generator_one(args: argparse.Namespace) -> dict:
    from deepfill import InpaintGenerator
    from deepfill.models import set_cpu_chunk_bytes

    device = args.device
    # The layout asked for, not the default (channels_last since it became the default).
    generator = InpaintGenerator(channels_last=args.channels_last)
    generator = set_cpu_chunk_bytes(generator, getattr(args, "cpu_chunk_bytes", None)).eval().to(device)
    image, mask = inputs(args.size, device=device)
    if args.channels_last:
        image = image.contiguous(memory_format=torch.channels_last)
    dtype = {"float32": None, "bfloat16": torch.bfloat16}[args.dtype]

    def run() -> None:
        with torch.inference_mode(), torch.autocast(device, dtype=dtype, enabled=dtype is not None):
            generator(image, mask)

    times = timed(run, args.repeats)
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
    median = statistics.median(times)
    result = {
        "size": args.size,
        "channels_last": args.channels_last,
        "dtype": args.dtype,
        "device": device,
        "median_s": median,
        "times_s": times,
        "peak_rss_gb": peak_rss / 1e9,
    }
    # A figure that carries across machines: the generator's arithmetic rate as a fraction of
    # this machine's own convolution rate, both measured in this process.
    if args.size <= 1024:
        conv_flop = _generator_conv_flop(generator, image, mask)
        peak = _conv_peak_gflops(device, dtype)
        result |= {
            "conv_gflop": conv_flop / 1e9,
            "conv_peak_gflops": peak,
            "fraction_of_conv_peak": conv_flop / 1e9 / median / peak,
        }
    if device == "cuda":
        result["peak_cuda_gb"] = torch.cuda.max_memory_allocated() / 1e9
    return result


def generator(args: argparse.Namespace) -> list[dict]:
    rows = []
    for size in args.sizes:
        for layout in args.layouts:
            cmd = [
                sys.executable,
                str(RUN),
                "generator-one",
                "--size",
                str(size),
                "--repeats",
                str(args.repeats if size < 2048 else args.repeats_2048),
                "--threads",
                str(args.threads),
                "--device",
                args.device,
                "--dtype",
                args.dtype,
            ]
            if layout == "channels_last":
                cmd.append("--channels-last")
            out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
            row = json.loads(out.strip().splitlines()[-1])
            rows.append(row)
            share = row.get("fraction_of_conv_peak")
            print(
                f"generator {size}^2 {layout:13s} median {row['median_s']:.3f} s "
                f"peak RSS {row['peak_rss_gb']:.2f} GB"
                + (f", {share:.0%} of this machine's 3x3 conv rate" if share else ""),
                flush=True,
            )
    return rows


# ---------------------------------------------------------------------- against an older version
_DEFAULT_PATH_TIMING = (
    """
import json, statistics, sys, time, torch
torch.set_num_threads({threads})
try:  # what the version's commands do first
    from deepfill.utils.cpu import configure_cpu
    reused = configure_cpu()
except ImportError:
    torch.set_flush_denormal(True)
    reused = False
from deepfill import InpaintGenerator
torch.manual_seed(0)
generator = InpaintGenerator().eval()  # the version's default: what its users get
try:  # versions that take the attention's CPU budget from the command
    from deepfill.models import CPU_CHUNK_BYTES_REUSED, set_cpu_chunk_bytes
    if reused:
        set_cpu_chunk_bytes(generator, CPU_CHUNK_BYTES_REUSED)
except ImportError:
    pass
bf16 = {bf16}  # this version only: bf16 autocast, as precision=bf16 of the commands
"""
    + timed_generator_calls('torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16)')
    + """print(json.dumps(statistics.median(times)))
"""
)


def versus(args: argparse.Namespace) -> dict:
    """This version's default generator against another version's (``--baseline-src``: the
    ``src`` folder of an older checkout), fp32 (this version in bf16 autocast with ``--dtype
    bfloat16``), batch 1, in alternating processes so that
    both see the same machine state: the ratio is what carries to other machines. With the
    first release as the baseline, REFERENCE.md's side-by-side figures of the first release
    and the official graph chain it to an estimate against the official graph."""
    if args.baseline_src is None or not (args.baseline_src / "deepfill" / "__init__.py").is_file():
        raise SystemExit(
            f"--baseline-src {args.baseline_src}: expected the src folder of another checkout of "
            "this project (with deepfill/__init__.py in it)"
        )
    here = str(Path(__file__).resolve().parents[1] / "src")
    rows = []
    for size in args.sizes:
        times: dict[str, list[float]] = {"baseline": [], "this": []}
        for _ in range(args.rounds):
            for name, src in (("baseline", str(args.baseline_src)), ("this", here)):
                bf16 = name == "this" and args.dtype == "bfloat16"
                code = _DEFAULT_PATH_TIMING.format(
                    threads=args.threads, size=size, repeats=args.repeats, bf16=bf16
                )
                env = {**os.environ, "PYTHONPATH": src}
                out = subprocess.run(
                    [sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env
                )
                times[name].append(json.loads(out.stdout.strip().splitlines()[-1]))
        baseline, this = statistics.median(times["baseline"]), statistics.median(times["this"])
        rows.append(
            {"size": size, "baseline_s": baseline, "this_s": this, "speedup": baseline / this, **times}
        )
        print(
            f"default generator {size}^2: baseline (fp32) {baseline:.3f} s, this version ({args.dtype}) "
            f"{this:.3f} s "
            f"({baseline / this:.2f}x; medians of {args.rounds} alternating rounds of {args.repeats})",
            flush=True,
        )
    return {"baseline_src": str(args.baseline_src), "rows": rows}


# ---------------------------------------------------------------------- FLOPs and profile
def flops(args: argparse.Namespace) -> list[dict]:
    from torch.utils.flop_counter import FlopCounterMode

    from deepfill import InpaintGenerator

    generator = InpaintGenerator().eval()
    rows = []
    for size in args.sizes:
        image, mask = inputs(size)
        counter = FlopCounterMode(display=False)
        with torch.inference_mode(), counter:
            generator(image, mask)
        total = counter.get_total_flops()
        by_op = {str(k): v for k, v in counter.get_flop_counts()["Global"].items()}
        rows.append(
            {"size": size, "gflop": total / 1e9, "by_op_gflop": {k: v / 1e9 for k, v in by_op.items()}}
        )
        print(
            f"flops {size}^2: {total / 1e9:.1f} GFLOP  "
            + ", ".join(f"{k} {v / 1e9:.1f}" for k, v in by_op.items())
        )
    return rows


def profile(args: argparse.Namespace) -> str:
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    from deepfill import InpaintGenerator

    generator = InpaintGenerator().eval().to(memory_format=torch.channels_last)
    image, mask = inputs(args.size)
    image = image.contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        generator(image, mask)
        with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
            generator(image, mask)
    table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12)
    print(table)
    return table
