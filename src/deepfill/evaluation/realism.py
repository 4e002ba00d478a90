"""Realism of completions, as inpainting papers since 2021 report it: FID and KID between the
completed images and the real ones, and P-IDS / U-IDS (CoModGAN, Zhao et al. ICLR 2021).

All four read the 2048-d pool features of the 2015 TF-Inception network, the features
torch-fidelity, torchmetrics, clean-fid and pytorch-fid use (here through torch-fidelity's
port, :class:`InceptionFeatures`). Features are collected batch by batch
(:class:`RealismFeatures`): memory grows with the feature matrix only (8 KiB per image and set).

- FID: the Frechet distance between Gaussians fitted to the two feature sets. Biased on small
  sets (it falls as the set grows): on a few dozen images it is only indicative.
- KID: the unbiased squared MMD with the cubic polynomial kernel, mean and spread over random
  subsets; unbiased, so comparable across set sizes, the one to read on small sets.
- U-IDS: the misclassification rate of a linear SVM told to separate real from completed
  features (0.5: indistinguishable). P-IDS: the fraction of pairs whose completion the SVM scores
  as more real than its own original.

The Inception weights are downloaded by torch-fidelity to ``$TORCH_HOME/hub/checkpoints`` on
first use; offline, the file is given with a key (``inception_weights=``), and without it these
metrics are skipped with one line saying where the file comes from.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from deepfill.utils.downloads import download_failure

__all__ = [
    "INCEPTION_URL",
    "REALISM_METRICS",
    "InceptionFeatures",
    "RealismFeatures",
    "SetMetric",
    "frechet_distance",
    "inception_discriminative_scores",
    "inception_weights_path",
    "kernel_inception_distance",
    "load_inception",
    "realism_scores",
]

# torch-fidelity's conversion of the 2015 TF-Inception graph (what its FID/KID use).
INCEPTION_URL = "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/weights-inception-2015-12-05-6726825d.pth"
FEATURES = 2048


@dataclass(frozen=True)
class SetMetric:
    """A metric of a set of images (not a mean over images)."""

    name: str
    higher_is_better: bool
    display: str
    format: str


REALISM_METRICS: dict[str, SetMetric] = {
    m.name: m
    for m in (
        SetMetric("fid", False, "FID", ".2f"),
        SetMetric("kid", False, "KID", ".4f"),
        SetMetric("kid_std", False, "KID sd", ".4f"),
        SetMetric("p_ids", True, "P-IDS", ".3f"),
        SetMetric("u_ids", True, "U-IDS", ".3f"),
    )
}


def inception_weights_path(given: str | os.PathLike | None = None) -> Path:
    """``given``, or where torch-fidelity keeps the downloaded weights (``$TORCH_HOME/hub/checkpoints``)."""
    if given is not None:
        return Path(given).expanduser()
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(INCEPTION_URL).name


class InceptionFeatures(torch.nn.Module):
    """The 2048-d pool features of the TF-Inception network (torch-fidelity's
    ``FeatureExtractorInceptionV3``, weights from the file ``weights``).

    ``forward(images)``: (N,3,H,W) in [0,1], any size (resized inside, as TF did) -> (N,2048)
    float64. The images are quantised to 8 bits first, as the saved PNGs of a completion are."""

    def __init__(self, weights: str | os.PathLike) -> None:
        super().__init__()
        from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

        self.net = FeatureExtractorInceptionV3(
            "inception-v3-compat", [str(FEATURES)], feature_extractor_weights_path=str(weights)
        )

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        pixels = (images.float().clamp(0, 1) * 255).round().to(torch.uint8)
        (features,) = self.net(pixels)
        return features.double()


def load_inception(weights: str | os.PathLike | None, required: bool = False) -> InceptionFeatures | None:
    """The feature network, or None (with one warning line) when its weights are not on disk and
    cannot be downloaded now; ``required``: raise :class:`FileNotFoundError` instead."""
    path = inception_weights_path(weights)
    if weights is None and not path.is_file():
        failure = download_failure(INCEPTION_URL)
        reason = f"downloading them failed ({failure})" if failure else ""
    else:
        reason = "" if path.is_file() else "no such file"
    if reason:
        message = (
            f"FID, KID, P-IDS and U-IDS need the Inception weights at {path}; {reason}: download "
            f"{INCEPTION_URL} and give it with inception_weights=<file> (or put it there)"
        )
        if required:
            raise FileNotFoundError(message)
        warnings.warn(f"{message}; they are skipped", RuntimeWarning, stacklevel=2)
        return None
    return InceptionFeatures(path)


class RealismFeatures:
    """Inception features of the real images and of each method's completions, collected batch by
    batch. ``add_real(images)`` once per batch, ``add(method, images)`` per method and batch, in
    the same image order; ``scores(method, index)`` computes the set metrics over the images of
    ``index`` (all when None)."""

    def __init__(self, network: torch.nn.Module) -> None:
        self.network = network
        self._real: list[np.ndarray] = []
        self._fake: dict[str, list[np.ndarray]] = {}

    def _features(self, images: torch.Tensor) -> np.ndarray:
        device = next(self.network.parameters()).device
        return self.network(images.to(device)).cpu().numpy().astype(np.float32)

    def add_real(self, images: torch.Tensor) -> None:
        """``images``: (N,3,H,W) in [0,1]."""
        self._real.append(self._features(images))

    def add(self, method: str, images: torch.Tensor) -> None:
        """``images``: (N,3,H,W) in [0,1], the completions of the batch last given to ``add_real``."""
        self._fake.setdefault(method, []).append(self._features(images))

    def real(self) -> np.ndarray:
        return np.concatenate(self._real) if self._real else np.zeros((0, FEATURES), np.float32)

    def fake(self, method: str) -> np.ndarray:
        parts = self._fake.get(method, [])
        return np.concatenate(parts) if parts else np.zeros((0, FEATURES), np.float32)

    def scores(self, method: str, index: np.ndarray | None = None) -> dict[str, float]:
        real, fake = self.real(), self.fake(method)
        if index is not None:
            real, fake = real[index], fake[index]
        return realism_scores(real, fake)


def _covariance_factor(centred: np.ndarray) -> np.ndarray:
    """``L`` with ``L @ L.T`` the unbiased covariance of the (n,D) centred rows: (D,n) when
    n <= D (the rows themselves), else (D,D) from its eigendecomposition."""
    n, dims = centred.shape
    if n <= dims:
        return centred.T / np.sqrt(n - 1)
    values, vectors = np.linalg.eigh(centred.T @ centred / (n - 1))
    return vectors * np.sqrt(np.clip(values, 0.0, None))


def frechet_distance(real: np.ndarray, fake: np.ndarray) -> float:
    """FID of two feature sets (N,D) and (M,D): ``|mu_r - mu_f|^2 + tr(C_r + C_f - 2 (C_r C_f)^(1/2))``
    with unbiased covariances.

    ``tr (C_r C_f)^(1/2)`` is the sum of the singular values of ``L_r^T L_f`` for any factors
    ``C = L L^T`` (the eigenvalues of ``C_r C_f`` are the squared singular values of
    ``L_r^T L_f``): exact, real, and on sets smaller than D an N x M problem instead of the
    D x D matrix square root."""
    real, fake = np.asarray(real, np.float64), np.asarray(fake, np.float64)
    if len(real) < 2 or len(fake) < 2:
        raise ValueError(f"FID needs at least 2 images per set, got {len(real)} and {len(fake)}")
    mu_r, mu_f = real.mean(axis=0), fake.mean(axis=0)
    l_r, l_f = _covariance_factor(real - mu_r), _covariance_factor(fake - mu_f)
    cross = np.linalg.svd(l_r.T @ l_f, compute_uv=False).sum()
    return float(np.sum((mu_r - mu_f) ** 2) + np.sum(l_r**2) + np.sum(l_f**2) - 2.0 * cross)


def kernel_inception_distance(
    real: np.ndarray, fake: np.ndarray, subsets: int = 100, subset_size: int = 1000, seed: int = 0
) -> tuple[float, float]:
    """KID (Binkowski et al. 2018): the unbiased squared MMD with the kernel
    ``k(x, y) = (x.y / D + 1)^3``, mean and standard deviation over ``subsets`` random subsets of
    ``min(subset_size, N, M)`` images of each set (drawn with ``seed``)."""
    real, fake = np.asarray(real, np.float64), np.asarray(fake, np.float64)
    size = min(subset_size, len(real), len(fake))
    if size < 2:
        raise ValueError(f"KID needs at least 2 images per set, got {len(real)} and {len(fake)}")
    rng = np.random.default_rng(seed)
    dims = real.shape[1]
    values = []
    for _ in range(subsets):
        x = real[rng.choice(len(real), size, replace=False)]
        y = fake[rng.choice(len(fake), size, replace=False)]
        k_xx, k_yy, k_xy = ((a @ b.T / dims + 1.0) ** 3 for a, b in ((x, x), (y, y), (x, y)))
        off = size * (size - 1)
        values.append(
            (k_xx.sum() - np.trace(k_xx)) / off + (k_yy.sum() - np.trace(k_yy)) / off - 2.0 * k_xy.mean()
        )
    return float(np.mean(values)), float(np.std(values))


def inception_discriminative_scores(real: np.ndarray, fake: np.ndarray) -> tuple[float, float]:
    """``(P-IDS, U-IDS)`` of N real images and their N completions (row i of ``fake`` completes
    row i of ``real``): a linear SVM (``LinearSVC(dual=False)``) fit on all 2N features; U-IDS is
    its misclassification rate, P-IDS the fraction of pairs whose completion it scores as more
    real than the original."""
    from sklearn.svm import LinearSVC

    real, fake = np.asarray(real, np.float64), np.asarray(fake, np.float64)
    if real.shape != fake.shape or len(real) < 2:
        raise ValueError(f"P-IDS/U-IDS need N >= 2 pairs, got {real.shape} and {fake.shape}")
    inputs = np.concatenate([real, fake])
    labels = np.concatenate([np.ones(len(real)), np.zeros(len(fake))])
    svm = LinearSVC(dual=False)
    svm.fit(inputs, labels)
    u_ids = 1.0 - float(svm.score(inputs, labels))  # a score of 0 counts as "completed", as predict() does
    p_ids = float(np.mean(svm.decision_function(fake) > svm.decision_function(real)))
    return p_ids, u_ids


def realism_scores(real: np.ndarray, fake: np.ndarray) -> dict[str, float]:
    """FID, KID (mean and sd), P-IDS and U-IDS of paired feature sets (N,2048)."""
    kid, kid_std = kernel_inception_distance(real, fake)
    p_ids, u_ids = inception_discriminative_scores(real, fake)
    return {
        "fid": frechet_distance(real, fake),
        "kid": kid,
        "kid_std": kid_std,
        "p_ids": p_ids,
        "u_ids": u_ids,
    }
