"""Which device a command runs on (``device=auto|cpu|cuda|cuda:N``)."""

from __future__ import annotations

from deepfill.utils.errors import UserError

__all__ = ["resolve_device"]


def resolve_device(name: str) -> str:
    """``"auto"``: the GPU when there is one, else the CPU; ``"gpu"`` means ``"cuda"``. Raises
    :class:`~deepfill.utils.errors.UserError` for an unknown device or a GPU this machine lacks."""
    import torch

    name = str(name)
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "gpu" or name.startswith("gpu:"):
        name = "cuda" + name[3:]
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise UserError(f"device: unknown device {name!r}; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise UserError(f"device={name}: no CUDA GPU is available here; use device=cpu or device=auto")
        if device.index is not None and device.index >= count:
            raise UserError(f"device={name}: this machine has {count} GPU(s) (cuda:0 to cuda:{count - 1})")
    return str(device)
