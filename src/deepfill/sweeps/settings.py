"""What a sweep's job is: the one definition of a setting, read from a job's overrides.

Every override of a job is of one kind (:func:`key_kind`): its seed; where it runs (launcher,
devices, Hydra's own keys); how the sweep is named, organised, logged and reported; or a
setting, what the job computes. The results table groups runs by setting, W&B groups them by
the same setting (:func:`setting_job_type`), and a rerun recognises its job by it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

__all__ = [
    "EXTENT_KEYS",
    "SEED_KEY",
    "key_kind",
    "parse_override",
    "setting_job_type",
    "setting_label",
    "setting_of",
]

SEED_KEY = "seed"
# Where and how a job runs does not change what it computes: a sweep started with one launcher
# can be finished with another.
_PLACEMENT = ("launcher", "job_devices", "hydra.")
# How the sweep is named, repeated, ranked, resumed, logged and where it writes.
_ORGANISATION = ("sweep", "sweep_name", "replicates", "reference", "optimized_metric", "resume")
_ORGANISATION_PREFIXES = ("paths.", "logger", "callbacks.")
# How long a run trains: a setting of the table (a sweep over epochs compares them), but a
# finished run given more epochs or steps (same folder, resume=true) continues from its last
# checkpoint instead of being taken for another job.
EXTENT_KEYS = ("trainer.max_epochs", "trainer.max_steps", "trainer.max_time")

Kind = Literal["seed", "placement", "organisation", "setting"]


def parse_override(override: str) -> tuple[str, str]:
    """``"+model.loss.gan=0.01"`` -> ``("model.loss.gan", "0.01")``."""
    key, _, value = override.partition("=")
    return key.lstrip("+~"), value


def key_kind(key: str) -> Kind:
    """What an override's key says about a job (see the module's docstring)."""
    if key == SEED_KEY:
        return "seed"
    if key.startswith(_PLACEMENT):
        return "placement"
    if key in _ORGANISATION or key.startswith(_ORGANISATION_PREFIXES):
        return "organisation"
    return "setting"


def setting_of(overrides: Sequence[str]) -> dict[str, str]:
    """The setting a job's overrides make: key -> value of every override that changes what the
    job computes; not its seed (the replicates of a setting differ only in it), where it runs,
    or how its sweep is organised and reported."""
    return {key: value for key, value in map(parse_override, overrides) if key_kind(key) == "setting"}


def setting_label(setting: dict[str, Any], params: Sequence[str]) -> str:
    """``"ksize=3 rate=2"``: a setting by the last part of each swept key (the full key when the
    last parts clash)."""
    short = [p.rsplit(".", 1)[-1] for p in params]
    names = short if len(set(short)) == len(short) else list(params)
    return (
        " ".join(f"{n}={setting.get(p, '')}" for n, p in zip(names, params, strict=True)) or "(one setting)"
    )


def setting_job_type(overrides: Sequence[str], limit: int = 64) -> str:
    """A W&B ``job_type`` naming a job's setting (:func:`setting_of`), so that the replicates
    of one setting share it (W&B then groups them, with mean and spread, under the sweep's
    group), as the results table groups them. At most ``limit`` characters (W&B's
    limit); longer labels end in a short hash that keeps settings apart."""
    import hashlib

    label = " ".join(sorted(f"{key}={value}" for key, value in setting_of(overrides).items())) or "default"
    if len(label) <= limit:
        return label
    digest = hashlib.sha1(label.encode()).hexdigest()[:8]
    return f"{label[: limit - 9]}~{digest}"
