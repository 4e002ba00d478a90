"""Quieting other libraries: their loggers around a call that would print their INFO lines, and
the warnings they raise about each other's internals, which a user cannot act on."""

from __future__ import annotations

import logging
import re
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["ignore_library_internals", "quiet_loggers"]

# (message pattern, category) of warnings one dependency raises about another's internals.
_LIBRARY_INTERNALS = (
    # torch >= 2.10 deprecates a class Lightning's own pytree helper still uses, once per fit.
    (r"`isinstance\(treespec, LeafSpec\)` is deprecated", FutureWarning),
)

# (logger name, message pattern) of log lines that advertise a service rather than report on the
# run: Lightning names a hosted logging platform at every fit.
_LIBRARY_ADVERTS = (
    ("pytorch_lightning.utilities.rank_zero", r"Tip: For seamless cloud logging"),
    ("lightning.pytorch.utilities.rank_zero", r"Tip: For seamless cloud logging"),
)


class _DropMatching(logging.Filter):
    """Drops the records whose message matches ``pattern``."""

    def __init__(self, pattern: str) -> None:
        super().__init__()
        self.pattern = re.compile(pattern)

    def filter(self, record: logging.LogRecord) -> bool:
        return not self.pattern.search(record.getMessage())


def ignore_library_internals() -> None:
    """Hide the warnings of :data:`_LIBRARY_INTERNALS` and the log lines of
    :data:`_LIBRARY_ADVERTS` for the rest of the process: a training log shows the user's
    warnings and the run's own lines, not a library's notes on another library or its tips."""
    for message, category in _LIBRARY_INTERNALS:
        warnings.filterwarnings("ignore", message=message, category=category)
    for name, pattern in _LIBRARY_ADVERTS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropMatching) and f.pattern.pattern == pattern for f in logger.filters):
            logger.addFilter(_DropMatching(pattern))


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
