"""Checks that a machine can run a long training job, in minutes: what ``deepfill-selftest``
(``make gpu-check``) runs on the visible devices and writes as a JSON and a markdown report.

Parts, each a :class:`Check` (pass, fail, skip, info):

- the environment: torch, CUDA and driver versions, devices, TF32 and native bf16 support;
- parity with the official graph on the device (``gen_256.npz``), per precision: float32 with
  TF32 off within the CPU parity tolerance; TF32 and bf16 within :data:`LOW_PRECISION_TOLERANCE`;
- the official training step on the device (``train_step_256.npz``), per precision: finite, and
  every loss term close to the official float32 values;
- one training iteration of the paper's model through Lightning (5 critic batches, then the
  generator's), per precision, and compiled too on GPUs: finite losses and weights, images/s;
- inference time and peak memory at the given sizes;
- DDP across all visible GPUs when there are two or more: a few steps, equal weights after.

A CPU-only machine runs the CPU part (float32, and bf16 where the CPU has it natively) and says
so. The whole run keeps to a time budget; a part that would start after it is reported as
skipped, never silently dropped.
"""

from __future__ import annotations

import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from deepfill.official.goldens import TrainingStepCase
from deepfill.training.losses import (
    Loss,
    LossConfig,
    LossWeights,
    StepOutputs,
    critic_loss,
    generator_loss,
    patch_critic_loss,
)
from deepfill.utils.logs import quiet_loggers

__all__ = [
    "FLOAT32_GENERATOR_TOLERANCE",
    "FLOAT32_LOSS_TOLERANCE",
    "LOW_PRECISION_TOLERANCE",
    "OFFICIAL_GAMMA",
    "OFFICIAL_LOSS",
    "OFFICIAL_LOSS_V2",
    "Check",
    "SelfTestOptions",
    "precisions_for",
    "run_selftest",
    "training_step_losses",
    "training_step_losses_v2",
    "write_report",
]

# float32 (TF32 off): the CPU parity tests' tolerances (max abs error of x_stage2; relative
# error of each loss term).
FLOAT32_GENERATOR_TOLERANCE = 1e-3
FLOAT32_LOSS_TOLERANCE = 1e-4
# TF32 and bf16: bf16 autocast on a CPU gave a mean abs error in the hole of 0.0096 (v1) and
# 0.030 (v2, with AVX-512 and with AVX2: its gated layers round two bf16 halves and their
# product; a float32 gate would only bring it to 0.027) and loss terms within 3.6e-3 relative of
# the official float32 values; allowed: 3x that. TF32 rounds operands to 10 mantissa bits where
# bf16 keeps 7, so it stays within bf16's tolerance.
LOW_PRECISION_TOLERANCE = {"hole_mean_abs": {"v1": 0.03, "v2": 0.09}, "loss_relative": 1e-2}
LOSS_TERMS = ("l1_loss", "ae_loss", "gp_loss", "d_loss", "g_loss")
# inpaint.yml, the configuration the training-step golden was produced with.
OFFICIAL_LOSS = LossWeights(coarse=1.2, l1=1.2, ae=1.2, gan=0.001, global_wgan=1.0, gp=10.0)
OFFICIAL_GAMMA = 0.9
# DeepFill v2's inpaint.yml: l1_loss_alpha = gan_loss_alpha = 1, plain L1 on both stages (no
# discount, no AE term); the WGAN fields are v1's and unused with its SN-PatchGAN critic.
OFFICIAL_LOSS_V2 = LossWeights(coarse=1.0, l1=1.0, ae=0.0, gan=1.0, global_wgan=1.0, gp=0.0)


@dataclass
class Check:
    """One line of the report: ``status`` is pass, fail, skip or info."""

    name: str
    status: str
    detail: str
    figures: dict = field(default_factory=dict)


@dataclass
class SelfTestOptions:
    goldens: Path | None = None  # the official_v1 goldens folder; None: skip the parity parts
    goldens_v2: Path | None = None  # the official_v2 goldens folder; None: skip v2's parity parts
    sizes: tuple[int, ...] = (512, 1024, 2048)  # inference sizes
    train_size: int = 256
    train_batch: int = 16
    budget_s: float = 300.0
    ddp: bool = True  # across all visible GPUs when there are two or more
    precisions: tuple[str, ...] | None = None  # None: what the device supports
    compile: bool | None = None  # also time compiled training iterations; None: on GPUs only
    cpu_chunk_bytes: int | None = None  # contextual attention's CPU chunk budget; None: its default


