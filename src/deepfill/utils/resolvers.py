"""The config resolvers every command registers: ``${half:x}``, ``${scale:x,f}``,
``${mul:a,b}``, ``${ensure_dir:path}``, ``${budget_cap:budget}``; and the duration format of
``budget`` (:func:`duration_seconds`)."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

from omegaconf import OmegaConf

from deepfill.utils.errors import ConfigError

__all__ = ["budget_cap", "duration_seconds", "register_resolvers"]


def ensure_dir(path: str) -> str:
    """Create ``path`` (a folder another tool writes into before Hydra would create it); returns it."""
    Path(path).mkdir(parents=True, exist_ok=True)
    return path


_DURATION_UNITS = {"s": 1.0, "sec": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0}


def duration_seconds(value, key: str) -> float | None:
    """Seconds of a duration written ``6min``, ``90s``, ``1.5h`` or ``00:06:00`` (None stays None);
    ``key`` names the setting in the one-line error for anything else."""
    import re

    if value is None:
        return None
    text = str(value).strip().lower()
    found = re.fullmatch(r"(\d+(?:\.\d+)?)\s*(s|sec|m|min|h)", text)
    if found:
        seconds = float(found.group(1)) * _DURATION_UNITS[found.group(2)]
    elif re.fullmatch(r"\d+:\d{1,2}:\d{1,2}", text):
        hours, minutes, secs = (int(part) for part in text.split(":"))
        seconds = hours * 3600.0 + minutes * 60.0 + secs
    else:
        raise ConfigError(f"{key}: expected a duration such as 6min, 90s, 1.5h or 00:06:00, got {value!r}")
    if seconds <= 0:
        raise ConfigError(f"{key}: must be longer than 0, got {value!r}")
    return seconds


def budget_cap(budget, factor=2.0) -> str | None:
    """``trainer.max_time`` for a run with a time ``budget``: ``factor`` times the budget, as
    Lightning's ``DD:HH:MM:SS`` (None without a budget): a safety net the run does not reach."""
    seconds = duration_seconds(budget, "budget")
    if seconds is None:
        return None
    total = math.ceil(seconds * float(factor))
    days, rest = divmod(total, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{days:02d}:{hours:02d}:{minutes:02d}:{secs:02d}"


_RESOLVERS = {
    "half": lambda x: int(x) // 2,
    "scale": lambda x, factor: round(int(x) * float(factor)),
    "mul": lambda a, b: int(a) * int(b),
    "ensure_dir": ensure_dir,
    "budget_cap": budget_cap,
}


def register_resolvers(extra: dict[str, Callable] | None = None) -> None:
    """``${half:x}`` (integer half, e.g. the local critic's crop), ``${scale:x,f}`` (``x * f``
    rounded), ``${mul:a,b}``, ``${ensure_dir:path}``, ``${budget_cap:budget}`` (a run's
    ``max_time`` above its time budget); plus ``extra`` (name -> function), the resolvers the
    commands add from higher layers (:func:`deepfill.cli.launch.register_command_resolvers`)."""
    for name, function in {**_RESOLVERS, **(extra or {})}.items():
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, function)
