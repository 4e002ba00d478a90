"""Means over images of the per-image metrics (:func:`deepfill.evaluation.metrics.image_metrics`)
across a validation, a test or an evaluation, in ``torchmetrics`` states, so that they are
synchronised across DDP ranks.

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

from deepfill.evaluation.metrics import float32_region, image_metrics
from deepfill.utils.downloads import download_failure

__all__ = ["ALEXNET_URL", "ImageMean", "InpaintingMetrics", "LPIPSMetric", "alexnet_weights_path"]

ALEXNET_URL = "https://download.pytorch.org/models/alexnet-owt-7be5be79.pth"


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
        with torch.no_grad(), float32_region(prediction.device):
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
    reason = download_failure(ALEXNET_URL)
    if reason is None:
        return True
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
