"""Check a composed config before any work starts: misspelt keys and invalid values stop the run
with one line that names the key.

Misspelt keys are found generically: every node with a ``_target_`` is checked against the
target's signature. Values the constructors cannot judge on their own are checked here.
"""

from __future__ import annotations

import difflib
import inspect

from hydra.errors import InstantiationException
from hydra.utils import get_object
from omegaconf import DictConfig, ListConfig, OmegaConf

from .devices import DeviceClaimError

__all__ = ["ConfigError", "is_user_error", "validate_config"]


class ConfigError(ValueError):
    """An invalid configuration value or key."""


def _check_targets(node, path: str) -> None:
    if isinstance(node, ListConfig):
        for i, item in enumerate(node):
            _check_targets(item, f"{path}[{i}]")
        return
    if not isinstance(node, DictConfig):
        return
    target = node.get("_target_") if "_target_" in node else None
    if target is not None:
        try:
            obj = get_object(target)
        except Exception as error:
            raise ConfigError(f"{path}._target_: cannot import {target!r} ({error})") from None
        try:
            params = inspect.signature(obj).parameters
        except (TypeError, ValueError):
            params = {}
        takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
        if params and not takes_any:
            for key in node:
                if str(key).startswith("_") or key in params:
                    continue
                close = difflib.get_close_matches(str(key), list(params), n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise ConfigError(f"{path}.{key}: unknown key for {target}{hint}")
    for key in node:
        if str(key).startswith("_"):
            continue
        child = node._get_node(key)
        if isinstance(child, DictConfig | ListConfig):
            _check_targets(child, f"{path}.{key}" if path else str(key))


def _require(condition: bool, key: str, message: str, value) -> None:
    if not condition:
        raise ConfigError(f"{key}: {message}, got {value!r}")


def validate_config(cfg: DictConfig) -> None:
    """Raise :class:`ConfigError` (one line, naming the key) for a bad training config."""
    for group in ("model", "data", "trainer"):
        if group not in cfg or cfg[group] is None:
            raise ConfigError(f"{group}: missing config group")
    for group in ("model", "data", "trainer", "callbacks", "logger"):
        if group in cfg and cfg[group] is not None:
            _check_targets(cfg[group], group)
    size = OmegaConf.select(cfg, "data.image_size")
    _require(
        isinstance(size, int) and size >= 16 and size % 8 == 0,
        "data.image_size",
        "must be a multiple of 8 (>= 16)",
        size,
    )
    batch = OmegaConf.select(cfg, "data.batch_size")
    _require(isinstance(batch, int) and batch >= 1, "data.batch_size", "must be >= 1", batch)
    model = cfg.model
    attention = OmegaConf.select(model, "generator.attention") or {}
    ksize = attention.get("ksize", 3)
    _require(
        isinstance(ksize, int) and ksize >= 1 and ksize % 2 == 1,
        "model.generator.attention.ksize",
        "must be an odd positive integer",
        ksize,
    )
    for key in ("rate", "fuse_k"):
        value = attention.get(key, 1)
        _require(
            isinstance(value, int) and value >= 1,
            f"model.generator.attention.{key}",
            "must be a positive integer",
            value,
        )
    scale = attention.get("softmax_scale", 10.0)
    _require(
        isinstance(scale, int | float) and scale > 0,
        "model.generator.attention.softmax_scale",
        "must be > 0",
        scale,
    )
    dilations = OmegaConf.select(model, "generator.dilations") or []
    _require(
        len(dilations) > 0 and all(isinstance(d, int) and d >= 1 for d in dilations),
        "model.generator.dilations",
        "must be positive integers",
        list(dilations),
    )
    rate = attention.get("rate", 2)
    if isinstance(size, int) and size % (4 * rate):
        raise ConfigError(
            f"data.image_size: must be divisible by 4 * attention rate = {4 * rate}, got {size}"
        )
    for key, value in (model.get("loss") or {}).items():
        _require(
            isinstance(value, int | float) and value >= 0, f"model.loss.{key}", "must be a number >= 0", value
        )
    lr = model.get("lr", 1e-4)
    _require(isinstance(lr, int | float) and lr > 0, "model.lr", "must be > 0", lr)
    n_critic = model.get("n_critic", 5)
    _require(
        isinstance(n_critic, int) and n_critic >= 1, "model.n_critic", "must be an integer >= 1", n_critic
    )


_USER_ERRORS = (ConfigError, ValueError, FileNotFoundError, NotADirectoryError, KeyError, DeviceClaimError)


def is_user_error(error: BaseException) -> bool:
    """Errors caused by configuration or input (reported in one line, not as a traceback)."""
    if isinstance(error, InstantiationException):
        return error.__cause__ is not None and is_user_error(error.__cause__)
    return isinstance(error, _USER_ERRORS)


def user_error_message(error: BaseException) -> str:
    """The one line to print for a user error (the innermost cause of an instantiation error)."""
    if isinstance(error, InstantiationException) and error.__cause__ is not None:
        return user_error_message(error.__cause__)
    return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
