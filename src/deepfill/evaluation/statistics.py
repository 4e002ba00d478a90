"""Statistics for comparing settings across replicate runs: mean, spread and Student-t intervals,
and paired differences between two settings run with the same seeds.

GAN training is noisy: the same recipe with another seed moves held-out PSNR by as much as many
of the effects a sweep looks for. A sweep with ``replicates=n`` trains each setting with seeds
``seed, seed + 1, ...``; every setting of one seed sees the same data order, training masks,
evaluation masks and initial weights (common random numbers), so the difference between two
settings is best measured seed by seed (paired), which cancels what the seed does to both.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np

__all__ = ["Difference", "Summary", "bootstrap_mean_difference", "paired_difference", "summarise_values"]

CONFIDENCE = 0.95


def _t_quantile(degrees: int, confidence: float = CONFIDENCE) -> float:
    from scipy.stats import t

    return float(t.ppf(0.5 + confidence / 2, degrees))


@dataclass(frozen=True)
class Summary:
    """``n`` values: their mean, sample standard deviation (n - 1) and the Student-t interval of
    the mean at :data:`CONFIDENCE`; ``std`` and the interval are NaN for ``n`` < 2."""

    n: int
    mean: float
    std: float
    ci_low: float
    ci_high: float


@dataclass(frozen=True)
class Difference:
    """Mean of the per-seed differences ``setting - reference`` over the ``n`` seeds both have,
    with its Student-t interval (NaN for ``n`` < 2). ``distinguishable``: the interval excludes
    zero (False when there is no interval)."""

    n: int
    mean: float
    ci_low: float
    ci_high: float

    @property
    def distinguishable(self) -> bool:
        return self.n >= 2 and (self.ci_low > 0 or self.ci_high < 0)


def summarise_values(values: Iterable[float]) -> Summary:
    """Mean, standard deviation and 95% Student-t interval of finite ``values`` (NaNs dropped)."""
    array = np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=np.float64)
    n = int(array.size)
    if n == 0:
        return Summary(0, math.nan, math.nan, math.nan, math.nan)
    mean = float(array.mean())
    if n < 2:
        return Summary(1, mean, math.nan, math.nan, math.nan)
    std = float(array.std(ddof=1))
    half = _t_quantile(n - 1) * std / math.sqrt(n)
    return Summary(n, mean, std, mean - half, mean + half)


def paired_difference(setting: Mapping[object, float], reference: Mapping[object, float]) -> Difference:
    """``setting - reference`` paired by key (the seed): only keys both have, with finite values."""
    keys = [
        k for k in setting if k in reference and math.isfinite(setting[k]) and math.isfinite(reference[k])
    ]
    summary = summarise_values(setting[k] - reference[k] for k in keys)
    return Difference(summary.n, summary.mean, summary.ci_low, summary.ci_high)


def bootstrap_mean_difference(
    a: np.ndarray, b: np.ndarray, draws: int = 10_000, seed: int = 0
) -> tuple[float, float, float]:
    """Paired bootstrap over images of ``mean(a - b)`` (``a``, ``b``: per-image values of two models
    on the same images and masks): the mean and the 2.5% and 97.5% percentiles. It measures how
    much the evaluation images alone move a comparison, not the training noise across seeds."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1 or a.size == 0:
        raise ValueError(f"a and b must be equal-length 1-D arrays, got {a.shape} and {b.shape}")
    diff = a - b
    rng = np.random.default_rng(seed)
    means = diff[rng.integers(0, diff.size, size=(draws, diff.size))].mean(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    return float(diff.mean()), float(low), float(high)