def precisions_for(device: torch.device) -> tuple[str, ...]:
    """float32 always; tf32 on CUDA devices with compute capability 8.0 or newer; bf16 where the
    device computes it natively (CUDA bf16 support, or a CPU with avx512_bf16 / amx_bf16)."""
    if device.type == "cuda":
        major, _ = torch.cuda.get_device_capability(device)
        names = ["float32"] + (["tf32"] if major >= 8 else [])
        return tuple(names + (["bf16"] if torch.cuda.is_bf16_supported() else []))
    from deepfill.utils.cpu import cpu_native_bf16

    return ("float32", "bf16") if cpu_native_bf16() else ("float32",)


@contextmanager
def _precision(device: torch.device, name: str) -> Iterator[None]:
    """float32 with TF32 off, TF32 matmuls and convolutions, or bf16 autocast."""
    tf32 = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = name == "tf32"
    try:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=name == "bf16"):
            yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ---------------------------------------------------------------------------- parts
def environment(devices: list[torch.device]) -> Check:
    figures: dict = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.cuda.is_available() else None,
        "cpu_threads": torch.get_num_threads(),
    }
    from deepfill.utils.cpu import cpu_native_bf16

    figures["cpu_native_bf16"] = cpu_native_bf16()
    gpus = []
    for device in devices:
        if device.type != "cuda":
            continue
        props = torch.cuda.get_device_properties(device)
        gpus.append(
            {
                "name": props.name,
                "memory_gb": round(props.total_memory / 1e9, 1),
                "capability": f"{props.major}.{props.minor}",
                "tf32": props.major >= 8,
                "bf16": torch.cuda.is_bf16_supported(),
            }
        )
    figures["gpus"] = gpus
    if gpus:
        smi = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            check=False,
        )
        figures["driver"] = smi.stdout.strip().splitlines()[0] if smi.returncode == 0 and smi.stdout else None
        detail = f"{len(gpus)} GPU(s): {', '.join(g['name'] for g in gpus)}; driver {figures['driver']}"
    else:
        detail = "no GPU visible: the CPU part only"
    detail += f"; torch {torch.__version__}, CUDA {torch.version.cuda}"
    return Check("environment", "info", detail, figures)


def generator_parity(goldens: Path, device: torch.device, precision: str, family: str = "v1") -> Check:
    from deepfill.official.goldens import generator_case

    name = f"parity{'' if family == 'v1' else ' ' + family} {device.type} {precision}"
    case = generator_case(goldens, family)
    generator = case["generator"].to(device).eval()
    image, mask = case["image"].to(device), case["mask"].to(device)
    with torch.inference_mode(), _precision(device, precision):
        _, x2, _ = generator(image, mask)
    error = (x2.float().cpu() - case["x_stage2"]).abs()
    hole = case["mask"].bool().expand_as(error)
    figures = {"max_abs": float(error.max()), "hole_mean_abs": float(error[hole].mean())}
    if not torch.isfinite(x2).all():
        return Check(name, "fail", "non-finite output", figures)
    if precision == "float32":
        ok = figures["max_abs"] < FLOAT32_GENERATOR_TOLERANCE
        limit = f"max abs error {figures['max_abs']:.2e} (allowed {FLOAT32_GENERATOR_TOLERANCE:g})"
    else:
        allowed = LOW_PRECISION_TOLERANCE["hole_mean_abs"][family]
        ok = figures["hole_mean_abs"] < allowed
        limit = f"mean abs error in the hole {figures['hole_mean_abs']:.2e} (allowed {allowed:g})"
    return Check(name, "pass" if ok else "fail", f"x_stage2 against the official graph: {limit}", figures)


