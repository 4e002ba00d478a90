"""Downloading a weights file the way torch.hub does, quietly: the caller says the outcome."""

from __future__ import annotations

import contextlib
import io

__all__ = ["download_failure"]


def download_failure(url: str) -> str | None:
    """Fetch ``url`` into torch.hub's checkpoint folder (nothing when it is there already);
    None on success, else the reason in a few words (``URLError: ...``). torch.hub's own
    "Downloading ..." line on stdout is kept out of the command's output."""
    import torch

    try:
        with contextlib.redirect_stdout(io.StringIO()):
            torch.hub.load_state_dict_from_url(url, progress=False)
    except Exception as error:  # no network, proxy, disk: all end the same way
        return f"{type(error).__name__}: {error}"
    return None
