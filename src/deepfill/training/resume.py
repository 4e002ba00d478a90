"""Exact resume from any checkpoint: Lightning's loop state, put in a form Lightning resumes right.

Lightning resumes mid-epoch checkpoints exactly (with the data module's recorded position), but
one kind of checkpoint goes wrong: one written after an epoch's last batch *and* its end-of-epoch
step (``on_train_epoch_end``, or ``on_train_end`` after the last epoch) while ``max_steps`` is set.
Lightning then treats the fit as "restarting" (iteration-based training always is), keeps the
finished epoch's batch counters and so starts the next epoch as already complete: it trains
0 batches of it and counts it as done. With ``max_steps=-1`` the same checkpoint resumes as the
start of a new epoch, which is right. :func:`start_next_epoch` rewrites such a checkpoint's loop
state (in memory, as it is loaded) to that of the next epoch about to start, which Lightning
resumes the same way whatever the stopping criteria.
"""

from __future__ import annotations

from typing import Any

__all__ = ["continue_epoch", "ended_early", "epoch_finished", "normalize_loops", "start_next_epoch"]


def _tracker(progress: dict, part: str) -> dict:
    return progress.get(part) or {}


def epoch_finished(fit_loop: dict[str, Any]) -> bool:
    """True when a checkpoint's ``loops["fit_loop"]`` state was saved after the end of an epoch:
    every batch of it trained (and its validation run) and the epoch counted as processed."""
    batches = fit_loop.get("epoch_loop.batch_progress") or {}
    epochs = fit_loop.get("epoch_progress") or {}
    current = _tracker(batches, "current")
    epoch = _tracker(epochs, "current")
    if not (batches.get("is_last_batch") and current and epoch):
        return False
    batch_done = (
        current.get("ready", 0) > 0
        and len({current.get(k) for k in ("ready", "started", "processed", "completed")}) == 1
    )
    # `processed` counts the epoch once its end hooks start; `ready` once it started.
    return batch_done and epoch.get("processed") == epoch.get("ready")


def ended_early(fit_loop: dict[str, Any]) -> bool:
    """True when a checkpoint's fit-loop state says its epoch ended before its last batch (the run
    stopped on ``max_steps``, ``max_time`` or a stop request) and the epoch's end was counted."""
    batches = fit_loop.get("epoch_loop.batch_progress") or {}
    epoch = _tracker(fit_loop.get("epoch_progress") or {}, "current")
    if batches.get("is_last_batch") or not epoch or epoch.get("ready", 0) < 1:
        return False
    return epoch.get("processed") == epoch.get("ready")


def continue_epoch(checkpoint: dict[str, Any]) -> bool:
    """When ``checkpoint`` was saved after a run stopped part-way through an epoch and counted that
    epoch as ended, rewrite its epoch counters (in place) to the epoch still under way, so that a
    resume with a later stop (more steps, more time) trains the rest of it, batch for batch.
    Returns whether it changed anything."""
    fit_loop = (checkpoint.get("loops") or {}).get("fit_loop")
    if not isinstance(fit_loop, dict) or not ended_early(fit_loop):
        return False
    epochs = fit_loop["epoch_progress"]
    for part in ("current", "total"):
        tracker = epochs[part]
        tracker["processed"] = tracker["completed"] = tracker["ready"] - 1
    return True


def normalize_loops(checkpoint: dict[str, Any]) -> None:
    """Put a checkpoint's loop state in a form Lightning resumes exactly (in place): see
    :func:`start_next_epoch` and :func:`continue_epoch`."""
    start_next_epoch(checkpoint) or continue_epoch(checkpoint)


def start_next_epoch(checkpoint: dict[str, Any]) -> bool:
    """When ``checkpoint`` was saved after an epoch ended, rewrite its loop state (in place) to
    the start of the next epoch: epoch counters all equal to the epochs done, the per-epoch batch
    and validation counters at zero; the totals (global step, batches ever trained) kept.
    Returns whether it changed anything."""
    fit_loop = (checkpoint.get("loops") or {}).get("fit_loop")
    if not isinstance(fit_loop, dict) or not epoch_finished(fit_loop):
        return False
    epochs = fit_loop["epoch_progress"]
    done = epochs["current"]["processed"]
    total_done = epochs["total"]["processed"]
    epochs["current"] = dict.fromkeys(epochs["current"], done)
    epochs["total"] = dict.fromkeys(epochs["total"], total_done)
    # What Lightning zeroes when an epoch starts afresh: the per-epoch counters of the batches,
    # the schedulers and the optimizer steps, and both counters of the validation batches.
    for key in (
        "epoch_loop.batch_progress",
        "epoch_loop.scheduler_progress",
        "epoch_loop.automatic_optimization.optim_progress",
    ):
        _zero(fit_loop.get(key), parts=("current",))
    _zero(fit_loop.get("epoch_loop.val_loop.batch_progress"), parts=("current", "total"))
    return True


def _zero(progress: Any, parts: tuple[str, ...]) -> None:
    """Zero the named trackers of a progress state (nested, as the optimizer's step/zero_grad)."""
    if not isinstance(progress, dict):
        return
    if "is_last_batch" in progress:
        progress["is_last_batch"] = False
    for key, value in progress.items():
        if key in parts and isinstance(value, dict):
            progress[key] = dict.fromkeys(value, 0)
        elif isinstance(value, dict):
            _zero(value, parts)
