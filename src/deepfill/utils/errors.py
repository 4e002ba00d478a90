"""One error path for every command: a user's mistake ends in one line and exit status 2, a full
disk in one line naming the file and exit status 74, an interruption in one line and exit status
130, and a bug in our own code keeps its traceback. The project's error types live here too; this
module imports nothing of the project, so every module may import it.

User errors are the ones a user can fix by changing a key, a value or a file: :class:`UserError`
(and :class:`ConfigError`), missing or unwritable paths, and what Lightning calls a
misconfiguration. Everything else (a ``KeyError``, ``IndexError``, ``TypeError`` raised by our own
code) is a bug and is shown with its traceback.
"""

from __future__ import annotations

import errno
import os
import re
import sys
import warnings
from collections.abc import Callable
from typing import NoReturn, TypeVar

__all__ = [
    "ConfigError",
    "DeviceClaimError",
    "NoSpaceError",
    "UnreadableImageError",
    "UserError",
    "fail",
    "is_user_error",
    "no_space_error",
    "report_errors",
    "user_error_message",
]

T = TypeVar("T")

# Exit statuses: argparse's for usage errors, the shell's for SIGINT.
EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130
# Stopped by SIGTERM (128 + 15, the shell's convention): a scheduler must not read it as done.
EXIT_TERMINATED = 143
# A write failed for lack of space (sysexits' EX_IOERR): free space, then run the same command
# again (with resume=true for training).
EXIT_NO_SPACE = 74


class UserError(ValueError):
    """Bad input from the user (a file, a key, a value): reported as one line."""


class ConfigError(UserError):
    """An invalid configuration value or key."""


class NoSpaceError(OSError):
    """A write failed because its disk (or quota) is full; the message names the file."""

    def __str__(self) -> str:
        return str(self.strerror)


class UnreadableImageError(OSError):
    """A file that cannot be decoded as an image (an OSError, as PIL's own errors are)."""


class DeviceClaimError(RuntimeError):
    """No device of a sweep's pool could be claimed, or the pool is empty."""


_NO_SPACE = {errno.ENOSPC, errno.EDQUOT}


def no_space_error(error: BaseException, path: str | os.PathLike | None = None) -> BaseException:
    """A :class:`NoSpaceError` naming ``path`` (or the error's own file) when ``error`` (or what
    caused it) is a write that failed for lack of space; otherwise ``error`` itself."""
    seen = error
    while seen is not None:
        if isinstance(seen, NoSpaceError):
            return seen
        if isinstance(seen, OSError) and seen.errno in _NO_SPACE:
            where = path if path is not None else (seen.filename or "a file")
            what = "quota exceeded" if seen.errno == errno.EDQUOT else "no space left on device"
            return NoSpaceError(
                seen.errno,
                f"{where}: {what}; nothing half-written was kept. Free some space and run the same "
                "command again (training: with resume=true it continues from the last checkpoint)",
            )
        seen = seen.__cause__ or seen.__context__
    return error


def fail(prog: str, message: object, status: int = EXIT_USER_ERROR) -> NoReturn:
    """End the command: ``<prog>: error: <message>`` on stderr and exit ``status``. The one place
    a command's error line is written."""
    print(f"{prog}: error: {message}", file=sys.stderr, flush=True)
    raise SystemExit(status)


def _is_misconfiguration(error: BaseException) -> bool:
    try:
        from lightning_fabric.utilities.exceptions import MisconfigurationException
    except ImportError:  # pragma: no cover - Lightning is a dependency
        return False
    return isinstance(error, MisconfigurationException)


def _is_config_type_error(error: BaseException) -> bool:
    # Hydra instantiating a _target_ with a key its signature lacks (a misspelt nested key).
    text = str(error)
    return isinstance(error, TypeError) and (
        "unexpected keyword argument" in text or "missing 1 required positional argument" in text
    )