def training_step_losses(
    case: TrainingStepCase, device: str | torch.device = "cpu", autocast_dtype: torch.dtype | None = None
) -> tuple[Loss, Loss, torch.Tensor]:
    """The generator's and the critics' losses of the case's step, computed by the functions the
    training step calls, on ``device`` (the case's networks move there), inside an autocast
    region of ``autocast_dtype`` when given. Returns ``(generator loss, critic loss, origins)``,
    origins (N,2) being the local patches."""
    device = torch.device(device)
    for net in (case.generator, case.global_critic, case.local_critic):
        net.to(device)
    image, mask = case.image.to(device), case.mask.to(device)
    config = LossConfig(OFFICIAL_LOSS, "box", OFFICIAL_GAMMA, patch_size=case.bbox[2])
    critics = (case.global_critic, case.local_critic)
    with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
        x1, x2, _ = case.generator(image, mask)
        step = StepOutputs.of(image, mask, x1, x2, config.patch_size)
        g = generator_loss(step, config, critics)
        d = critic_loss(*critics, step, config, case.alpha_global.to(device), case.alpha_local.to(device))
    return g, d, step.origins


def training_step_losses_v2(
    case, device: str | torch.device = "cpu", autocast_dtype: torch.dtype | None = None
) -> tuple[Loss, Loss]:
    """The v2 step's generator and critic losses (a :class:`~deepfill.official.goldens.
    TrainingStepCaseV2`), computed by the functions the training step calls, as the official
    graph does: one critic forward for both losses, so one power iteration (the generator's
    term reads the critic in eval mode, which leaves ``u`` as it was; the critic's loss then
    advances it once). Returns ``(generator loss, critic loss)``."""
    device = torch.device(device)
    case.generator.to(device)
    case.critic.to(device)
    image, mask = case.image.to(device), case.mask.to(device)
    config = LossConfig(OFFICIAL_LOSS_V2, "none", OFFICIAL_GAMMA, patch_size=1)
    with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
        x1, x2, _ = case.generator(image, mask)
        step = StepOutputs.of(image, mask, x1, x2, config.patch_size)
        case.critic.eval()
        g = generator_loss(step, config, case.critic)
        case.critic.train()
        d = patch_critic_loss(case.critic, step)
    return g, d


def _losses_check(name: str, terms: dict, golden: dict, networks, precision: str) -> Check:
    """A training step's losses ``terms`` against the golden's ``loss:<key>``, and every
    gradient of ``networks`` finite (the step's backward has run)."""
    ours = {key: float(value.detach()) for key, value in terms.items()}
    relative = {
        key: abs(ours[key] - float(golden[f"loss:{key}"])) / max(abs(float(golden[f"loss:{key}"])), 1e-12)
        for key in terms
    }
    grads_finite = all(
        p.grad is None or bool(torch.isfinite(p.grad).all()) for net in networks for p in net.parameters()
    )
    allowed = FLOAT32_LOSS_TOLERANCE if precision == "float32" else LOW_PRECISION_TOLERANCE["loss_relative"]
    worst = max(relative, key=relative.get)
    figures = {"losses": ours, "relative_error": relative}
    if not grads_finite or not all(map(math.isfinite, ours.values())):
        return Check(name, "fail", "non-finite losses or gradients", figures)
    ok = relative[worst] < allowed
    detail = f"losses against the official graph: worst {worst} {relative[worst]:.1e} relative"
    detail += f" (allowed {allowed:g})"
    return Check(name, "pass" if ok else "fail", detail, figures)


def training_step_parity_v2(goldens: Path, device: torch.device, precision: str) -> Check:
    """The official v2 step's losses (``ae_loss``, ``g_loss``, ``d_loss``) on ``device``."""
    from deepfill.official.goldens import training_step_case_v2

    case = training_step_case_v2(goldens)
    with _precision(device, "tf32" if precision == "tf32" else "float32"):
        dtype = torch.bfloat16 if precision == "bf16" else None
        g, d = training_step_losses_v2(case, device, dtype)
        terms = {"ae_loss": g["l1"], "g_loss": g.total, "d_loss": d.total}
        (g.total + d.total).backward()  # the backward runs on the device too
    name = f"training step v2 {device.type} {precision}"
    return _losses_check(name, terms, case.golden, (case.generator, case.critic), precision)


def training_step_parity(goldens: Path, device: torch.device, precision: str) -> Check:
    from deepfill.official.goldens import training_step_case

    case = training_step_case(goldens)
    with _precision(device, "tf32" if precision == "tf32" else "float32"):
        dtype = torch.bfloat16 if precision == "bf16" else None
        g, d, _ = training_step_losses(case, device, dtype)
        terms = {"l1_loss": g["l1"], "ae_loss": g["ae"], "gp_loss": d["gp"]}
        terms |= {"d_loss": d.total, "g_loss": g.total}
        (g.total + d.total).backward()  # the backward runs on the device too
    networks = (case.generator, case.global_critic, case.local_critic)
    return _losses_check(f"training step {device.type} {precision}", terms, case.golden, networks, precision)


