"""Evaluation metrics on composited outputs, in [0,1]: PSNR, SSIM, LPIPS, L1 and L2 in the hole.

One definition of each, :func:`image_metrics`, per image; every report is the **mean over
images** (the inpainting papers' convention: PSNR is the mean of per-image PSNRs, not the PSNR of
a pooled MSE). Validation, test, ``deepfill-eval`` and the end-of-training comparison all call it.
It always computes in float32, also inside a bf16 autocast region (SSIM's Gaussian filter and
LPIPS lose their meaning in bf16). :mod:`deepfill.evaluation.means` accumulates the per-image
values over a run, synchronised across DDP ranks.

The registry (:data:`METRICS`: names, directions, how each is shown) is read by sweeps, their
tables and the configs' resolvers in processes that never compute a metric, so this module
imports neither PyTorch nor torchmetrics itself: the functions take tensors and import what they
need when called.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

__all__ = [
    "METRICS",
    "METRIC_NAMES",
    "Metric",
    "higher_is_better",
    "hole_l1",
    "hole_l2",
    "image_metrics",
    "metric_spec",
    "network_free_metrics",
    "optimization_direction",
    "psnr",
    "selection_metric",
]

# PSNR of an image restored exactly (MSE 0) would be infinite and swamp any mean: cap at 100 dB.
_MIN_MSE = 1e-10


def hole_l1(prediction: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-image mean absolute error inside the hole: (N,). Images in [0,1]; mask 1 = hole."""
    mask = mask.expand_as(prediction)
    return ((prediction - target).abs() * mask).sum(dim=(1, 2, 3)) / mask.sum(dim=(1, 2, 3)).clamp_min(1)


def hole_l2(prediction: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-image mean squared error inside the hole: (N,)."""
    mask = mask.expand_as(prediction)
    return ((prediction - target).square() * mask).sum(dim=(1, 2, 3)) / mask.sum(dim=(1, 2, 3)).clamp_min(1)


def _ssim(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    from torchmetrics.functional.image import structural_similarity_index_measure

    return structural_similarity_index_measure(a, b, data_range=1.0, reduction="none")


@dataclass(frozen=True)
class Metric:
    """One evaluation metric: everything else (validation logs, checkpoint selection, sweep
    tables and their order, the baseline comparison, Optuna's direction) reads these fields.

    ``compute(completed, target, mask) -> (N,)`` per image, images in [0,1], mask 1 = hole;
    None for LPIPS, which needs its network (:func:`image_metrics`)."""

    name: str  # the key of logs and tables: val/<name>, <name>_mean
    higher_is_better: bool
    display: str  # the name in printed lines
    format: str  # of one value in printed lines
    unit: str
    compute: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor] | None
    in_summary: bool = True  # in the one-line summaries and the baseline comparison
    progress_bar: bool = False  # shown in the training progress bar


METRICS: dict[str, Metric] = {
    m.name: m
    for m in (
        Metric("psnr", True, "PSNR", "6.2f", "dB", lambda a, b, m: psnr(a, b), progress_bar=True),
        Metric("ssim", True, "SSIM", ".3f", "", _ssim),
        Metric("lpips", False, "LPIPS", ".4f", "", None, in_summary=False, progress_bar=True),
        Metric("l1_hole", False, "L1 in the hole", ".4f", "", hole_l1),
        Metric("l2_hole", False, "L2 in the hole", ".4f", "", hole_l2, in_summary=False),
    )
}
METRIC_NAMES = tuple(METRICS)
# Table columns a metric may carry (results.csv: val/psnr_mean, val/psnr_ci_low, ...).
_SUFFIXES = ("_mean", "_std", "_ci_low", "_ci_high", "_diff", "_diff_ci_low", "_diff_ci_high", "_diff_n")


def network_free_metrics() -> list[str]:
    """The metrics computed without a network (all but LPIPS): what the baseline comparison
    at the end of training reports."""
    return [name for name, spec in METRICS.items() if spec.compute is not None]


def metric_spec(metric: str) -> Metric | None:
    """The registered metric a logged or tabulated name refers to (``val/psnr``,
    ``test/l1_hole_mean``, ``lpips``), or None."""
    base = metric.rsplit("/", 1)[-1]
    for suffix in _SUFFIXES:
        if base.endswith(suffix) and base[: -len(suffix)] in METRICS:
            base = base[: -len(suffix)]
            break
    return METRICS.get(base)


def optimization_direction(metric: str | None) -> str:
    """Optuna's direction for a metric (the ``${direction:metric}`` resolver): ``maximize`` for
    PSNR/SSIM, ``minimize`` for LPIPS, errors and losses."""
    if not metric:
        raise ValueError("optimized_metric: a search needs a metric to optimise, e.g. val/lpips")
    return "maximize" if higher_is_better(metric) else "minimize"


def higher_is_better(metric: str) -> bool:
    """From the registry (``val/psnr`` -> True, ``val/lpips`` -> False); a loss (a name that ends
    in ``loss``) is minimised. Any other name is refused, not guessed: ranking a sweep or keeping
    a checkpoint the wrong way round would go unnoticed."""
    spec = metric_spec(metric)
    if spec is not None:
        return spec.higher_is_better
    if metric.rsplit("/", 1)[-1].endswith("loss"):
        return False
    known = ", ".join(f"<split>/{name}" for name in METRICS)
    raise ValueError(f"{metric}: not a metric of this project ({known}, or a loss), its direction is unknown")


def selection_metric(lpips: bool, split: str = "val") -> str:
    """The metric runs and checkpoints are ranked by: LPIPS when it is computed, else PSNR."""
    return f"{split}/lpips" if lpips else f"{split}/psnr"


def psnr(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR in dB (N,), images in [0,1]; capped at 100 dB for an exact match."""
    mse = (prediction - target).square().mean(dim=(1, 2, 3)).clamp_min(_MIN_MSE)
    return -10.0 * mse.log10()


def float32_region(device: torch.device):
    """A region where a surrounding autocast is off: metrics must not run in bf16 (Lightning's
    validation under bf16-mixed)."""
    import torch

    return torch.autocast(device_type=device.type, enabled=False)


def image_metrics(
    completed: torch.Tensor,
    target: torch.Tensor,
    mask: torch.Tensor,
    lpips_net: torch.nn.Module | None = None,
) -> dict[str, torch.Tensor]:
    """Per-image metrics, each (N,) float32: ``psnr``, ``ssim``, ``l1_hole``, ``l2_hole`` and, with
    an ``lpips`` network, ``lpips``. completed, target: (N,3,H,W) in [0,1]; mask: (N,1,H,W), 1 = hole.
    Computed in float32 whatever the autocast state."""
    import torch

    with torch.no_grad(), float32_region(completed.device):
        a, b, m = completed.detach().float(), target.detach().float(), mask.detach().float()
        values = {}
        for name, spec in METRICS.items():
            if spec.compute is not None:
                values[name] = spec.compute(a, b, m)
            elif name == "lpips" and lpips_net is not None:
                values[name] = lpips_net(a * 2 - 1, b * 2 - 1).flatten().float()
    return values
