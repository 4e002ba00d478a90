"""``@RunIf(...)``: a test that needs an optional part of the machine runs where it is present
and is skipped, saying why, where it is not."""

from __future__ import annotations

import importlib.util
import sys

import pytest
import torch

__all__ = ["RunIf"]


def RunIf(  # noqa: N802 - used as a decorator, like pytest's marks
    *,
    tensorflow: bool = False,
    gpu: bool = False,
    no_gpu: bool = False,
    linux: bool = False,
) -> pytest.MarkDecorator:
    """A skip mark for the parts that are missing: ``tensorflow`` (the ``tf`` extra, installed by
    ``make install``; it is found without being imported, because TensorFlow and Triton each
    bundle LLVM and the second one loaded into a process crashes it), ``gpu`` (a CUDA device),
    ``no_gpu`` (a case about asking for a GPU that is not there), ``linux`` (glibc)."""
    reasons = []
    if tensorflow and importlib.util.find_spec("tensorflow") is None:
        reasons.append("needs the tf extra (`make install` installs it)")
    if gpu and not torch.cuda.is_available():
        reasons.append("needs a CUDA GPU")
    if no_gpu and torch.cuda.is_available():
        reasons.append("this machine has the GPU the case asks for")
    if linux and not sys.platform.startswith("linux"):
        reasons.append("needs Linux (glibc)")
    return pytest.mark.skipif(bool(reasons), reason="; ".join(reasons) or "runs here")
