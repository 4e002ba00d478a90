"""What every Hydra command does before and around Hydra: the command line made acceptable to
Hydra's override grammar, and every error that Hydra itself would report (a bad key in a
multirun, a full disk while it writes its config files) turned into one line.

* Values Hydra's grammar refuses unquoted (paths with non-ASCII letters, ``( ) [ ] { } = #``, or
  a comma in a path of a single run) are quoted for it: ``input=/photos/été 2024/a.jpg`` works as
  typed.
* A key the config does not list, but that its object's constructor takes (any ``Trainer``
  argument: ``trainer.limit_train_batches=4``), is added (``+trainer.limit_train_batches=4``).
* A single run's command line is composed once before Hydra runs, so an unknown key or option
  ends in one line and exit status 2; under ``-m`` Hydra's own errors end the same way.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

from deepfill.utils.errors import EXIT_NO_SPACE, NoSpaceError, fail, no_space_error

__all__ = [
    "command_help",
    "hydra_command",
    "prepare_overrides",
    "quote_for_hydra",
    "register_command_resolvers",
    "run_hydra_command",
]

# Keys whose values are file or folder names: a comma in them is part of the name (outside -m).
_PATH_KEYS = ("input", "output", "weights", "mask_path", "ckpt_path", "root", "flist", "dir", "path")


def _parse(override: str):
    """Hydra's reading of one override, or None when its grammar refuses it."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        (parsed,) = OverridesParser.create().parse_overrides([override])
    except Exception:
        return None
    return parsed


def quote_for_hydra(value: str) -> str:
    """``value`` as a single-quoted Hydra string (its quotes and the backslashes before them
    escaped)."""
    out, backslashes = [], 0
    for char in value:
        if char == "\\":
            backslashes += 1
            continue
        if char == "'":
            out.append("\\" * (2 * backslashes + 1) + "'")
        else:
            out.append("\\" * backslashes + char)
        backslashes = 0
    out.append("\\" * (2 * backslashes))  # backslashes before the closing quote
    return "'" + "".join(out) + "'"


def _quote_values(overrides: Sequence[str], multirun: bool) -> list[str]:
    fixed = []
    for override in overrides:
        key, sep, value = override.partition("=")
        if not sep or override.startswith("-") or not value or value[0] in "'\"":
            fixed.append(override)
            continue
        parsed = _parse(override)
        if key.lstrip("+~").rsplit(".", 1)[-1].endswith(_PATH_KEYS):
            # A file name must arrive as typed (Hydra reads "a\,b" as "a,b"); a sweep of names
            # under -m stays a sweep.
            as_typed = parsed is not None and (
                (multirun and parsed.is_sweep_override())
                or isinstance(parsed.value(), list | dict)  # [a, b]: a list of names, as typed
                or parsed.value() == value
            )
        else:
            as_typed = parsed is not None
        if not as_typed:
            quoted = f"{key}={quote_for_hydra(value)}"
            if _parse(quoted) is not None:
                override = quoted
        fixed.append(override)
    return fixed


def _target_accepts(cfg: Any, key: str) -> bool:
    """True when ``key``'s parent node is instantiated (``_target_``) by a callable that takes an
    argument named like ``key``'s last part."""
    from deepfill.utils.config import target_arguments

    parent, _, name = key.rpartition(".")
    return name in target_arguments(cfg, parent)


def _first_choice(override: str) -> str:
    """A sweep override (``a=1,2``) as the single run of its first value (``a=1``), to compose."""
    parsed = _parse(override)
    if parsed is None or not parsed.is_sweep_override():
        return override
    try:
        values = list(parsed.sweep_string_iterator())
    except Exception:  # an interval: the sweeper's, nothing to compose
        return override
    key = override.partition("=")[0]
    return f"{key}={values[0]}" if values else override


