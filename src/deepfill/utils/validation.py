"""Check a composed config before any work starts: misspelt keys and invalid values stop the run
with one line that names the key.

Misspelt keys are found generically: every node with a ``_target_`` is checked against the
target's signature, and values of the wrong kind against its plain ``int``/``float``/``bool``
annotations. Whether a value is allowed is for the constructors to say.
"""

from __future__ import annotations

import difflib
import inspect

from hydra.utils import get_object
from omegaconf import DictConfig, ListConfig, OmegaConf

from deepfill.utils.errors import ConfigError, is_user_error, user_error_message

__all__ = ["ConfigError", "is_user_error", "user_error_message", "validate_config"]


def _unknown_key(path: str, key: str, params, owner: str) -> ConfigError:
    close = difflib.get_close_matches(str(key), list(params), n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return ConfigError(f"{path}.{key}: unknown key for {owner}{hint}")


_KINDS = {"bool": "true or false", "int": "an integer", "float": "a number"}


def _check_type(node: DictConfig, key: str, parameter: inspect.Parameter, path: str) -> None:
    """A value of another kind than a parameter annotated plainly ``int``, ``float`` or ``bool``
    (``cnum=abc``) is named here, not left to fail deep inside the constructor."""
    annotation = parameter.annotation
    kind = annotation.__name__ if isinstance(annotation, type) else str(annotation)
    if kind not in _KINDS or OmegaConf.is_missing(node, key):
        return
    value = node._get_node(key)._value()
    if value is None or (isinstance(value, str) and "${" in value):
        return  # null (the constructor decides) or an interpolation, resolved later
    if kind == "bool":
        ok = isinstance(value, bool)
    elif kind == "int":
        ok = isinstance(value, int) and not isinstance(value, bool)
    else:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
    if not ok:
        raise ConfigError(f"{path}: expected {_KINDS[kind]}, got {value!r}")


def _check_nested(node: DictConfig, path: str, obj) -> None:
    """Keys of dict arguments that a target forwards to another class (``nested_arguments``)."""
    for name, inner in getattr(obj, "nested_arguments", {}).items():
        child = node.get(name) if name in node else None
        if not isinstance(child, DictConfig):
            continue
        params = inspect.signature(inner).parameters
        for key in child:
            if key not in params:
                raise _unknown_key(f"{path}.{name}", key, params, inner.__name__)


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
                if str(key).startswith("_"):
                    continue
                if key not in params:
                    raise _unknown_key(path, key, params, target)
                _check_type(node, key, params[key], f"{path}.{key}")
        _check_nested(node, path, obj)
    for key in node:
        if str(key).startswith("_"):
            continue
        child = node._get_node(key)
        if isinstance(child, DictConfig | ListConfig):
            _check_targets(child, f"{path}.{key}" if path else str(key))


def validate_config(cfg: DictConfig) -> None:
    """Raise :class:`ConfigError` (one line, naming the key) for a misspelt key or a value of the
    wrong kind. Values are judged by the constructors themselves (one source of truth); their
    ``ValueError`` becomes one line naming the key when the config is instantiated."""
    for group in ("model", "data", "trainer"):
        if group not in cfg or cfg[group] is None:
            raise ConfigError(f"{group}: missing config group")
    for group in ("model", "data", "trainer", "callbacks", "logger"):
        if group in cfg and cfg[group] is not None:
            _check_targets(cfg[group], group)
