"""Evaluation metrics on composited outputs, in [0,1]: PSNR, SSIM, LPIPS, L1 and L2 in the hole.

All are ``torchmetrics`` metrics, so they accumulate per batch and synchronise across DDP ranks.
LPIPS uses the ``lpips`` package (AlexNet backbone). Its linear heads ship with the package;
the AlexNet backbone weights are torchvision's and are downloaded to
``$TORCH_HOME/hub/checkpoints/`` on first use. Without network and without that file, LPIPS is
skipped with one warning line that says how to provide it (or the run stops when it is required).
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import torch
import torchmetrics
from torchmetrics.image import PeakSignalNoiseRatio, StructuralSimilarityIndexMeasure

__all__ = [
    "ALEXNET_URL",
    "HoleError",
    "InpaintingMetrics",
    "LPIPSMetric",
    "alexnet_weights_path",
    "hole_l1",
    "hole_l2",
    "to_unit",
]

ALEXNET_URL = "https://download.pytorch.org/models/alexnet-owt-7be5be79.pth"


def to_unit(image: torch.Tensor) -> torch.Tensor:
    """[-1,1] -> [0,1], clamped."""
    return ((image + 1) / 2).clamp(0, 1)


def hole_l1(prediction: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-image mean absolute error inside the hole: (N,). Images in [0,1]; mask 1 = hole."""
    mask = mask.expand_as(prediction)
    return ((prediction - target).abs() * mask).sum(dim=(1, 2, 3)) / mask.sum(dim=(1, 2, 3)).clamp_min(1)


def hole_l2(prediction: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-image mean squared error inside the hole: (N,)."""
    mask = mask.expand_as(prediction)
    return ((prediction - target).square() * mask).sum(dim=(1, 2, 3)) / mask.sum(dim=(1, 2, 3)).clamp_min(1)


class HoleError(torchmetrics.Metric):
    """Mean over images of a per-image hole error (``hole_l1`` or ``hole_l2``)."""

    full_state_update = False
    higher_is_better = False

    def __init__(self, squared: bool = False, **kwargs) -> None:
        super().__init__(**kwargs)
        self.squared = squared
        self.add_state("total", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, prediction: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> None:
        values = (hole_l2 if self.squared else hole_l1)(prediction, target, mask)
        self.total += values.double().sum()
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

    def update(self, prediction: torch.Tensor, target: torch.Tensor) -> None:
        net = self.net
        if next(net.parameters()).device != prediction.device:
            net.to(prediction.device)
        with torch.no_grad():
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
    """PSNR, SSIM, LPIPS, L1/L2 in the hole on composited images in [0,1].

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
        self.psnr = PeakSignalNoiseRatio(data_range=1.0)
        self.ssim = StructuralSimilarityIndexMeasure(data_range=1.0)
        self.l1_hole = HoleError(squared=False)
        self.l2_hole = HoleError(squared=True)
        use_lpips = lpips and (not lpips_pretrained or _lpips_available(lpips_required))
        self.lpips = LPIPSMetric(pretrained_backbone=lpips_pretrained) if use_lpips else None

    def update(self, completed: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> None:
        completed, target = completed.float(), target.float()
        self.psnr.update(completed, target)
        self.ssim.update(completed, target)
        self.l1_hole.update(completed, target, mask)
        self.l2_hole.update(completed, target, mask)
        if self.lpips is not None:
            self.lpips.update(completed, target)

    def metrics(self) -> dict[str, torchmetrics.Metric]:
        out = {"psnr": self.psnr, "ssim": self.ssim, "l1_hole": self.l1_hole, "l2_hole": self.l2_hole}
        if self.lpips is not None:
            out["lpips"] = self.lpips
        return out

    def compute(self) -> dict[str, float]:
        return {name: float(metric.compute()) for name, metric in self.metrics().items()}

    def reset(self) -> None:
        for metric in self.metrics().values():
            metric.reset()