def is_user_error(error: BaseException) -> bool:
    """True for errors caused by the configuration or the input, reported in one line."""
    from hydra.errors import InstantiationException

    if isinstance(error, InstantiationException):
        cause = error.__cause__
        return cause is not None and (is_user_error(cause) or _is_config_type_error(cause))
    if isinstance(error, UserError | UnreadableImageError):
        return True
    if isinstance(error, FileNotFoundError | NotADirectoryError | IsADirectoryError):
        return True
    if isinstance(error, PermissionError | FileExistsError):
        return True
    from omegaconf.errors import MissingMandatoryValue

    if isinstance(error, MissingMandatoryValue):
        return True
    if isinstance(error, DeviceClaimError):
        return True
    # Constructors check their own arguments with ValueError ("image_size must be ...").
    if type(error) is ValueError:
        return True
    return _is_misconfiguration(error)


def user_error_message(error: BaseException) -> str:
    """The one line to print for a user error (the innermost cause of an instantiation error)."""
    from hydra.errors import InstantiationException

    if isinstance(error, InstantiationException) and error.__cause__ is not None:
        cause = error.__cause__
        if _is_config_type_error(cause):
            return f"{_instantiation_target(error)}{str(cause).strip().splitlines()[0]}"
        return _with_key(user_error_message(cause), _full_key(error))
    from omegaconf.errors import MissingMandatoryValue

    if isinstance(error, MissingMandatoryValue):
        key = getattr(error, "full_key", None) or "a key"
        return f"{key}: required, give it on the command line ({key}=...)"
    if isinstance(error, OSError) and error.filename is not None and error.strerror is not None:
        return f"{error.filename}: {error.strerror}"
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _full_key(error: BaseException) -> str:
    for line in str(error).splitlines():
        if line.startswith("full_key:"):
            return line.split(":", 1)[1].strip()
    return ""


def _with_key(message: str, key: str) -> str:
    """A constructor names its own argument (``loss.gan must be >= 0``); the config path it was
    built from completes the key (``model.loss.gan must be >= 0``)."""
    first = message.split(" ", 1)[0]
    if not key or not re.fullmatch(r"[A-Za-z_][\w.]*", first) or first.startswith(f"{key}."):
        return message
    top = key.split(".", 1)[0]
    if first == top or first.startswith(f"{top}."):  # already a full key (data.image_size ...)
        return message
    return f"{key}.{message}"


def _instantiation_target(error: BaseException) -> str:
    # Hydra's message reads "Error in call to target 'pkg.Class':\n..." or names the full key.
    for line in str(error).splitlines():
        if "full_key:" in line:
            return line.split("full_key:", 1)[1].strip() + ": "
    return ""


def report_errors(prog: str, task: Callable[..., T], *args, **kwargs) -> T:
    """Run ``task``; a user error ends with ``<prog>: error: <one line>`` and exit status 2,
    Ctrl-C with ``<prog>: interrupted`` and 130, Lightning's stop on SIGTERM with 143. Other
    errors propagate with their traceback."""
    formatwarning = warnings.formatwarning
    # Warnings as one line each, in the same voice as the errors.
    warnings.formatwarning = lambda message, category, *_, **__: f"{prog}: warning: {message}\n"
    try:
        return task(*args, **kwargs)
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr, flush=True)
        raise SystemExit(EXIT_INTERRUPTED) from None
    except SystemExit as stop:
        if type(stop).__name__ == "SIGTERMException":  # Lightning's, which exits 0 by itself
            print(f"{prog}: stopped on SIGTERM", file=sys.stderr, flush=True)
            raise SystemExit(EXIT_TERMINATED) from None
        raise
    except Exception as error:
        full = no_space_error(error)
        if isinstance(full, NoSpaceError):
            fail(prog, full, EXIT_NO_SPACE)
        if not is_user_error(error):
            raise
        fail(prog, user_error_message(error))
    finally:
        warnings.formatwarning = formatwarning
