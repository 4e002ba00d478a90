"""Config helpers shared by the entry points: resolvers, W&B mode, the config folder."""

from __future__ import annotations

import netrc
import os
from pathlib import Path

from omegaconf import OmegaConf

__all__ = ["CONFIG_DIR", "register_resolvers", "resolve_device", "wandb_has_credentials"]

# conf/ sits at the top of the repository, next to src/.
CONFIG_DIR = Path(__file__).resolve().parents[2] / "conf"


def device_count(pool=None) -> int:
    """Devices a ``launcher=local_gpus`` sweep shares out: ``len(pool)``, or the visible GPUs."""
    from .devices import visible_gpus

    count = len(pool) if pool is not None else len(visible_gpus())
    if count < 1:
        raise ValueError(
            "launcher=local_gpus: no GPU found (CUDA_VISIBLE_DEVICES, nvidia-smi); "
            "set job_devices.pool=[0,1,...] or use launcher=basic"
        )
    return count


def optimization_direction(metric: str | None) -> str:
    """Optuna's direction for a metric: ``maximize`` for PSNR/SSIM, ``minimize`` for LPIPS and errors."""
    if not metric:
        raise ValueError("optimized_metric: a search needs a metric to optimise, e.g. val/lpips")
    from .sweep import higher_is_better

    return "maximize" if higher_is_better(metric) else "minimize"


def ensure_dir(path: str) -> str:
    """Create ``path`` (a folder another tool writes into before Hydra would create it); returns it."""
    Path(path).mkdir(parents=True, exist_ok=True)
    return path


_RESOLVERS = {
    "half": lambda x: int(x) // 2,
    "scale": lambda x, factor: round(int(x) * float(factor)),
    "mul": lambda a, b: int(a) * int(b),
    "device_count": device_count,
    "direction": optimization_direction,
    "ensure_dir": ensure_dir,
}


def register_resolvers() -> None:
    """``${half:x}`` (integer half, e.g. the local critic's crop), ``${scale:x,f}`` (``x * f``
    rounded), ``${mul:a,b}``,
    ``${device_count:pool}``, ``${direction:metric}`` and ``${ensure_dir:path}``."""
    for name, function in _RESOLVERS.items():
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, function)


def resolve_device(name: str) -> str:
    """``"auto"``: the GPU when there is one, else the CPU; any other name is returned as is."""
    if name != "auto":
        return name
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def wandb_has_credentials() -> bool:
    """True when W&B can log online: an API key in the environment or in ~/.netrc."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        path = os.environ.get("NETRC", str(Path.home() / ".netrc"))
        return netrc.netrc(path).authenticators("api.wandb.ai") is not None
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False


register_resolvers()
