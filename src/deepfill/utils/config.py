"""Config helpers shared by the entry points: resolvers, W&B mode, the config folder."""

from __future__ import annotations

import math
import netrc
import os
from collections.abc import Callable
from pathlib import Path

from omegaconf import OmegaConf

__all__ = [
    "CONFIG_DIR",
    "composition_message",
    "register_resolvers",
    "resolve_device",
    "wandb_has_credentials",
]

# conf/ sits at the top of the repository, next to src/.
CONFIG_DIR = Path(__file__).resolve().parents[3] / "conf"


def device_count(pool=None) -> int:
    """Devices a ``launcher=local_gpus`` sweep shares out: ``len(pool)``, or the visible GPUs."""
    from deepfill.utils.devices import visible_gpus

    count = len(pool) if pool is not None else len(visible_gpus())
    if count < 1:
        raise ValueError(
            "launcher=local_gpus: no GPU found (CUDA_VISIBLE_DEVICES, nvidia-smi); "
            "set job_devices.pool=[0,1,...] or use launcher=basic"
        )
    return count


def ensure_dir(path: str) -> str:
    """Create ``path`` (a folder another tool writes into before Hydra would create it); returns it."""
    Path(path).mkdir(parents=True, exist_ok=True)
    return path


def replicate_seeds(replicates, seed) -> str:
    """The seeds of a multirun's replicates, as a sweep value: ``3, 42`` -> ``"42,43,44"``."""
    from deepfill.utils.errors import ConfigError

    if isinstance(replicates, bool) or not isinstance(replicates, int) or replicates < 1:
        raise ConfigError(f"replicates: must be a whole number >= 1, got {replicates!r}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ConfigError(f"seed: must be a whole number, got {seed!r}")
    return ",".join(str(seed + i) for i in range(replicates))


_DURATION_UNITS = {"s": 1.0, "sec": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0}


def duration_seconds(value, key: str) -> float | None:
    """Seconds of a duration written ``6min``, ``90s``, ``1.5h`` or ``00:06:00`` (None stays None);
    ``key`` names the setting in the one-line error for anything else."""
    import re

    from deepfill.utils.errors import ConfigError

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
    "device_count": device_count,
    "ensure_dir": ensure_dir,
    "replicate_seeds": replicate_seeds,
    "budget_cap": budget_cap,
}


def register_resolvers(extra: dict[str, Callable] | None = None) -> None:
    """``${half:x}`` (integer half, e.g. the local critic's crop), ``${scale:x,f}`` (``x * f``
    rounded), ``${mul:a,b}``, ``${device_count:pool}``, ``${ensure_dir:path}`` and
    ``${replicate_seeds:replicates,seed}``, ``${budget_cap:budget}`` (a run's ``max_time`` above its
    time budget); plus ``extra`` (name -> function), the resolvers the
    commands add from higher layers (:func:`deepfill.cli.launch.register_command_resolvers`)."""
    for name, function in {**_RESOLVERS, **(extra or {})}.items():
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, function)


def _flat_keys(node, prefix: str = "") -> list[str]:
    from omegaconf import DictConfig

    keys = []
    for key in node.keys() if isinstance(node, DictConfig) else []:
        path = f"{prefix}{key}"
        keys.append(path)
        child = node._get_node(key)
        if isinstance(child, DictConfig):
            keys += _flat_keys(child, f"{path}.")
    return keys


def target_arguments(cfg, key: str) -> list[str]:
    """The named arguments of the callable that instantiates node ``key`` of ``cfg`` (its
    ``_target_``), or [] when the node has none."""
    import inspect

    from hydra.utils import get_method
    from omegaconf import DictConfig, OmegaConf

    from deepfill.utils.signatures import named_arguments

    node = OmegaConf.select(cfg, key) if key else cfg
    if not isinstance(node, DictConfig) or "_target_" not in node:
        return []
    path = str(node._get_node("_target_")._value())
    from_source = named_arguments(path)  # without importing the target (seconds for Lightning)
    if from_source is not None:
        return list(from_source)
    try:
        target = get_method(path)
        parameters = inspect.signature(target).parameters.values()
    except Exception:
        return []
    named = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return [p.name for p in parameters if p.kind in named]


def composition_message(error: Exception, config_name: str, overrides: list[str]) -> str:
    import difflib
    import re

    from hydra import compose

    text = str(error).strip()
    lines = text.splitlines()
    unknown = re.match(r"Could not override '([^']+)'", text)
    if unknown:
        key = unknown.group(1)
        rest = [o for o in overrides if not o.split("=", 1)[0].lstrip("+~").startswith(key)]
        try:
            base = compose(config_name, overrides=rest)
            parent = key.rpartition(".")[0]
            known = _flat_keys(base) + [f"{parent}.{a}" for a in target_arguments(base, parent)]
        except Exception:
            known = []
        close = difflib.get_close_matches(key, known, n=1)
        hint = f"did you mean {close[0]!r}?" if close else f"to add a new key write +{key}=..."
        return f"{key}: unknown key ({hint})"
    options = [line.strip() for line in lines if line.startswith("\t") and "provider=" not in line]
    if "Could not find" in lines[0] and options:
        return f"{lines[0]}; available: {', '.join(options)}"
    return lines[0]


def resolve_device(name: str) -> str:
    """``"auto"``: the GPU when there is one, else the CPU; ``"gpu"`` means ``"cuda"``. Raises
    :class:`~deepfill.utils.errors.UserError` for an unknown device or a GPU this machine lacks."""
    import torch

    from deepfill.utils.errors import UserError

    name = str(name)
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "gpu" or name.startswith("gpu:"):
        name = "cuda" + name[3:]
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise UserError(f"device: unknown device {name!r}; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise UserError(f"device={name}: no CUDA GPU is available here; use device=cpu or device=auto")
        if device.index is not None and device.index >= count:
            raise UserError(f"device={name}: this machine has {count} GPU(s) (cuda:0 to cuda:{count - 1})")
    return str(device)


def wandb_has_credentials() -> bool:
    """True when W&B can log online: an API key in the environment or in ~/.netrc."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        path = os.environ.get("NETRC", str(Path.home() / ".netrc"))
        return netrc.netrc(path).authenticators("api.wandb.ai") is not None
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False


register_resolvers()
