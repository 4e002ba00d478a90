"""Inference precision and compilation switches shared by the commands, inference and evaluation.

The checks import nothing heavy: the commands run them before loading PyTorch."""

from __future__ import annotations

from typing import TYPE_CHECKING

from deepfill.utils.errors import UserError

if TYPE_CHECKING:
    import torch

__all__ = ["PRECISIONS", "autocast", "check_compile", "check_precision"]

# Inference precisions: float32, or bfloat16 autocast for the convolutions (contextual attention's
# scores, softmax and offsets stay float32 inside it; its paste product takes bf16 operands).
# bf16 pays off on GPUs and on CPUs with AVX512-BF16 / AMX; its speed and quality cost are in
# BENCHMARKS.md.
PRECISIONS = ("fp32", "bf16")


def check_precision(precision: str) -> str:
    """The commands' check of their ``precision`` key: one line naming it when it is unknown."""
    if precision not in PRECISIONS:
        raise UserError(f"precision: must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    return precision


def autocast(device: torch.device, precision: str):
    """The autocast context of ``precision`` on ``device`` (a no-op for fp32)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    import torch

    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")


def check_compile(value: object) -> bool:
    """The ``compile`` key of the inference commands: true or false."""
    if not isinstance(value, bool):
        raise UserError(f"compile: expected true or false, got {value!r}")
    return value
