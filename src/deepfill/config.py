"""Config helpers shared by the entry points: resolvers, W&B mode, the config folder."""

from __future__ import annotations

import netrc
import os
from pathlib import Path

from omegaconf import OmegaConf

__all__ = ["CONFIG_DIR", "register_resolvers", "resolve_device", "wandb_has_credentials"]

# conf/ sits at the top of the repository, next to src/.
CONFIG_DIR = Path(__file__).resolve().parents[2] / "conf"


def register_resolvers() -> None:
    """``${half:x}`` (integer half, e.g. the local critic's crop) and ``${mul:a,b}``."""
    if not OmegaConf.has_resolver("half"):
        OmegaConf.register_new_resolver("half", lambda x: int(x) // 2)
    if not OmegaConf.has_resolver("mul"):
        OmegaConf.register_new_resolver("mul", lambda a, b: int(a) * int(b))


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
