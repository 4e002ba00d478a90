"""The config folder and the checks of a command line against it: unknown keys with the
nearest known one, a constructor's arguments read without importing it."""

from __future__ import annotations

from pathlib import Path

from deepfill.utils.resolvers import register_resolvers

__all__ = ["CONFIG_DIR", "composition_message", "target_arguments"]

# conf/ sits at the top of the repository, next to src/.
CONFIG_DIR = Path(__file__).resolve().parents[3] / "conf"


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


# Configs composed anywhere (a notebook, a test) resolve the project's own resolvers.
register_resolvers()
