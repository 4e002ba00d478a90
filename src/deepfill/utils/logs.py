"""Quieting other libraries: their loggers around a call that would print their INFO lines, and
the warnings they raise about each other's internals, which a user cannot act on."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["ignore_library_internals", "quiet_loggers"]

# (message pattern, category) of warnings one dependency raises about another's internals.
_LIBRARY_INTERNALS = (
    # torch >= 2.10 deprecates a class Lightning's own pytree helper still uses, once per fit.
    (r"`isinstance\(treespec, LeafSpec\)` is deprecated", FutureWarning),
)


def ignore_library_internals() -> None:
    """Hide the warnings of :data:`_LIBRARY_INTERNALS` for the rest of the process: a training
    log shows the user's warnings, not a library's notes on another library."""
    for message, category in _LIBRARY_INTERNALS:
        warnings.filterwarnings("ignore", message=message, category=category)


@contextmanager
def quiet_loggers(*names: str, level: int = logging.WARNING) -> Iterator[None]:
    """Raise the loggers ``names`` to ``level`` for the block, then restore their levels."""
    loggers = [logging.getLogger(name) for name in names]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(level)
    try:
        yield
    finally:
        for logger, old in zip(loggers, levels, strict=True):
            logger.setLevel(old)
