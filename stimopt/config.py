"""Hydra wiring: one SearchPathPlugin that adds every plugin's registered config folder, the
check of group choices before Hydra composes, the ``stimopt_options`` resolver of the help
pages, and ``compose()`` for tests and notebooks."""
from __future__ import annotations

import os
import sys

from hydra.core.config_search_path import ConfigSearchPath
from hydra.core.plugins import Plugins
from hydra.plugins.search_path_plugin import SearchPathPlugin
from omegaconf import OmegaConf

from stimopt import plugins
from stimopt.errors import StimoptError


class StimoptSearchPath(SearchPathPlugin):
    """Appends the config folders of all loaded stimopt plugins (core's own included)."""

    def manipulate_search_path(self, search_path: ConfigSearchPath) -> None:
        for plugin_name, folder in plugins.config_dirs():
            search_path.append(provider=f"stimopt-{plugin_name}", path=f"file://{folder}")


def _options_line(group: str) -> str:
    return ", ".join(plugins.group_options(group)) or "(none: no loaded plugin has one)"


# The help pages (hydra.help.template in conf/config.yaml, conf/fit.yaml) list a group's options with it.
OmegaConf.register_new_resolver("stimopt_options", _options_line, replace=True)

_installed = False


def install_search_path() -> None:
    global _installed
    if not _installed:
        Plugins.instance().register(StimoptSearchPath)
        _installed = True


def _core_dir() -> str:
    plugins.check_load_env()
    return next(folder for name, folder in plugins.config_dirs() if name == "core")


def app_groups(config_name: str) -> dict[str, object]:
    """``{group: default option}`` of the groups the primary config ``config_name`` composes."""
    primary = OmegaConf.load(os.path.join(_core_dir(), f"{config_name}.yaml"))
    groups: dict[str, object] = {}
    for entry in primary.get("defaults") or []:
        if isinstance(entry, str) or entry is None or len(entry) != 1:
            continue
        key, value = next(iter(entry.items()))
        key = str(key)
        if key.startswith("override ") or key.startswith("hydra/"):
            continue
        optional = key.startswith("optional ")
        groups[key.removeprefix("optional ").split("@")[0]] = None if optional else value
    return groups


def _choices(override) -> list[str]:
    """The option names an override picks (several for a sweep ``a,b,c``; none for glob/range/null)."""
    from hydra.core.override_parser.types import ChoiceSweep

    value = override.value()
    if isinstance(value, ChoiceSweep):
        return [str(v) for v in value.list if v is not None]
    if isinstance(value, (str, int, float)) and not isinstance(value, bool):
        return [str(value)]
    return []


def check_choices(config_name: str, args: list[str]) -> None:
    """Raise a one-line StimoptError when a group option (on the command line or a default) does not exist."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    groups = app_groups(config_name)
    candidates = [a for a in args if "=" in a and not a.startswith("-")]
    try:
        overrides = OverridesParser.create().parse_overrides(candidates)
    except Exception:  # Hydra reports its own syntax errors
        return
    chosen: dict[str, list[tuple[str, bool]]] = {g: [(str(d), False)] for g, d in groups.items() if d is not None}
    for override in overrides:
        group = override.key_or_group.split("@")[0]
        if group not in groups:
            continue
        if override.is_delete():
            chosen.pop(group, None)
            continue
        chosen[group] = [(name, True) for name in _choices(override)]
    restricted = os.environ.get("STIMOPT_LOAD_PLUGINS")
    # what the user typed first, then the defaults it left in place
    picks = sorted(((g, n, given) for g, names in chosen.items() for n, given in names), key=lambda p: not p[2])
    for group, name, given in picks:
        have = plugins.group_options(group)
        if name in have or name == "null":
            continue
        failed = plugins.failed_plugins()
        hint = f"; plugins that failed to load: {', '.join(sorted(failed))} (see stimopt-plugins)" if failed else ""
        if restricted is not None:
            hint += f"; STIMOPT_LOAD_PLUGINS={restricted} loads only these plugins"
        listed = f"available {group} options: {', '.join(have) or '(none)'}"
        if given:
            raise StimoptError(f"unknown {group} '{name}' ({group}={name}); {listed}{hint}")
        raise StimoptError(f"the default {group} '{name}' is not available (its plugin is not loaded); {listed}; "
                           f"pick one with {group}=NAME{hint}")


def run_app(program: str, config_name: str, task) -> None:
    """Start a Hydra app of stimopt (``stimopt``, ``stimopt-fit``): load plugins once, warn about the
    broken ones in one line each, refuse unknown group options in one line, put every plugin's
    config folder on the search path, run ``task`` (the console scripts go through
    ``stimopt.interrupt.run_app_interruptible``, which makes Ctrl-C one line)."""
    import hydra

    plugins.load_plugins()
    for name, error in plugins.failed_plugins().items():
        print(f"{program}: warning: plugin '{name}' failed to load ({error}); the others work", file=sys.stderr)
    try:
        from stimopt.schema import check_override_syntax

        check_override_syntax(sys.argv[1:])  # Hydra's parse errors as one line (stimopt.schema)
        check_choices(config_name, sys.argv[1:])
    except StimoptError as exc:
        print(f"{program}: error: {exc}", file=sys.stderr)
        sys.exit(2)
    install_search_path()
    hydra.main(config_path=None, config_name=config_name, version_base="1.3")(task)()


def compose_app(config_name: str, overrides: list[str] | None = None, return_hydra_config: bool = False):
    """The composed primary config ``config_name`` with ``overrides``, exactly as its app would see it."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    plugins.load_plugins()
    check_choices(config_name, list(overrides or []))
    install_search_path()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=_core_dir(), version_base="1.3"):
        return hydra_compose(config_name, overrides=list(overrides or []), return_hydra_config=return_hydra_config)


def compose(overrides: list[str] | None = None, return_hydra_config: bool = False):
    """The composed experiment config, exactly as ``stimopt OVERRIDES`` would see it."""
    return compose_app("config", overrides, return_hydra_config)


def presets_for(group: str, option: str) -> list[str]:
    """The ``experiment=`` presets (in any registered folder) that pick ``group=option``."""
    found = []
    for _, folder in plugins.config_dirs():
        base = os.path.join(folder, "experiment")
        for name in sorted(os.listdir(base)) if os.path.isdir(base) else []:
            if not name.endswith(".yaml"):
                continue
            try:
                defaults = OmegaConf.load(os.path.join(base, name)).get("defaults") or []
            except Exception:  # a broken preset is Hydra's to report when it is used
                continue
            for entry in defaults:
                if not isinstance(entry, str) and entry is not None and dict(entry).get(f"override /{group}") == option:
                    found.append(name[:-5])
    return sorted(set(found))
