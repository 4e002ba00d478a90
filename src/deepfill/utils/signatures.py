"""The named arguments of a function or class, read from its source file without importing it.

A command checks a key of the command line against the constructor it configures
(``trainer.max_step=...`` against ``pytorch_lightning.Trainer``) before it runs; importing
Lightning to ask ``inspect.signature`` costs seconds, reading ``Trainer.__init__``'s definition a
few milliseconds. The definition is found by following the module's imports (``from .trainer
import Trainer``) through the package folders, without executing any of them. Whatever this
cannot follow (a name made at run time, an ``__init__`` inherited from elsewhere, C extensions)
returns None, and the caller imports the object instead.
"""

from __future__ import annotations

import ast
import functools
import importlib.util
import sys
from pathlib import Path

__all__ = ["named_arguments"]

_MAX_HOPS = 12  # re-exports followed before giving up (a cycle, or a deep chain)


def _module_file(module: str) -> Path | None:
    """The source file of ``module`` (``a.b.c``), found through its top-level package's folders
    alone: ``importlib.util.find_spec("a.b.c")`` would import ``a`` and ``a.b``."""
    loaded = sys.modules.get(module)
    if loaded is not None and getattr(loaded, "__file__", None):
        return Path(loaded.__file__)
    top, *rest = module.split(".")
    try:
        spec = importlib.util.find_spec(top)
    except (ImportError, ValueError):
        return None
    if spec is None:
        return None
    if not rest:
        return Path(spec.origin) if spec.origin and spec.origin.endswith(".py") else None
    for folder in spec.submodule_search_locations or []:
        base = Path(folder, *rest)
        for candidate in (base.with_suffix(".py"), base / "__init__.py"):
            if candidate.is_file():
                return candidate
    return None


def _arguments(node: ast.FunctionDef | ast.AsyncFunctionDef, drop_first: bool) -> list[str]:
    positional = [a.arg for a in (*node.args.posonlyargs, *node.args.args)]
    named = [a.arg for a in node.args.args] + [a.arg for a in node.args.kwonlyargs]
    if drop_first and positional:  # self
        named = [n for n in named if n != positional[0]]
    return named


def _definition(module: str, name: str) -> list[str] | None:
    for _ in range(_MAX_HOPS):
        path = _module_file(module)
        if path is None:
            return None
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (OSError, SyntaxError, UnicodeDecodeError):
            return None
        found = None
        for node in tree.body:
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name == name:
                found = _arguments(node, drop_first=False)
            elif isinstance(node, ast.ClassDef) and node.name == name:
                init = next(
                    (n for n in node.body if isinstance(n, ast.FunctionDef) and n.name == "__init__"), None
                )
                # An inherited constructor (or a dataclass's): leave it to inspect.
                found = _arguments(init, drop_first=True) if init is not None else None
                if init is None:
                    return None
            elif isinstance(node, ast.ImportFrom) and any((a.asname or a.name) == name for a in node.names):
                alias = next(a for a in node.names if (a.asname or a.name) == name)
                if node.level:  # relative: from its package
                    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
                    for _ in range(node.level - 1):
                        package = package.rpartition(".")[0]
                    source = f"{package}.{node.module}" if node.module else package
                else:
                    source = node.module or ""
                found = ("import", source, alias.name)
        if found is None:
            return None
        if isinstance(found, tuple):
            _, module, name = found
            continue
        return found
    return None


@functools.lru_cache(maxsize=256)
def named_arguments(target: str) -> tuple[str, ...] | None:
    """The arguments ``target`` (``package.module.Name``) can be called with by name, read from
    its source; None when that cannot be told without importing it."""
    module, _, name = target.rpartition(".")
    if not module:
        return None
    found = _definition(module, name)
    return tuple(found) if found is not None else None