def _add_target_arguments(
    config_name: str, overrides: list[str], multirun: bool
) -> tuple[list[str], Exception | None]:
    """Prefix ``+`` to keys that are missing from the config but taken by their node's target.

    Returns the overrides and the composition error that remains (None when the command line
    composes): the one composition that checks a single run's command line before Hydra runs."""
    import re

    from hydra import compose
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    overrides = list(overrides)
    plain = [i for i, o in enumerate(overrides) if not o.startswith("-")]
    remaining = None
    # Each pass either composes, or gives up, or adds one '+': at most one pass per override
    # and a last one that composes the fixed command line.
    for _ in range(len(plain) + 1):
        probe = [_first_choice(overrides[i]) if multirun else overrides[i] for i in plain]
        try:
            compose(config_name, overrides=probe)
            remaining = None
            break
        except (HydraException, OmegaConfBaseException) as error:
            remaining = error
            found = re.match(r"Could not override '([^']+)'", str(error).strip())
            if not found:
                break
            key = found.group(1)
            index = next((i for i in plain if overrides[i].partition("=")[0] == key), None)
            rest = [p for p, i in zip(probe, plain, strict=True) if i != index]
            try:
                base = compose(config_name, overrides=rest)
            except (HydraException, OmegaConfBaseException):
                break
            if index is None or not _target_accepts(base, key):
                break
            overrides[index] = "+" + overrides[index]
    return overrides, remaining


def prepare_overrides(config_name: str, argv: Sequence[str]) -> list[str]:
    """The command line as Hydra should read it (see module doc): values quoted where its
    grammar needs it, ``+`` before constructor arguments the config does not list.

    A single run's command line that does not compose (an unknown key or option, bad syntax)
    raises :class:`~deepfill.utils.errors.ConfigError` with one line naming the key, so that it
    is reported before Hydra starts; under ``-m`` Hydra reports its own errors."""
    from hydra import initialize_config_dir

    from deepfill.utils.config import CONFIG_DIR, composition_message
    from deepfill.utils.errors import ConfigError

    argv = list(argv)
    multirun = any(a in ("-m", "--multirun") for a in argv)
    if any(a.startswith("-") and a not in ("-m", "--multirun") for a in argv):
        return argv  # --cfg, --info ...: Hydra's own
    # `a=1 -m b=2` would leave b=2 unparsed (Hydra's argparse takes the overrides in one run).
    argv = ["-m"] * multirun + [a for a in argv if a not in ("-m", "--multirun")]
    quoted = _quote_values(argv[multirun:], multirun)
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        overrides, error = _add_target_arguments(config_name, quoted, multirun)
        if error is not None and not multirun:
            raise ConfigError(composition_message(error, config_name, overrides))
    return argv[:multirun] + overrides


def _wants_help(argv: Sequence[str]) -> bool:
    return any(a in ("-h", "--help") for a in argv)


def command_help(prog: str, config_name: str, description: str | None, argv: Sequence[str]) -> str:
    """What ``--help`` prints: the command's own description, the config groups its config
    composes with (each group's options, the chosen one marked) and its keys with their
    values. Hydra's own help lists every group of every plugin and takes seconds to do it."""
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf import OmegaConf, open_dict
    from omegaconf.errors import OmegaConfBaseException

    from deepfill.utils.config import CONFIG_DIR, composition_message
    from deepfill.utils.errors import ConfigError

    overrides = [a for a in argv if not a.startswith("-")]
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        try:
            cfg = compose(config_name, overrides=overrides, return_hydra_config=True)
        except (HydraException, OmegaConfBaseException) as error:
            raise ConfigError(composition_message(error, config_name, overrides)) from None
    choices = {k: v for k, v in cfg.hydra.runtime.choices.items() if not k.startswith("hydra")}
    with open_dict(cfg):
        del cfg["hydra"]
    lines = [f"usage: {prog} [key=value ...] [group=option ...] [-m] [--cfg job] [--hydra-help]", ""]
    if description:
        lines += [description.strip(), ""]
    groups = []
    for key, chosen in sorted(choices.items()):
        # A group that a config's own defaults choose is keyed group@package (the model's loss).
        group, _, package = key.partition("@")
        options = sorted(p.stem for p in (CONFIG_DIR / group).glob("*.yaml"))
        shown = [f"[{o}]" if o == chosen else o for o in options]
        note = f"  (chosen by {package.split('.')[0]})" if package else ("" if chosen else "  (none chosen)")
        groups.append(f"  {group}: {', '.join(shown)}{note}")
    named = {key.partition("@")[0] for key in choices}
    others = sorted(
        p.name for p in CONFIG_DIR.iterdir() if p.is_dir() and p.name not in named and p.name != "hydra"
    )
    if groups:
        lines += [f"Config groups of conf/{config_name}.yaml (group=option; [chosen]):", *groups]
        if others and len(groups) > 1:  # a command composed of groups (training) takes more
            lines.append(f"  more in conf/, added with +group=option: {', '.join(others)}")
        lines.append("")
    lines += ["Configuration (any key: key=value; a new key: +key=value):", ""]
    lines += ["  " + line for line in OmegaConf.to_yaml(cfg, resolve=False).rstrip().splitlines()]
    lines += ["", "Hydra's own options: --hydra-help; the composed job config: --cfg job."]
    return "\n".join(lines)


