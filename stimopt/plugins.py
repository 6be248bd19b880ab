"""The plugin manager: one per process, loaded once from the ``stimopt`` entry-point group.

``STIMOPT_LOAD_PLUGINS`` (comma-separated entry-point names) restricts which plugins load;
set it to an empty string to load none. A plugin that fails to import is recorded (name and
error) and skipped: the rest still work.
"""
from __future__ import annotations

import importlib.metadata
import os
from dataclasses import dataclass, field

import pluggy

from stimopt import hookspecs
from stimopt.errors import StimoptError

GROUP = "stimopt"
KINDS = ("target", "generator", "optimizer")

pm = pluggy.PluginManager(GROUP)
pm.add_hookspecs(hookspecs)


@dataclass
class PluginInfo:
    name: str
    version: str | None
    module: str
    package: str | None = None
    hooks: list[str] = field(default_factory=list)
    registers: dict[str, list[str]] = field(default_factory=dict)
    config_dirs: list[str] = field(default_factory=list)
    error: str | None = None


_loaded = False
_failed: dict[str, PluginInfo] = {}
_dist_of: dict[str, tuple[str, str | None]] = {}
_registry: dict[str, dict[str, tuple[type, str]]] | None = None
_config_dirs: list[tuple[str, str]] | None = None


def load_plugins() -> None:
    """Load the entry-point plugins once (respecting ``STIMOPT_LOAD_PLUGINS``)."""
    global _loaded
    if _loaded:
        return
    _loaded = True
    allowed = os.environ.get("STIMOPT_LOAD_PLUGINS")
    allow = None if allowed is None else {s.strip() for s in allowed.split(",") if s.strip()}
    for ep in importlib.metadata.entry_points(group=GROUP):
        if allow is not None and ep.name not in allow:
            continue
        if pm.get_plugin(ep.name) is not None:
            continue
        dist = ep.dist
        version = dist.version if dist else None
        try:
            module = ep.load()
        except Exception as exc:  # a broken plugin must not take the others down
            _failed[ep.name] = PluginInfo(ep.name, version, ep.value, dist.name if dist else None,
                                          error=f"{type(exc).__name__}: {exc}")
            continue
        pm.register(module, name=ep.name)
        _dist_of[ep.name] = (dist.name if dist else ep.name, version)



def register_plugin(module, name: str) -> None:
    """Register a plugin object directly (tests, notebooks). Clears the cached registry."""
    global _registry, _config_dirs
    load_plugins()
    pm.register(module, name=name)
    _dist_of[name] = (name, None)
    _registry = None
    _config_dirs = None


def unregister_plugin(name: str) -> None:
    global _registry, _config_dirs
    plugin = pm.get_plugin(name)
    if plugin is not None:
        pm.unregister(plugin)
    _registry = None
    _config_dirs = None


def _collect(hook_name: str, plugin) -> list[tuple]:
    out: list[tuple] = []
    caller = pm.subset_hook_caller(hook_name, remove_plugins=[p for p in pm.get_plugins() if p is not plugin])
    caller(register=lambda *args: out.append(args))
    return out


def registry() -> dict[str, dict[str, tuple[type, str]]]:
    """``{"target": {name: (class, plugin_name)}, "generator": ..., "optimizer": ...}``."""
    global _registry
    load_plugins()
    if _registry is None:
        reg: dict[str, dict[str, tuple[type, str]]] = {k: {} for k in KINDS}
        for plugin_name, plugin in pm.list_name_plugin():
            for kind in KINDS:
                for name, cls in _collect(f"register_{kind}s", plugin):
                    reg[kind][name] = (cls, plugin_name)
        _registry = reg
    return _registry


def config_dirs() -> list[tuple[str, str]]:
    """``[(plugin_name, folder), ...]`` of registered Hydra config folders, in load order."""
    global _config_dirs
    load_plugins()
    if _config_dirs is None:
        dirs = []
        for plugin_name, plugin in pm.list_name_plugin():
            for (folder,) in _collect("register_config_dirs", plugin):
                dirs.append((plugin_name, os.path.abspath(str(folder))))
        _config_dirs = dirs
    return _config_dirs


def lookup(kind: str, name: str) -> type:
    """The class registered as ``name`` for ``kind``, or a one-line error listing the choices."""
    reg = registry()[kind]
    if name not in reg:
        choices = ", ".join(sorted(reg)) or "(none)"
        hint = ""
        if _failed:
            hint = f"; plugins that failed to load: {', '.join(sorted(_failed))} (see stimopt-plugins)"
        raise StimoptError(f"unknown {kind} '{name}'; registered {kind}s: {choices}{hint}")
    return reg[name][0]


def plugin_infos() -> list[PluginInfo]:
    """Every plugin: loaded ones with what they register, failed ones with their error."""
    registry()
    infos = []
    for plugin_name, plugin in pm.list_name_plugin():
        dist_name, version = _dist_of.get(plugin_name, (plugin_name, None))
        info = PluginInfo(
            name=plugin_name,
            version=version,
            module=getattr(plugin, "__name__", repr(plugin)),
            package=dist_name,
            hooks=sorted(h.name for h in pm.get_hookcallers(plugin) or []),
        )
        for kind in KINDS:
            names = sorted(n for n, (_, p) in _registry[kind].items() if p == plugin_name)
            if names:
                info.registers[kind] = names
        info.config_dirs = [d for p, d in config_dirs() if p == plugin_name]
        infos.append(info)
    infos.extend(_failed.values())
    return infos


def failed_plugins() -> dict[str, str]:
    load_plugins()
    return {name: info.error for name, info in _failed.items()}