def training_iteration(
    device: torch.device, precision: str, size: int, batch: int, compile: bool = False
) -> Check:
    """The paper's model through Lightning: a warm-up iteration, then one timed iteration
    (5 critic batches and the generator's); ``compile``: its networks through torch.compile
    (the warm-up iteration compiles)."""
    import pytorch_lightning as pl

    from deepfill.data import masks
    from deepfill.data.datamodule import InpaintDataModule
    from deepfill.data.datasets import SampleImages
    from deepfill.models import GlobalCritic, InpaintGenerator, LocalCritic
    from deepfill.training.module import DeepFillModule

    name = f"training iteration {device.type} {precision}" + (" compiled" if compile else "")
    per_iteration = 6
    torch.manual_seed(0)
    module = DeepFillModule(
        InpaintGenerator(),
        GlobalCritic(size),
        LocalCritic(size // 2),
        n_critic=5,
        lpips=False,
        compile=compile,
    )
    data = InpaintDataModule(
        train=SampleImages("train", size, length=batch * per_iteration * 2),
        train_masks=masks.rectangle,
        eval_masks=masks.centered_rectangle,
        batch_size=batch,
        num_workers=min(4, os.cpu_count() or 1),
    )
    times: list[float] = []

    class Timer(pl.Callback):
        def on_train_batch_start(self, *args) -> None:
            _sync(device)
            self.start = time.perf_counter()

        def on_train_batch_end(self, *args) -> None:
            _sync(device)
            times.append(time.perf_counter() - self.start)

    trainer = pl.Trainer(
        accelerator="gpu" if device.type == "cuda" else "cpu",
        devices=[device.index or 0] if device.type == "cuda" else 1,
        precision="bf16-mixed" if precision == "bf16" else "32-true",
        max_epochs=1,
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[Timer()],
    )
    with _precision(device, "tf32" if precision == "tf32" else "float32"):
        trainer.fit(module, data)
    logged = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("train/")}
    finite = all(torch.isfinite(p).all() for p in module.parameters())
    finite = finite and all(map(math.isfinite, logged.values()))
    seconds = sum(times[per_iteration:])
    figures = {
        "image_size": size,
        "batch": batch,
        "seconds_per_iteration": seconds,
        "images_per_s": batch * per_iteration / seconds,
        "logged": logged,
    }
    if device.type == "cuda":
        figures["peak_memory_gb"] = torch.cuda.max_memory_allocated(device) / 1e9
    if not finite or not logged:
        return Check(name, "fail", f"non-finite or missing losses: {logged}", figures)
    detail = f"{size}², batch {batch}: {figures['images_per_s']:.1f} images/s, losses finite"
    return Check(name, "pass", detail, figures)