def register_command_resolvers() -> None:
    """Every resolver the configs use, registered where the commands start: the low-level ones
    of :mod:`deepfill.utils.resolvers`, the sweeps' (:mod:`deepfill.sweeps.resolvers`) and
    ``${direction:metric}`` (Optuna's direction for a metric, from the metric registry)."""
    from deepfill.evaluation.metrics import optimization_direction
    from deepfill.sweeps.resolvers import SWEEP_RESOLVERS
    from deepfill.utils.resolvers import register_resolvers

    register_resolvers({"direction": optimization_direction, **SWEEP_RESOLVERS})


def run_hydra_command(prog: str, config_name: str, hydra_main: Callable[[], Any]) -> None:
    """Run a ``@hydra.main`` function as a console command: ``--help`` answered at once,
    ``sys.argv`` prepared and a single run's overrides checked (:func:`prepare_overrides`), and
    Hydra's own errors reported in one line (exit 2; a full disk: 74)."""
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from deepfill.utils.config import composition_message
    from deepfill.utils.errors import report_errors

    register_command_resolvers()
    if _wants_help(sys.argv[1:]):
        description = sys.modules[hydra_main.__module__].__doc__
        print(report_errors(prog, command_help, prog, config_name, description, sys.argv[1:]), flush=True)
        return
    sys.argv[1:] = report_errors(prog, prepare_overrides, config_name, sys.argv[1:])
    # Hydra then raises its errors instead of printing them with its own advice.
    os.environ["HYDRA_FULL_ERROR"] = "1"
    try:
        hydra_main()
    except (HydraException, OmegaConfBaseException) as error:
        from hydra import initialize_config_dir
        from hydra.core.global_hydra import GlobalHydra

        from deepfill.utils.config import CONFIG_DIR

        overrides = [_first_choice(a) for a in sys.argv[1:] if not a.startswith("-")]
        GlobalHydra.instance().clear()  # Hydra's own run left it set
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
            message = composition_message(error, config_name, overrides)
        fail(prog, message)
    except OSError as error:
        full = no_space_error(error)
        if not isinstance(full, NoSpaceError):
            raise
        fail(prog, full, EXIT_NO_SPACE)


def hydra_command(prog: str, config_name: str, function: Callable[[Any], Any]) -> Callable[[], None]:
    """The console entry point of a Hydra command: ``function(cfg)`` on ``conf/<config_name>.yaml``
    composed with the command line, its user errors reported in one line (:func:`run_hydra_command`);
    its return value is the job's (what a sweeper optimises)."""
    import hydra

    from deepfill.utils.config import CONFIG_DIR
    from deepfill.utils.errors import report_errors

    def hydra_main(cfg) -> Any:
        # What the function returns goes back to Hydra: a sweeper (Optuna) optimises it.
        return report_errors(prog, function, cfg)

    # Hydra names the job (and its --help) after the task function's module: the command's.
    hydra_main.__module__ = function.__module__
    decorate = hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name=config_name)
    hydra_main = decorate(hydra_main)

    def main() -> None:
        """Console entry point."""
        run_hydra_command(prog, config_name, hydra_main)

    return main
