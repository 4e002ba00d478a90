"""Read PyTorch checkpoint files and fit them to a model, with one-line errors for files that are
missing, truncated, of another format or of another model size.

PyTorch is imported where a file is read: :func:`check_weights_path` is what the commands run
before anything heavy loads."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from deepfill.utils.errors import UserError

if TYPE_CHECKING:
    import torch
    from torch import nn

__all__ = [
    "ResumePoint",
    "check_resume_checkpoint",
    "check_state_dict",
    "check_weights_path",
    "describe_differences",
    "find_resume_point",
    "read_checkpoint",
]


def read_checkpoint(path: str | os.PathLike, key: str, weights_only: bool = True) -> dict[str, Any]:
    """The dict stored in a ``.pt``/``.ckpt`` file; ``key`` names the setting in messages.

    Raises :class:`UserError` (one line) for a missing file, a folder, or a file ``torch.load``
    cannot read (truncated, another format)."""
    import torch

    path = Path(path)
    if not path.exists():
        raise UserError(f"{key}: no such file: {path}")
    if path.is_dir():
        raise UserError(f"{key}: {path} is a folder, expected a checkpoint file")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=weights_only, mmap=False)
    except Exception as error:  # torch raises many types for a bad file; all mean the same here
        first = str(error).strip().splitlines()[0] if str(error).strip() else ""
        # torch's own messages run to paragraphs of advice that does not apply here.
        reason = f" ({first})" if first and len(first) <= 80 else ""
        raise UserError(
            f"{key}: {path} is not a readable PyTorch checkpoint: truncated, or another format{reason}"
        ) from None
    if not isinstance(payload, dict):
        raise UserError(f"{key}: {path} holds a {type(payload).__name__}, expected a checkpoint dict")
    return payload


def check_weights_path(path: str | os.PathLike, key: str = "weights") -> Path:
    """A weights path exists: a file, a checkpoint folder, or a TF prefix (``snap-0`` with its
    ``snap-0.index``). Cheap, so commands check it before any other work."""
    path = Path(path)
    if not (path.exists() or Path(f"{path}.index").exists()):
        raise UserError(f"{key}: no such file or folder: {path}")
    return path


def _flatten(config: Mapping, prefix: str = "") -> dict[str, Any]:
    flat = {}
    for name, value in config.items():
        if isinstance(value, Mapping):
            flat |= _flatten(value, f"{prefix}{name}.")
        else:
            flat[f"{prefix}{name}"] = list(value) if isinstance(value, tuple) else value
    return flat


def describe_differences(stored: Mapping, current: Mapping, limit: int = 3) -> str:
    """``"generator.cnum: 32 in the file, 16 here; ..."`` for the keys both configs hold."""
    a, b = _flatten(stored), _flatten(current)
    diffs = [f"{k}: {a[k]!r} in the file, {b[k]!r} here" for k in a if k in b and a[k] != b[k]]
    more = f" (and {len(diffs) - limit} more)" if len(diffs) > limit else ""
    return "; ".join(diffs[:limit]) + more


def check_state_dict(
    module: nn.Module, state: Mapping[str, torch.Tensor], key: str, path: str | os.PathLike, hint: str = ""
) -> None:
    """Raise :class:`UserError` (one line) unless ``state`` has exactly ``module``'s tensors and
    shapes; ``hint`` (e.g. the differing hyper-parameters) is appended to the message."""
    own = module.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    mismatched = [k for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    if not (missing or unexpected or mismatched):
        return
    parts = []
    if mismatched:
        k = mismatched[0]
        parts.append(
            f"{len(mismatched)} tensor(s) of another shape (e.g. {k}: {tuple(state[k].shape)} in the "
            f"file, {tuple(own[k].shape)} here)"
        )
    if missing:
        parts.append(f"{len(missing)} missing (e.g. {missing[0]})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]})")
    why = f"; {hint}" if hint else ""
    raise UserError(f"{key}: {path} does not fit this model: {', '.join(parts)}{why}")


def check_resume_checkpoint(model: nn.Module, path: str | os.PathLike, key: str = "ckpt_path") -> None:
    """Before ``trainer.fit(ckpt_path=...)``: the file is a readable training checkpoint whose
    tensors fit ``model`` (a LightningModule); otherwise one line naming the hyper-parameters
    that differ (``generator.cnum: 32 in the file, 16 here``)."""
    checkpoint = read_checkpoint(path, key, weights_only=False)
    state = checkpoint.get("state_dict")
    if not isinstance(state, dict) or "hyper_parameters" not in checkpoint:
        raise UserError(f"{key}: {path} is not a training checkpoint (no state_dict/hyper_parameters)")
    saved = checkpoint["hyper_parameters"]
    # Another family (v1's generator and critics against v2's): say so first, in the model's words.
    file_family = "v2" if (saved.get("generator") or {}).get("gated") else "v1"
    own_family = getattr(getattr(model, "generator", None), "family", file_family)
    if file_family != own_family:
        raise UserError(
            f"{key}: {path} holds a DeepFill {file_family} training checkpoint, and this run trains "
            f"DeepFill {own_family}; continue it with model=deepfill_{file_family} (or its experiment)"
        )
    hint = describe_differences(saved, dict(getattr(model, "hparams", {})))
    check_state_dict(model, state, key, path, hint=f"trained with {hint}" if hint else "")


class ResumePoint(NamedTuple):
    """Where ``resume=true`` continues from: ``path`` (None: nothing to resume, start afresh) and,
    when ``last.ckpt`` did not load, why (``skipped``: the unreadable file and the reason)."""

    path: Path | None
    skipped: str = ""


def find_resume_point(folder: str | os.PathLike) -> ResumePoint:
    """The checkpoint a resumed run continues from: ``<folder>/last.ckpt`` when it loads, else
    the most recently written other checkpoint of the folder that loads.

    Raises :class:`UserError` (one line) when checkpoints exist but none of them loads."""
    folder = Path(folder)
    last = folder / "last.ckpt"
    if not last.is_file():
        return ResumePoint(None)
    try:
        read_checkpoint(last, "resume", weights_only=False)
        return ResumePoint(last)
    except UserError as error:
        reason = str(error).removeprefix("resume: ")
    others = sorted(
        (p for p in folder.glob("*.ckpt") if p != last and p.is_file()),
        key=lambda p: p.stat().st_mtime,
        reverse=True,
    )
    for candidate in others:
        try:
            read_checkpoint(candidate, "resume", weights_only=False)
        except UserError:
            continue
        return ResumePoint(candidate, skipped=reason)
    raise UserError(
        f"resume=true: {reason}, and no other checkpoint in {folder} loads; move it away to start "
        "this run afresh, or give ckpt_path= a checkpoint to continue from"
    )
