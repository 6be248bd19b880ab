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
_unknown: list[str] = []  # names in STIMOPT_LOAD_PLUGINS that no installed plugin has
_installed: list[str] = []


def load_plugins() -> None:
    """Load the entry-point plugins once (respecting ``STIMOPT_LOAD_PLUGINS``)."""
    global _loaded
    if _loaded:
        return
    _loaded = True
    allowed = os.environ.get("STIMOPT_LOAD_PLUGINS")
    allow = None if allowed is None else {s.strip() for s in allowed.split(",") if s.strip()}
    eps = list(importlib.metadata.entry_points(group=GROUP))
    _installed[:] = sorted({ep.name for ep in eps})
    if allow is not None:
        _unknown[:] = sorted(allow - set(_installed))
    for ep in eps:
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



def check_load_env() -> None:
    """A one-line error when ``STIMOPT_LOAD_PLUGINS`` names a plugin that is not installed, or leaves out ``core``."""
    load_plugins()
    installed = ", ".join(_installed) or "(none)"
    if _unknown:
        raise StimoptError(f"STIMOPT_LOAD_PLUGINS names unknown plugin(s) {', '.join(_unknown)}; installed plugins: "
                           f"{installed} (unset STIMOPT_LOAD_PLUGINS to load them all)")
    if pm.get_plugin("core") is None:
        raise StimoptError(f"STIMOPT_LOAD_PLUGINS must include 'core' (it holds the primary configs); installed plugins: {installed}")


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


def _folder_of(location: str) -> str:
    """The folder a registered config location names: a path, ``file://PATH`` or ``pkg://package.sub``
    (Hydra's search-path URIs). A ``pkg://`` package must be importable from a folder on disk."""
    text = str(location)
    if text.startswith("file://"):
        return os.path.abspath(text[len("file://"):])
    if text.startswith("pkg://"):
        import importlib.util

        package = text[len("pkg://"):].strip("/").replace("/", ".")
        try:
            spec = importlib.util.find_spec(package)
        except (ImportError, ValueError) as exc:
            raise StimoptError(f"config folder '{text}' names a package that cannot be imported ({exc}); "
                               "register pkg://<importable package> or a folder path") from None
        if spec is None or not spec.submodule_search_locations:
            raise StimoptError(f"config folder '{text}': '{package}' is not an importable package (add an __init__.py "
                               "to the folder, or register its path)")
        return os.path.abspath(list(spec.submodule_search_locations)[0])
    if "://" in text:
        raise StimoptError(f"config folder '{text}': only folder paths, file:// and pkg:// locations are supported")
    return os.path.abspath(text)


def config_dirs() -> list[tuple[str, str]]:
    """``[(plugin_name, folder), ...]`` of registered Hydra config folders, in load order.

    A plugin may register a folder path, a ``file://`` URI or a ``pkg://`` URI (as on Hydra's
    search path); each is returned as an absolute folder path.
    """
    global _config_dirs
    load_plugins()
    if _config_dirs is None:
        dirs = []
        for plugin_name, plugin in pm.list_name_plugin():
            for (location,) in _collect("register_config_dirs", plugin):
                dirs.append((plugin_name, _folder_of(location)))
        _config_dirs = dirs
    return _config_dirs


def group_options(group: str) -> list[str]:
    """The options of config group ``group`` (``optimizer`` -> ``[cmaes, ga, ...]``) in every registered folder."""
    names: set[str] = set()
    for _, folder in config_dirs():
        base = os.path.join(folder, *group.split("/"))
        if os.path.isdir(base):
            names |= {f[:-5] for f in os.listdir(base) if f.endswith(".yaml")}
    return sorted(names)


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
