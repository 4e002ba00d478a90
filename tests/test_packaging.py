"""The package metadata, the conda environment and the Makefile agree with each other."""

from __future__ import annotations

import re
import sys

import yaml

from helpers.paths import REPO

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~;\[ ]", requirement.strip(), maxsplit=1)[0].lower().replace("_", "-")


def _runtime_from_pyproject() -> set[str]:
    data = tomllib.loads((REPO / "pyproject.toml").read_text())
    return {_name(r) for r in data["project"]["dependencies"]}


def _runtime_from_environment() -> set[str]:
    env = yaml.safe_load((REPO / "environment.yml").read_text())
    names: set[str] = set()
    conda_to_pip = {"pytorch": "torch"}
    skip = {"python", "pip", "pytorch-cuda"}
    for dep in env["dependencies"]:
        if isinstance(dep, dict):
            names |= {_name(r) for r in dep["pip"] if not r.startswith("-")}
        else:
            name = _name(dep)
            if name not in skip:
                names.add(conda_to_pip.get(name, name))
    return names


def test_environment_yml_names_the_same_runtime_packages_as_pyproject() -> None:
    assert _runtime_from_environment() == _runtime_from_pyproject()


def test_dependencies_are_ranges_not_pins() -> None:
    data = tomllib.loads((REPO / "pyproject.toml").read_text())
    pinned = [r for r in data["project"]["dependencies"] if "==" in r]
    assert pinned == []


def test_make_help_lists_the_targets_the_readme_names() -> None:
    """What `make help` prints (the targets with a description) is what the README promises."""
    import subprocess

    help_run = subprocess.run(["make", "-C", str(REPO), "help"], capture_output=True, text=True, check=True)
    shown = help_run.stdout
    listed = set(re.findall(r"^\s+(?:\x1b\[[0-9;]*m)?([a-z][a-z-]*)", shown, flags=re.M))
    sentence = re.search(r"`make help` lists every target \((.*?)\)", (REPO / "README.md").read_text(), re.S)
    assert sentence, "the README's sentence on `make help` is gone"
    named = set(re.findall(r"`([a-z][a-z-]*)`", sentence.group(1)))
    assert {"install", "train", "test", "bench", "gpu-check"} <= named
    assert listed == named | {"help"}


def test_package_imports_with_version() -> None:
    import deepfill

    assert re.fullmatch(r"\d+\.\d+\.\d+.*", deepfill.__version__)


def test_the_package_builds_without_warnings(tmp_path) -> None:
    """What `make install` builds: no deprecation or other warning from the build backend."""
    import subprocess

    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            str(REPO),
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert list(tmp_path.glob("deepfill-*.whl"))
    # The build backend's warnings (setuptools deprecations such as the license table), not
    # pip's notes about the machine's package index.
    output = (result.stdout + result.stderr).splitlines()
    warned = [line for line in output if "BuildBackendWarning" in line or "deprecat" in line.lower()]
    assert warned == [], warned


# Layers, lowest first: a module may import its own package and the packages below it. The
# top-level modules (inference, deploy, demo, selftest) sit between the libraries and cli/.
_LAYERS = [
    {"utils"},
    {"models", "data"},
    {"evaluation", "official"},
    {"training", "sweeps"},
    {"inference", "deploy"},
    {"demo", "selftest"},
    {"cli"},
]


def _layer(name: str) -> int:
    return next(i for i, layer in enumerate(_LAYERS) if name in layer)


def test_dependencies_point_down() -> None:
    import ast

    wrong = []
    for path in sorted((REPO / "src" / "deepfill").rglob("*.py")):
        parts = path.relative_to(REPO / "src" / "deepfill").with_suffix("").parts
        if parts[0] in ("__init__", "__main__"):
            continue
        module = ".".join(p for p in parts if p != "__init__")
        own = parts[0]
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, ast.ImportFrom)
                and node.level == 0
                and (node.module or "").startswith("deepfill.")
            ):
                target = node.module.split(".")[1]
                if target in ("__init__",) or _layer(target) <= _layer(own):
                    continue
                wrong.append(f"{module} imports {node.module} (line {node.lineno})")
    assert not wrong, "imports that point up: " + "; ".join(wrong)


def _project_imports() -> dict[str, set[str]]:
    """Module -> the project's modules it imports, at the top or inside a function."""
    import ast

    root = REPO / "src" / "deepfill"
    names = {
        ".".join(("deepfill", *p.relative_to(root).with_suffix("").parts)).removesuffix(".__init__")
        for p in root.rglob("*.py")
    }
    graph: dict[str, set[str]] = {}
    for path in sorted(root.rglob("*.py")):
        module = ".".join(("deepfill", *path.relative_to(root).with_suffix("").parts)).removesuffix(
            ".__init__"
        )
        targets = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, ast.ImportFrom)
                and node.level == 0
                and (node.module or "").startswith("deepfill")
            ):
                found = [f"{node.module}.{alias.name}" for alias in node.names]
                targets |= {t for t in found if t in names} or {node.module}
            elif isinstance(node, ast.Import):
                targets |= {a.name for a in node.names if a.name.startswith("deepfill.")}
        graph[module] = {t for t in targets if t in names and t != module}
    return graph


def test_no_import_circle_inside_a_package() -> None:
    """Within one package (``utils``, ``training``, ...) the modules import each other in one
    direction only: no module reaches, through others of its package, back to itself."""
    graph = _project_imports()

    def package(module: str) -> str:
        return ".".join(module.split(".")[:2])

    circles = []
    for start in graph:
        if start.count(".") < 2:  # a package's __init__ re-exports its modules
            continue
        seen, stack = set(), [(start, [start])]
        while stack:
            module, path = stack.pop()
            for target in graph.get(module, ()):
                if target.count(".") < 2 or package(target) != package(start):
                    continue
                if target == start:
                    circles.append(" -> ".join([*path, start]))
                elif target not in seen:
                    seen.add(target)
                    stack.append((target, [*path, target]))
    assert not circles, "import circles: " + "; ".join(sorted(set(circles)))
