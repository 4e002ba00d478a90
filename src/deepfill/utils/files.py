"""Writing files safely: outputs checked before any work starts, and written atomically (a
temporary file in the same folder, renamed over the target), so an interrupted or failed write
never leaves a half-written file or a stray temporary behind; a write that fails for lack of
space raises :class:`~deepfill.utils.errors.NoSpaceError` naming the file."""

from __future__ import annotations

import os
import re
import secrets
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from deepfill.utils.errors import UserError, no_space_error

__all__ = [
    "atomic_path",
    "remove_stale_temporaries",
    "save_torch",
    "writable_dir",
    "writable_file",
]


def _first_existing(path: Path) -> Path:
    for candidate in (path, *path.parents):
        if candidate.exists():
            return candidate
    return Path(".")


def writable_dir(path: str | os.PathLike, key: str) -> Path:
    """Create folder ``path`` (with parents) and make sure files can be written into it.

    Raises :class:`UserError` naming ``key`` when it is a file, lies under a file, or cannot be
    written to."""
    path = Path(path)
    existing = _first_existing(path)
    if not existing.is_dir():
        where = "is a file" if existing == path else f"lies under the file {existing}"
        raise UserError(f"{key}: {path} {where}; expected a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as error:
        raise UserError(f"{key}: cannot write into {path} ({error.strerror or error})") from None
    return path


def writable_file(path: str | os.PathLike, key: str) -> Path:
    """Check that file ``path`` can be (over)written: not a folder, its folder writable."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{key}: {path} is a folder; expected a file name")
    writable_dir(path.parent, key)
    return path


def _temporary_name(path: Path) -> Path:
    # 64 random bits make a clash with another writer's temporary a non-event.
    return path.parent / f".{path.name}.{secrets.token_hex(8)}.tmp"


_TEMPORARY = re.compile(r"\..+\.[0-9a-f]{16}\.tmp")


def remove_stale_temporaries(folder: str | os.PathLike) -> list[Path]:
    """Remove the temporaries :func:`atomic_path` left under ``folder`` (recursively) when its
    process was killed mid-write (SIGKILL, a lost node: no cleanup runs). Only call it when no
    other process writes there. Returns what was removed."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed = []
    for path in folder.rglob(".*.tmp"):
        if _TEMPORARY.fullmatch(path.name) and path.is_file():
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path`` in one rename,
    on any error (or Ctrl-C) it is removed and ``path`` is left as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # The name is chosen, and the cleanup armed, before the file exists: a Ctrl-C that lands
    # between creating the file and entering the ``try`` (as with mkstemp) would leave it behind.
    tmp = _temporary_name(path)
    try:
        # Mode 0666 less the umask: the permissions a plain open() would give.
        os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        yield tmp
        os.replace(tmp, path)
    except BaseException as error:
        tmp.unlink(missing_ok=True)
        full = no_space_error(error, path)
        if full is error:
            raise
        raise full from None


def save_torch(payload: object, path: str | os.PathLike) -> Path:
    """``torch.save`` to ``path`` atomically, through a file object: a full disk then raises
    :class:`NoSpaceError` naming ``path`` (``torch.save`` to a path reports it as an opaque
    ``RuntimeError`` of its zip writer)."""
    import torch

    path = Path(path)
    with atomic_path(path) as tmp, tmp.open("wb") as file:
        torch.save(payload, file)
    return path
