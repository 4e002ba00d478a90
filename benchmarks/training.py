"""Training throughput: seconds per generator update and per part, and the PyTorch port's
training timed beside it."""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from common import timed

# The benchmarks' command line: the child processes run it again.
RUN = Path(__file__).resolve().with_name("run.py")


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
    cmd = [sys.executable, str(RUN), "port-training", "--port-dir", str(args.port_dir)]
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

    rounds = timed(generator_update, args.train_iterations)
    return {
        "seconds_per_generator_update": statistics.median(rounds),
        "rounds_s": rounds,
        "batch": batch,
        "image_size": size,
        "runtime": args.port_runtime,
    }