def inference(device: torch.device, precision: str, size: int, cpu_chunk_bytes: int | None = None) -> Check:
    from deepfill.models import InpaintGenerator, set_cpu_chunk_bytes

    name = f"inference {device.type} {precision} {size}²"
    generator = set_cpu_chunk_bytes(InpaintGenerator(), cpu_chunk_bytes).eval().to(device)
    image = torch.rand(1, 3, size, size, device=device) * 2 - 1
    mask = torch.zeros(1, 1, size, size, device=device)
    mask[..., size // 4 : size // 4 + size // 2, size // 4 : size // 4 + size // 2] = 1
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    with torch.inference_mode(), _precision(device, precision):
        for _ in range(3):
            _sync(device)
            start = time.perf_counter()
            _, x2, _ = generator(image, mask)
            _sync(device)
            times.append(time.perf_counter() - start)
    figures = {"size": size, "seconds": statistics.median(times[1:]), "times_s": times}
    if device.type == "cuda":
        figures["peak_memory_gb"] = torch.cuda.max_memory_allocated(device) / 1e9
        memory = f"peak {figures['peak_memory_gb']:.2f} GB allocated"
    else:
        figures["peak_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
        memory = f"process peak RSS {figures['peak_rss_gb']:.2f} GB"
    if not torch.isfinite(x2).all():
        return Check(name, "fail", "non-finite output", figures)
    return Check(name, "pass", f"{figures['seconds']:.3f} s (median of 2 after a warm-up), {memory}", figures)


def ddp(devices: int, out: Path, accelerator: str = "gpu", steps: int = 3, size: int = 64) -> Check:
    """A few steps of DDP training across ``devices`` processes (its own subprocess, as Lightning
    launches), then every rank's weights compared."""
    name = f"ddp {accelerator} x{devices}"
    out.mkdir(parents=True, exist_ok=True)
    for stale in out.glob("rank*.pt"):
        stale.unlink()
    command = [sys.executable, "-m", "deepfill.selftest", "ddp-worker", str(out), accelerator]
    command += [str(devices), str(steps), str(size)]
    run = subprocess.run(command, capture_output=True, text=True, check=False, timeout=600)
    files = sorted(out.glob("rank*.pt"))
    if run.returncode != 0 or len(files) != devices:
        tail = (run.stderr or run.stdout).strip().splitlines()[-1:] or ["no output"]
        return Check(name, "fail", f"exit {run.returncode}, {len(files)} of {devices} ranks saved: {tail[0]}")
    states = [torch.load(f, map_location="cpu", weights_only=True) for f in files]
    differ = [k for k in states[0] if any(not torch.equal(states[0][k], s[k]) for s in states[1:])]
    figures = {"ranks": devices, "steps": steps, "differing_tensors": len(differ)}
    if differ:
        return Check(name, "fail", f"weights differ between ranks after {steps} steps: {differ[:3]}", figures)
    return Check(name, "pass", f"{steps} steps on {devices} ranks, equal weights after", figures)


def _ddp_worker(out: str, accelerator: str, devices: str, steps: str, size: str) -> None:
    import pytorch_lightning as pl
    from pytorch_lightning.strategies import DDPStrategy

    from deepfill.data import masks
    from deepfill.data.datamodule import InpaintDataModule
    from deepfill.data.datasets import SampleImages
    from deepfill.models import GlobalCritic, InpaintGenerator, LocalCritic
    from deepfill.training.module import DeepFillModule

    n, size_ = int(devices), int(size)
    torch.manual_seed(0)  # every rank starts from the same weights, as the training command's
    module = DeepFillModule(
        InpaintGenerator(cnum=8),
        GlobalCritic(size_, cnum=8),
        LocalCritic(size_ // 2, cnum=8),
        n_critic=1,
        lpips=False,
        log_images_every_n_steps=0,
    )
    data = InpaintDataModule(
        train=SampleImages("train", size_, length=2 * n * int(steps)),
        val=None,
        train_masks=masks.rectangle,
        eval_masks=masks.centered_rectangle,
        batch_size=2,
    )
    backend = "nccl" if accelerator == "gpu" else "gloo"
    trainer = pl.Trainer(
        accelerator=accelerator,
        devices=n,
        strategy=DDPStrategy(process_group_backend=backend, find_unused_parameters=True),
        use_distributed_sampler=False,
        max_steps=int(steps),
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=out,
    )
    trainer.fit(module, data)
    torch.save(module.state_dict(), Path(out) / f"rank{trainer.global_rank}.pt")


# ---------------------------------------------------------------------------- the run
def run_selftest(options: SelfTestOptions, out: Path, say: Callable[[str], None] = print) -> list[Check]:
    """Every part on every visible device (CPU when none), within ``options.budget_s``."""
    start = time.monotonic()
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    devices = [torch.device("cuda", i) for i in range(gpus)] or [torch.device("cpu")]
    checks: list[Check] = []

    def record(check: Check) -> None:
        checks.append(check)
        say(f"{check.status.upper():5s} {check.name}: {check.detail}")

    record(environment(devices))
    parts: list[tuple[str, Callable[[], Check]]] = []

    def add(name: str, function: Callable[..., Check], *args) -> None:
        parts.append((name, lambda: function(*args)))

    device = devices[0]  # the per-device figures come from one device; DDP covers the rest
    kind = device.type
    precisions = options.precisions or precisions_for(device)
    if options.goldens is not None:
        for precision in precisions:
            add(f"parity {kind} {precision}", generator_parity, options.goldens, device, precision)
            add(f"training step {kind} {precision}", training_step_parity, options.goldens, device, precision)
    if options.goldens_v2 is not None:
        for precision in precisions:
            add(
                f"parity v2 {kind} {precision}", generator_parity, options.goldens_v2, device, precision, "v2"
            )
            add(
                f"training step v2 {kind} {precision}",
                training_step_parity_v2,
                options.goldens_v2,
                device,
                precision,
            )
    train = (options.train_size, options.train_batch)
    for precision in precisions:
        add(f"training iteration {kind} {precision}", training_iteration, device, precision, *train)
    for size in options.sizes:
        for precision in precisions:
            add(
                f"inference {kind} {precision} {size}²",
                inference,
                device,
                precision,
                size,
                options.cpu_chunk_bytes,
            )
    if (kind == "cuda") if options.compile is None else options.compile:
        # Last: compiling takes minutes, and the budget should go to the other parts first.
        for precision in precisions:
            name = f"training iteration {kind} {precision} compiled"
            add(name, training_iteration, device, precision, *train, True)
    if options.goldens is None:
        record(Check("parity", "skip", "no goldens folder given (--goldens <official_v1 folder>)"))
    if len(devices) >= 2 and options.ddp:
        add(f"ddp gpu x{len(devices)}", ddp, len(devices), out / "ddp")
    elif devices[0].type == "cpu":
        record(Check("ddp", "skip", "no GPU visible (DDP across GPUs needs two or more)"))
    else:
        record(Check("ddp", "skip", "one GPU visible (DDP across GPUs needs two or more)"))
    with quiet_loggers("pytorch_lightning", "lightning.pytorch"):  # start-up lines, tips
        for name, part in parts:
            _run_part(name, part, start, options.budget_s, record)
    return checks


def _run_part(
    name: str, part: Callable[[], Check], start: float, budget_s: float, record: Callable[[Check], None]
) -> None:
    if time.monotonic() - start > budget_s:
        record(Check(name, "skip", f"the time budget of {budget_s:.0f} s was spent"))
        return
    try:
        record(part())
    except torch.cuda.OutOfMemoryError as error:
        record(Check(name, "fail", f"out of device memory: {str(error).splitlines()[0]}"))
    except Exception as error:  # one failing part must not hide the others
        message = str(error).splitlines()[0] if str(error) else ""
        record(Check(name, "fail", f"{type(error).__name__}: {message}"))
    finally:
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def verdict(checks: list[Check]) -> str:
    failed = [c.name for c in checks if c.status == "fail"]
    counts = {s: sum(c.status == s for c in checks) for s in ("pass", "fail", "skip")}
    gpu = any(c.name == "environment" and c.figures.get("gpus") for c in checks)
    where = "" if gpu else " (no GPU visible: the CPU part only)"
    summary = f"{counts['pass']} passed, {counts['fail']} failed, {counts['skip']} skipped"
    if failed:
        return f"FAIL{where}: {summary}; failed: {', '.join(failed)}"
    return f"PASS{where}: {summary}"


def write_report(checks: list[Check], out: Path, seconds: float) -> tuple[Path, Path]:
    """``report.json`` and ``report.md`` in ``out`` (written whole, then renamed)."""
    from deepfill.evaluation.tables import markdown_table
    from deepfill.utils.files import atomic_path

    out.mkdir(parents=True, exist_ok=True)
    line = verdict(checks)
    data = {"verdict": line, "seconds": seconds, "checks": [asdict(c) for c in checks]}
    rows = markdown_table(["check", "status", "detail"], [[c.name, c.status, c.detail] for c in checks])
    env = next((c.figures for c in checks if c.name == "environment"), {})
    markdown = "\n".join(
        [
            "# deepfill-selftest",
            "",
            f"**{line}** ({seconds:.0f} s)",
            "",
            *rows,
            "",
            "## Environment",
            "",
            "```json",
            json.dumps(env, indent=2),
            "```",
            "",
        ]
    )
    json_path, md_path = out / "report.json", out / "report.md"
    for path, text in ((json_path, json.dumps(data, indent=2)), (md_path, markdown)):
        with atomic_path(path) as tmp:
            tmp.write_text(text)
    return json_path, md_path


if __name__ == "__main__" and len(sys.argv) == 7 and sys.argv[1] == "ddp-worker":
    _ddp_worker(*sys.argv[2:])
