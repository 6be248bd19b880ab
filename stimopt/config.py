"""Hydra wiring: one SearchPathPlugin that adds every plugin's registered config folder, and
``compose()`` for tests and notebooks."""
from __future__ import annotations

from hydra.core.config_search_path import ConfigSearchPath
from hydra.core.plugins import Plugins
from hydra.plugins.search_path_plugin import SearchPathPlugin

from stimopt import plugins


class StimoptSearchPath(SearchPathPlugin):
    """Appends the config folders of all loaded stimopt plugins (core's own included)."""

    def manipulate_search_path(self, search_path: ConfigSearchPath) -> None:
        for plugin_name, folder in plugins.config_dirs():
            search_path.append(provider=f"stimopt-{plugin_name}", path=f"file://{folder}")


_installed = False


def install_search_path() -> None:
    global _installed
    if not _installed:
        Plugins.instance().register(StimoptSearchPath)
        _installed = True


def run_app(program: str, config_name: str, task) -> None:
    """Start a Hydra app of stimopt (``stimopt``, ``stimopt-fit``): load plugins once, warn about the
    broken ones in one line each, put every plugin's config folder on the search path, run ``task``."""
    import sys

    import hydra

    plugins.load_plugins()
    for name, error in plugins.failed_plugins().items():
        print(f"{program}: warning: plugin '{name}' failed to load ({error}); the others work", file=sys.stderr)
    install_search_path()
    hydra.main(config_path=None, config_name=config_name, version_base="1.3")(task)()


def compose(overrides: list[str] | None = None, return_hydra_config: bool = False):
    """The composed experiment config, exactly as ``stimopt OVERRIDES`` would see it."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    install_search_path()
    GlobalHydra.instance().clear()
    core_dir = next(folder for name, folder in plugins.config_dirs() if name == "core")
    with initialize_config_dir(config_dir=core_dir, version_base="1.3"):
        return hydra_compose("config", overrides=list(overrides or []), return_hydra_config=return_hydra_config)
