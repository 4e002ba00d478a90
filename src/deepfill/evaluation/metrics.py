"""Evaluation metrics on composited outputs, in [0,1]: PSNR, SSIM, LPIPS, L1 and L2 in the hole.

One definition of each, :func:`image_metrics`, per image; every report is the **mean over
images** (the inpainting papers' convention: PSNR is the mean of per-image PSNRs, not the PSNR of
a pooled MSE). Validation, test, ``deepfill-eval`` and the end-of-training comparison all call it.
It always computes in float32, also inside a bf16 autocast region (SSIM's Gaussian filter and
LPIPS lose their meaning in bf16). :class:`InpaintingMetrics` accumulates the per-image values
in ``torchmetrics`` states, so the means are synchronised across DDP ranks.
LPIPS uses the ``lpips`` package (AlexNet backbone). Its linear heads ship with the package;
the AlexNet backbone weights are torchvision's and are downloaded to
``$TORCH_HOME/hub/checkpoints/`` on first use. Without network and without that file, LPIPS is
skipped with one warning line that says how to provide it (or the run stops when it is required).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torchmetrics
from torchmetrics.functional.image import structural_similarity_index_measure

__all__ = [
    "ALEXNET_URL",
    "METRICS",
    "METRIC_NAMES",
    "ImageMean",
    "InpaintingMetrics",
    "LPIPSMetric",
    "Metric",
    "alexnet_weights_path",
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

ALEXNET_URL = "https://download.pytorch.org/models/alexnet-owt-7be5be79.pth"


def hole_l1(prediction: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-image mean absolute error inside the hole: (N,). Images in [0,1]; mask 1 = hole."""
    mask = mask.expand_as(prediction)
    return ((prediction - target).abs() * mask).sum(dim=(1, 2, 3)) / mask.sum(dim=(1, 2, 3)).clamp_min(1)


def hole_l2(prediction: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-image mean squared error inside the hole: (N,)."""
    mask = mask.expand_as(prediction)
    return ((prediction - target).square() * mask).sum(dim=(1, 2, 3)) / mask.sum(dim=(1, 2, 3)).clamp_min(1)


def _ssim(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
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
    return -10.0 * torch.log10(mse)


def _float32_region(device: torch.device):
    # Metrics must not run in a surrounding bf16 autocast (Lightning's validation under bf16-mixed).
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
    with torch.no_grad(), _float32_region(completed.device):
        a, b, m = completed.detach().float(), target.detach().float(), mask.detach().float()
        values = {}
        for name, spec in METRICS.items():
            if spec.compute is not None:
                values[name] = spec.compute(a, b, m)
            elif name == "lpips" and lpips_net is not None:
                values[name] = lpips_net(a * 2 - 1, b * 2 - 1).flatten().float()
    return values


class ImageMean(torchmetrics.Metric):
    """Mean over images of a per-image value, accumulated in float64 and summed across ranks."""

    full_state_update = False

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.add_state("total", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, values: torch.Tensor) -> None:
        self.total += values.detach().double().sum()
        self.count += values.numel()

    def compute(self) -> torch.Tensor:
        return (self.total / self.count.clamp_min(1)).float()


def alexnet_weights_path() -> Path:
    """Where torchvision looks for the AlexNet weights LPIPS needs."""
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(ALEXNET_URL).name


class LPIPSMetric(torchmetrics.Metric):
    """LPIPS (``lpips`` package, AlexNet) averaged over images, synchronised across ranks.

    Args:
        pretrained_backbone: load torchvision's AlexNet weights (the real metric). ``False``
            keeps a randomly initialised backbone — only for tests of the plumbing.
        net: the ``lpips`` backbone (``alex``, ``vgg``, ``squeeze``).
    Inputs are images in [0,1].
    """

    full_state_update = False
    higher_is_better = False

    def __init__(self, pretrained_backbone: bool = True, net: str = "alex", **kwargs) -> None:
        super().__init__(**kwargs)
        import lpips

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torchvision's 'pretrained' deprecation chatter
            network = lpips.LPIPS(net=net, pretrained=True, pnet_rand=not pretrained_backbone, verbose=False)
        # Held outside the module tree: fixed weights that must not bloat training checkpoints.
        self._network = [network.eval().requires_grad_(False)]
        self.add_state("total", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    @property
    def net(self) -> torch.nn.Module:
        return self._network[0]

    def network_on(self, device: torch.device) -> torch.nn.Module:
        """The backbone, moved to ``device`` on first use there."""
        net = self.net
        if next(net.parameters()).device != device:
            net.to(device)
        return net

    def update(self, prediction: torch.Tensor, target: torch.Tensor) -> None:
        net = self.network_on(prediction.device)
        with torch.no_grad(), _float32_region(prediction.device):
            values = net(prediction.float() * 2 - 1, target.float() * 2 - 1).flatten()
        self.total += values.double().sum()
        self.count += values.numel()

    def compute(self) -> torch.Tensor:
        return (self.total / self.count.clamp_min(1)).float()


def _lpips_available(required: bool) -> bool:
    """True when the AlexNet weights are on disk or could be downloaded now."""
    path = alexnet_weights_path()
    if path.is_file():
        return True
    try:
        torch.hub.load_state_dict_from_url(ALEXNET_URL, progress=False)
        return True
    except Exception as error:  # no network, proxy, disk: all end the same way
        reason = f"{type(error).__name__}: {error}"
    torch_home = os.environ.get("TORCH_HOME", "~/.cache/torch")
    message = (
        f"LPIPS needs the AlexNet weights at {path} and downloading them failed ({reason}); "
        f"put {ALEXNET_URL} there (TORCH_HOME={torch_home})"
    )
    if required:
        raise FileNotFoundError(message)
    warnings.warn(f"{message}; LPIPS is skipped", RuntimeWarning, stacklevel=3)
    return False


class InpaintingMetrics(torch.nn.Module):
    """Means over images of :func:`image_metrics`, synchronised across DDP ranks.

    Args:
        lpips: compute LPIPS (when its backbone weights are available).
        lpips_required: stop with an error when LPIPS cannot be computed.
        lpips_pretrained: see :class:`LPIPSMetric` (tests use ``False``).
    ``update(completed, target, mask)`` with images in [0,1]; ``compute()`` returns a dict of
    floats keyed ``psnr``, ``ssim``, ``lpips`` (when on), ``l1_hole``, ``l2_hole``.
    """

    def __init__(
        self, lpips: bool = True, lpips_required: bool = False, lpips_pretrained: bool = True
    ) -> None:
        super().__init__()
        self.psnr, self.ssim = ImageMean(), ImageMean()
        self.l1_hole, self.l2_hole = ImageMean(), ImageMean()
        use_lpips = lpips and (not lpips_pretrained or _lpips_available(lpips_required))
        self.lpips = LPIPSMetric(pretrained_backbone=lpips_pretrained) if use_lpips else None

    def update(self, completed: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> None:
        values = image_metrics(completed, target, mask)
        for name in ("psnr", "ssim", "l1_hole", "l2_hole"):
            getattr(self, name).update(values[name])
        if self.lpips is not None:
            self.lpips.update(completed, target)

    def metrics(self) -> dict[str, torchmetrics.Metric]:
        out = {"psnr": self.psnr, "ssim": self.ssim, "l1_hole": self.l1_hole, "l2_hole": self.l2_hole}
        if self.lpips is not None:
            out["lpips"] = self.lpips
        return out

    def compute(self) -> dict[str, float]:
        return {name: float(metric.compute()) for name, metric in self.metrics().items()}
