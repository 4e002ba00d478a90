"""Whether W&B can log online on this machine."""

from __future__ import annotations

import netrc
import os
from pathlib import Path

__all__ = ["wandb_has_credentials"]


def wandb_has_credentials() -> bool:
    """True when W&B can log online: an API key in the environment or in ~/.netrc."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        path = os.environ.get("NETRC", str(Path.home() / ".netrc"))
        return netrc.netrc(path).authenticators("api.wandb.ai") is not None
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False
