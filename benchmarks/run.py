"""DeepFill benchmarks: generator inference, contextual attention, FLOPs, a profile, mask
generators, the training data loader and training steps.

Usage (``make bench`` runs the default set):
    python benchmarks/run.py                       # everything below, results in benchmarks/results/
    python benchmarks/run.py generator --sizes 256 512 --repeats 5
    python benchmarks/run.py attention --repeats 5
    python benchmarks/run.py flops
    python benchmarks/run.py profile --size 512
    python benchmarks/run.py masks                 # masks/s per preset and hole-ratio histograms
    python benchmarks/run.py loader                # training loader samples/s by worker count
    python benchmarks/run.py training              # seconds per generator update, per part
    python benchmarks/run.py training --train-batch 8 --port-dir <checkout of the PyTorch port>
                                                   # ... and the port's, timed beside it
    python benchmarks/run.py training --dtype bfloat16   # bf16 mixed precision (trainer=cpu_bf16)
    python benchmarks/run.py versus --baseline-src <older checkout>/src --sizes 512 1024
                                                   # default generator against another version
    python benchmarks/run.py precision --weights <ckpt>  # bf16 inference: speed and quality

Every timing is the median of ``--repeats`` runs after one warm-up run, with ``--threads`` CPU
threads (2 by default, the development machine). Each generator size runs in its own process so
that its peak resident memory (ru_maxrss) is its own.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from deepfill.utils.devices import configure_cpu

RESULTS = Path(__file__).resolve().parent / "results"


def _machine() -> dict:
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
    return info


def _timed(fn, repeats: int) -> list[float]:
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


def _inputs(size: int, batch: int = 1, device: str = "cpu"):
    g = torch.Generator().manual_seed(0)
    image = torch.rand(batch, 3, size, size, generator=g) * 2 - 1
    mask = torch.zeros(batch, 1, size, size)
    mask[..., size // 4 : size // 4 + size // 2, size // 4 : size // 4 + size // 2] = 1  # centred box
    return image.to(device), mask.to(device)


# ---------------------------------------------------------------------- inference precision
def precision(args: argparse.Namespace) -> dict:
    """fp32 against bf16 autocast (deepfill.inference's ``precision``), side by side in one
    process: the generator's time at ``--size`` (alternating rounds), and on trained weights
    (``--weights``) the bf16 result against the fp32 one on the embedded validation photos."""
    from deepfill import InpaintGenerator
    from deepfill.data import masks as M
    from deepfill.data.datasets import SampleImages
    from deepfill.inference import autocast, inpaint_array, load_generator

    device = torch.device(args.device)
    generator = InpaintGenerator().eval().to(device)
    image, mask = _inputs(args.size, device=device)
    times: dict[str, list[float]] = {"fp32": [], "bf16": []}
    for _ in range(args.repeats):
        for name in times:

            def run(name=name) -> None:
                with torch.inference_mode(), autocast(device, name):
                    generator(image, mask)

            times[name] += _timed(run, 1)
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

    seconds = statistics.median(_timed(run, 5))
    return 2 * 128 * 128 * 9 * 128 * 128 / seconds / 1e9


# ---------------------------------------------------------------------- generator (one size)
def generator_one(args: argparse.Namespace) -> dict:
    from deepfill import InpaintGenerator

    device = args.device
    # The layout asked for, not the default (channels_last since it became the default).
    generator = InpaintGenerator(channels_last=args.channels_last).eval().to(device)
    image, mask = _inputs(args.size, device=device)
    if args.channels_last:
        image = image.contiguous(memory_format=torch.channels_last)
    dtype = {"float32": None, "bfloat16": torch.bfloat16}[args.dtype]

    def run() -> None:
        with torch.inference_mode(), torch.autocast(device, dtype=dtype, enabled=dtype is not None):
            generator(image, mask)

    times = _timed(run, args.repeats)
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
                __file__,
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
_DEFAULT_PATH_TIMING = """
import json, statistics, sys, time, torch
torch.set_num_threads({threads})
try:  # what the version's commands do first
    from deepfill.utils.devices import configure_cpu
    configure_cpu()
except ImportError:
    torch.set_flush_denormal(True)
from deepfill import InpaintGenerator
torch.manual_seed(0)
generator = InpaintGenerator().eval()  # the version's default: what its users get
size = {size}
image = torch.rand(1, 3, size, size) * 2 - 1
mask = torch.zeros(1, 1, size, size)
mask[..., size // 4 : size // 4 + size // 2, size // 4 : size // 4 + size // 2] = 1
times = []
bf16 = {bf16}  # this version only: bf16 autocast, as precision=bf16 of the commands
with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
    generator(image, mask)
    for _ in range({repeats}):
        start = time.perf_counter()
        generator(image, mask)
        times.append(time.perf_counter() - start)
print(json.dumps(statistics.median(times)))
"""


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


# ---------------------------------------------------------------------- attention fwd + bwd
def attention(args: argparse.Namespace) -> dict:
    from deepfill import ContextualAttention
    from deepfill.models.reference import contextual_attention_loop

    g = torch.Generator().manual_seed(0)
    n, c, h, w = 16, 128, 64, 64
    features = torch.randn(n, c, h, w, generator=g).to(args.device)
    mask = torch.zeros(n, 1, h, w, device=args.device)
    for i in range(n):  # a different box per sample, as in training
        top, left = 4 + (i * 3) % 24, 6 + (i * 5) % 24
        mask[i, :, top : top + 24, left : left + 24] = 1
    layer = ContextualAttention(rate=2)

    def batched() -> None:
        x = features.clone().requires_grad_(True)
        y, _ = layer(x, x, mask)
        y.sum().backward()

    def loop() -> None:
        x = features.clone().requires_grad_(True)
        y, _ = contextual_attention_loop(x, x, mask, rate=2)
        y.sum().backward()

    t_batched = _timed(batched, args.repeats)
    t_loop = _timed(loop, args.repeats)
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


# ---------------------------------------------------------------------- FLOPs and profile
def flops(args: argparse.Namespace) -> list[dict]:
    from torch.utils.flop_counter import FlopCounterMode

    from deepfill import InpaintGenerator

    generator = InpaintGenerator().eval()
    rows = []
    for size in args.sizes:
        image, mask = _inputs(size)
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
    image, mask = _inputs(args.size)
    image = image.contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        generator(image, mask)
        with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
            generator(image, mask)
    table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12)
    print(table)
    return table


# ---------------------------------------------------------------------- masks and data loading
def masks(args: argparse.Namespace) -> dict:
    """Masks per second per generator at 256^2 and 512^2, and hole-ratio statistics."""
    from deepfill.data import masks as M

    rows = []
    ratios: dict[str, list[float]] = {}
    for name, generator in M.PRESETS.items():
        for size in (256, 512):
            rng = np.random.default_rng(0)
            count = 200
            start = time.perf_counter()
            drawn = [generator(size, size, rng) for _ in range(count)]
            rate = count / (time.perf_counter() - start)
            row = {"preset": name, "size": size, "masks_per_s": rate}
            if size == 256:
                values = [
                    M.hole_ratio(M.eval_mask(generator, 0, i, 256, 256)) for i in range(args.mask_samples)
                ]
                ratios[name] = values
                row |= {"mean_ratio": float(np.mean(values)), "median_ratio": float(np.median(values))}
            rows.append(row)
            del drawn
            print(f"masks {name:13s} {size}^2: {rate:8.0f} masks/s", flush=True)
    _plot_ratios(ratios, RESULTS / "mask_hole_ratios.png")
    return {"rows": rows, "ratios": ratios}


def _plot_ratios(ratios: dict[str, list[float]], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 3, figsize=(12, 6), sharex=True)
    for ax, (name, values) in zip(axes.flat, ratios.items(), strict=False):
        ax.hist(values, bins=np.linspace(0, 1, 41), color="#4477aa")
        ax.set_title(f"{name}  (mean {np.mean(values):.2f})")
        ax.set_xlabel("hole ratio")
    fig.suptitle(f"Hole-ratio histograms, {len(next(iter(ratios.values())))} evaluation masks at 256x256")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=80)
    print(f"hole-ratio histograms written to {out}")


def loader(args: argparse.Namespace) -> list[dict]:
    """Training loader throughput at 256^2 from JPEG files with 0, 1 and 2 workers."""
    import tempfile

    from PIL import Image

    from deepfill.data import masks as M
    from deepfill.data.datamodule import InpaintDataModule
    from deepfill.data.datasets import SampleImages, image_folder

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        # Places2-like files: 96 JPEGs of 512x384 cut from the embedded photos.
        photos = SampleImages("train", image_size=384)
        rng = np.random.default_rng(0)
        for i in range(96):
            crop = photos.get(i, rng)
            array = ((crop.permute(1, 2, 0).numpy() + 1) * 127.5).astype(np.uint8)
            Image.fromarray(array).resize((512, 384)).save(f"{tmp}/{i:03d}.jpg", quality=90)
        for workers in args.workers:
            dm = InpaintDataModule(
                train=image_folder(tmp, image_size=256),
                train_masks=M.free_form,
                eval_masks=M.centered_rectangle,
                batch_size=16,
                num_workers=workers,
                persistent_workers=workers > 0,
            )
            dm.setup("fit")
            loader_ = dm.train_dataloader()
            for _ in loader_:  # warm-up epoch: worker start-up, page cache
                pass
            start, count = time.perf_counter(), 0
            for _ in range(3):
                for batch in loader_:
                    count += batch["image"].shape[0]
            rate = count / (time.perf_counter() - start)
            rows.append({"workers": workers, "samples_per_s": rate})
            print(f"loader 256^2 JPEG, {workers} workers: {rate:.0f} samples/s", flush=True)
    return rows


# ---------------------------------------------------------------------- training throughput
def training(args: argparse.Namespace) -> dict:
    """Full-model training (256^2, batch ``--train-batch``): seconds per generator update
    (``n_critic`` critic batches, then the generator's own), images/s and a breakdown.

    Timed without the profiler (it slows the many small operations of a step); one more
    round under ``torch.profiler`` gives the breakdown by part. With ``--port-dir`` the
    PyTorch port's training loop at the same size and batch is timed first, in its own
    process, before and after ours, and the ratio is reported (the one comparison with it
    that carries across machines)."""
    import pytorch_lightning as pl
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    from deepfill.data import masks as M
    from deepfill.data.datamodule import InpaintDataModule
    from deepfill.data.datasets import SampleImages
    from deepfill.models import GlobalCritic, InpaintGenerator, LocalCritic
    from deepfill.training.module import DeepFillModule

    # The port is timed before and after ours: a shared machine drifts between runs.
    port = [_port_training(args)] if args.port_dir else None
    size, batch, n_critic = args.train_size, args.train_batch, 5
    # One generator iteration: n_critic critic batches, then the generator's own batch.
    per_round = n_critic + 1
    timed_rounds = args.train_iterations
    batches = per_round * (1 + timed_rounds + 1)  # warm-up, timed, profiled
    module = DeepFillModule(
        InpaintGenerator(),
        GlobalCritic(size),
        LocalCritic(size // 2),
        n_critic=n_critic,
        log_images_every_n_steps=0,
    )
    data = InpaintDataModule(
        train=SampleImages("train", size, length=batch * batches),
        train_masks=M.rectangle,
        eval_masks=M.centered_rectangle,
        batch_size=batch,
        num_workers=2,
        persistent_workers=True,
    )
    accelerator = "gpu" if args.device == "cuda" else "cpu"
    precision = "bf16-mixed" if args.dtype == "bfloat16" else "32-true"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if args.device == "cuda" else [])
    profiled_from = per_round * (1 + timed_rounds)

    class Timer(pl.Callback):
        def __init__(self) -> None:
            self.times: list[float] = []
            self.profiler = torch_profile(activities=activities)

        def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
            if batch_idx == profiled_from:
                self.profiler.start()
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            self._start = time.perf_counter()

        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            self.times.append(time.perf_counter() - self._start)
            if batch_idx == batches - 1:
                self.profiler.stop()

    timer = Timer()
    trainer = pl.Trainer(
        accelerator=accelerator,
        devices=1,
        precision=precision,
        max_epochs=1,
        limit_train_batches=batches,
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[timer],
        use_distributed_sampler=False,
    )
    start = time.perf_counter()
    trainer.fit(module, data)
    wall = time.perf_counter() - start
    if port is not None:
        port.append(_port_training(args))
    rounds = [sum(timer.times[per_round * r : per_round * (r + 1)]) for r in range(1, 1 + timed_rounds)]
    per_iteration = statistics.median(rounds)
    parts = {}
    for event in timer.profiler.key_averages():
        if event.key.startswith("deepfill/"):
            parts[event.key] = event.cpu_time_total / 1e6
    result = {
        "image_size": size,
        "batch": batch,
        "n_critic": n_critic,
        "dtype": args.dtype,
        "seconds_per_generator_update": per_iteration,
        "rounds_s": rounds,
        "generator_updates_per_s": 1 / per_iteration,
        "images_per_s": batch * per_round / per_iteration,
        "profiled_round_s": sum(timer.times[profiled_from:]),
        "profiled_round_s_by_part": parts,
        "wall_s": wall,
        # The training process's peak resident memory (data workers are processes of their own).
        "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6,
    }
    print(
        f"training {size}^2 batch {batch} {args.dtype}: {per_iteration:.2f} s per generator update "
        f"(median of {timed_rounds}; {result['images_per_s']:.2f} images/s over {n_critic} critic "
        f"batches and 1 generator batch; peak RSS {result['peak_rss_gb']:.2f} GB)",
        flush=True,
    )
    for key, value in sorted(parts.items()):
        print(f"  {key:45s} {value:7.2f} s in the profiled round")
    if port is not None:
        port_rounds = [t for run in port for t in run["rounds_s"]]
        port_s = statistics.median(port_rounds)
        result["port"] = {"seconds_per_generator_update": port_s, "rounds_s": port_rounds}
        result["speedup_vs_port"] = port_s / per_iteration
        print(
            f"  the PyTorch port, same run (before and after): {port_s:.2f} s per generator "
            f"update (rounds {', '.join(f'{t:.1f}' for t in port_rounds)}): this project is "
            f"{result['speedup_vs_port']:.2f}x",
            flush=True,
        )
    return result


def _port_training(args: argparse.Namespace) -> dict:
    if (
        not (args.port_dir / "trainer.py").is_file()
        or not (args.port_dir / "configs" / "config.yaml").is_file()
    ):
        raise SystemExit(
            f"--port-dir {args.port_dir}: not a checkout of daa233/generative-inpainting-pytorch "
            "(expected trainer.py and configs/config.yaml in it)"
        )
    cmd = [sys.executable, __file__, "port-training", "--port-dir", str(args.port_dir)]
    cmd += ["--train-size", str(args.train_size), "--train-batch", str(args.train_batch)]
    cmd += ["--train-iterations", str(args.train_iterations), "--threads", str(args.threads)]
    cmd += ["--port-runtime", args.port_runtime]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def port_training(args: argparse.Namespace) -> dict:
    """The PyTorch port's own training loop (daa233/generative-inpainting-pytorch, a checkout
    at ``--port-dir``; nothing of it is part of this project), CPU, fp32, random images and
    its own box masks: seconds per generator update (n_critic of its iterations).

    One change, needed on current PyTorch: in an iteration that also updates the generator,
    both backward passes run before either optimiser step (the port steps the critics first,
    which current autograd refuses, since the generator's backward goes through their weights
    at the values they had). The work is the same. ``--port-runtime``: PyTorch's defaults (as
    the port's users run it) or this project's CPU settings (``configure_cpu``)."""
    import yaml

    sys.path.insert(0, str(args.port_dir))
    from trainer import Trainer  # the port's module
    from utils.tools import mask_image, random_bbox  # the port's module

    config = yaml.safe_load((Path(args.port_dir) / "configs" / "config.yaml").read_text())
    size, batch = args.train_size, args.train_batch
    config.update(cuda=False, gpu_ids=[], batch_size=batch, image_shape=[size, size, 3])
    config.update(mask_shape=[size // 2, size // 2])
    np.random.seed(0)  # noqa: NPY002 (the port draws its masks from the global state)
    torch.manual_seed(0)
    trainer = Trainer(config)
    n_critic = config["n_critic"]

    def iteration(index: int) -> None:
        truth = torch.rand(batch, 3, size, size) * 2 - 1
        boxes = random_bbox(config, batch_size=batch)
        x, mask = mask_image(truth, boxes, config)
        with_generator = index % n_critic == 0
        losses, _, _ = trainer(x, boxes, mask, truth, with_generator)
        trainer.optimizer_d.zero_grad()
        (losses["wgan_d"] + losses["wgan_gp"] * config["wgan_gp_lambda"]).backward()
        if with_generator:
            trainer.optimizer_g.zero_grad()
            g = (
                losses["l1"] * config["l1_loss_alpha"]
                + losses["ae"] * config["ae_loss_alpha"]
                + losses["wgan_g"] * config["gan_loss_alpha"]
            )
            g.backward()
            trainer.optimizer_g.step()
        trainer.optimizer_d.step()

    def generator_update() -> None:
        for index in range(1, n_critic + 1):
            iteration(index)

    rounds = _timed(generator_update, args.train_iterations)
    return {
        "seconds_per_generator_update": statistics.median(rounds),
        "rounds_s": rounds,
        "batch": batch,
        "image_size": size,
        "runtime": args.port_runtime,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "what",
        nargs="?",
        default="all",
        choices=(
            "all",
            "generator",
            "generator-one",
            "attention",
            "flops",
            "profile",
            "masks",
            "loader",
            "training",
            "port-training",
            "precision",
            "versus",
        ),
    )
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 512, 1024, 2048])
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument(
        "--layouts", nargs="+", default=["nchw", "channels_last"], choices=("nchw", "channels_last")
    )
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--repeats-2048", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--mask-samples", type=int, default=1000)
    parser.add_argument("--train-size", type=int, default=256)
    parser.add_argument("--train-batch", type=int, default=16)
    parser.add_argument("--train-iterations", type=int, default=3, help="timed generator updates")
    parser.add_argument(
        "--port-dir",
        type=Path,
        default=None,
        help="a checkout of daa233/generative-inpainting-pytorch: time its training beside ours",
    )
    parser.add_argument(
        "--port-runtime",
        default="default",
        choices=("default", "ours"),
        help="the port with PyTorch's defaults, or with this project's CPU settings (configure_cpu)",
    )
    parser.add_argument("--baseline-src", type=Path, default=None, help="an older checkout's src (versus)")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds (versus)")
    parser.add_argument("--weights", type=Path, default=None, help="trained weights (precision)")
    parser.add_argument("--out", type=Path, default=None, help="JSON file for the results")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    if args.what == "port-training":
        # The port as its users run it, unless asked to give it this project's CPU settings.
        if args.port_runtime == "ours":
            configure_cpu()
        print(json.dumps(port_training(args)))
        return
    # As every command of the project does: no subnormal floats, freed memory reused.
    configure_cpu()
    if args.what == "generator-one":
        print(json.dumps(generator_one(args)))
        return
    results: dict = {"machine": _machine()}
    if args.what in ("all", "generator"):
        results["generator"] = generator(args)
    if args.what in ("all", "attention"):
        results["attention"] = attention(args)
    if args.what in ("all", "flops"):
        results["flops"] = flops(argparse.Namespace(sizes=[s for s in args.sizes if s <= 512] or [256, 512]))
    if args.what in ("all", "profile"):
        results["profile"] = profile(args)
    if args.what in ("all", "masks"):
        results["masks"] = masks(args)
    if args.what in ("all", "loader"):
        results["loader"] = loader(args)
    if args.what in ("all", "training"):
        results["training"] = training(args)
    if args.what == "precision":
        results["precision"] = precision(args)
    if args.what == "versus":
        results["versus"] = versus(args)
    write_results(
        results, args.out or RESULTS / f"{args.what}-{results['machine']['device'].replace(' ', '_')}.json"
    )


def write_results(results: dict, out: Path) -> None:
    """The JSON file of a benchmark run, written whole then renamed."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(results, indent=2))
    tmp.replace(out)
    print(f"results written to {out}")


if __name__ == "__main__":
    main()
