"""``stimopt-fit``: fit a model of recorded responses (a model target) to images + responses.

A Hydra app like ``stimopt`` (plugins' config folders are on its search path), primary config
``conf/fit.yaml``, one group ``model/``:

    stimopt-fit model=v4_ensemble data.images=imgs.npz data.responses=resp.npz out=fits/v4
    stimopt-fit model=encoder model.backbone=efficientnet_lite0 data.responses=nsd.h5 data.format=nsd
    stimopt-fit model=v4_ensemble data.twin.n_images=2000     # synthetic "digital twin" data
    stimopt-fit mode=match checkpoint=fits/v4/model.pt data.images=... data.responses=...
    stimopt-fit model=encoder model.readout=mix_relu data.images=... data.responses=...   # one readout
    stimopt-fit model=encoder model.readout=compare out=fits/readouts   # the six readouts of the seed
        # paper's Fig. 2a on one split: readouts.json/.csv/.png, model_<readout>.pt each, model.pt the best

The encoder family's readouts (``model.readout``: linear, relu, quantile, gain_offset, mix_relu,
mix_linear, compare) are options of that model family (its config documents them); every fitted one is a
``target=encoder target.checkpoint=...`` afterwards.

The model contract (how to add ``model=yours`` without touching this file)
--------------------------------------------------------------------------
A model config ``model/NAME.yaml`` (in ``conf/`` or in any plugin's registered config folder)
selects its fit function with ``_target_``::

    _target_: my_package.my_module.fit_my_model      # a function, not a class
    ...                                              # its own options, read from cfg.model

The function has the fixed signature, and is marked as a fit function (only marked functions, or
functions of a loaded stimopt plugin's own package, are ever called: ``model._target_=os.system``
is refused)::

    from stimopt.fit import register_fit

    @register_fit
    def fit_my_model(cfg: DictConfig, out_dir: pathlib.Path) -> dict: ...

``cfg`` is the whole composed fit config (``cfg.model`` its own options, ``cfg.data`` the data
spec, ``cfg.seed``, ``cfg.device``); ``out_dir`` exists. It writes its checkpoint(s) into
``out_dir`` and returns a JSON-serializable report (by convention ``checkpoint``: path written,
``r2_test``: held-out R^2 per output, ``r2_test_median``). This app writes the report to
``out_dir/report.json`` and prints a one-line summary. ``mode=match`` calls the function named by
the model config's ``matcher:`` key with the same signature (marked with ``@register_matcher``). Data loading helpers live in
:mod:`stimopt.responses` (``load_dataset(cfg.data)``).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from stimopt import plugins
from stimopt.errors import StimoptError


def _jsonable(obj):
    import numpy as np

    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _jsonable(obj.tolist())
    if isinstance(obj, (np.floating, float)):
        return None if obj != obj else float(obj)
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, Path):
        return str(obj)
    return obj


_REGISTERED: dict[str, set[str]] = {"fit": set(), "match": set()}


def register_fit(fn):
    """Decorator: ``fn(cfg, out_dir) -> dict`` may be named by a model config's ``_target_``."""
    fn.__stimopt_fit__ = "fit"
    _REGISTERED["fit"].add(f"{fn.__module__}.{fn.__qualname__}")
    return fn


def register_matcher(fn):
    """Decorator: ``fn(cfg, out_dir) -> dict`` may be named by a model config's ``matcher``."""
    fn.__stimopt_match__ = "match"
    _REGISTERED["match"].add(f"{fn.__module__}.{fn.__qualname__}")
    return fn


def _plugin_packages() -> set[str]:
    """The packages of the loaded stimopt plugins (not stimopt itself)."""
    packages = set()
    for plugin in plugins.pm.get_plugins():
        owner = plugin.__name__ if isinstance(plugin, type(sys)) else type(plugin).__module__
        package = owner.rsplit(".", 1)[0] if not hasattr(sys.modules.get(owner), "__path__") else owner
        if package not in ("stimopt", "builtins", "__main__"):
            packages.add(package)
    return packages


def _in_plugin_package(module: str) -> bool:
    """``module`` is (a submodule of) the package of a loaded stimopt plugin."""
    return any(module == p or module.startswith(p + ".") for p in _plugin_packages())


def fit_function(cfg, key: str = "_target_"):
    """The callable named by ``cfg.model._target_`` (``mode=fit``) or ``cfg.model.matcher`` (``mode=match``).

    Only functions meant for it are called: ones marked with :func:`register_fit` /
    :func:`register_matcher`, or defined in a loaded stimopt plugin's package, so a config or an
    override cannot make ``stimopt-fit`` call ``os.system`` or any other importable function.
    """
    import inspect

    target = cfg.model.get(key) if cfg.get("model") is not None else None
    kind = "fit" if key == "_target_" else "match"
    if not target:
        what = "package.module.fit_function" if key == "_target_" else "package.module.match_function (this model cannot match neurons)"
        raise StimoptError(f"the model config needs '{key}: {what}' (see stimopt/fit.py)")
    from hydra.utils import get_method

    decorator = "register_fit" if kind == "fit" else "register_matcher"
    models = ", ".join(plugins.group_options("model")) or "none"
    refusal = (f"model.{key}={target} is not a stimopt {kind} function; choose model=<{models}>, or mark "
               f"your own function with @stimopt.fit.{decorator}")
    # Importing a module runs its code, so the standard library and stimopt's core (which hold no
    # fit functions but os.system, subprocess, ...) are refused before anything is imported.
    top = str(target).split(".")[0]
    if str(target) not in _REGISTERED[kind] and (top in sys.stdlib_module_names or top in ("builtins", "stimopt")):
        raise StimoptError(refusal)
    try:
        fn = get_method(str(target))
    except Exception as exc:
        raise StimoptError(f"model {kind} function '{target}' cannot be imported: {str(exc).splitlines()[0]}") from None
    marked = getattr(fn, f"__stimopt_{kind}__", None) == kind
    if not marked and not (inspect.isfunction(fn) and _in_plugin_package(getattr(fn, "__module__", None) or "")):
        raise StimoptError(refusal)
    return fn


def run_fit(cfg, out_dir: str | Path) -> dict:
    """Fit (or match) as configured, write ``report.json`` into ``out_dir``, return the report."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    plugins.load_plugins()
    mode = str(cfg.get("mode", "fit"))
    if mode == "fit":
        report = fit_function(cfg)(cfg, out_dir)
    elif mode == "match":
        report = fit_function(cfg, key="matcher")(cfg, out_dir)
    else:
        raise StimoptError(f"mode must be 'fit' or 'match', got '{mode}'")
    report = _jsonable(dict(report))
    (out_dir / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


def _task(cfg) -> None:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    hc = HydraConfig.get()
    out_dir = Path(hc.runtime.output_dir)  # = out, or out/<job number> in a sweep
    try:
        report = run_fit(cfg, out_dir)
    except StimoptError as exc:
        print(f"stimopt-fit: error: {exc}", file=sys.stderr)
        if hc.mode == RunMode.MULTIRUN:  # one bad job must not sink the sweep
            (out_dir / "error.txt").write_text(str(exc) + "\n")
            return
        sys.exit(2)
    line = report.get("summary") or ", ".join(f"{k}={v}" for k, v in report.items() if isinstance(v, (int, float, str)))
    print(f"{line}: {out_dir / 'report.json'}")


def main() -> None:
    from stimopt.interrupt import run_app_interruptible

    run_app_interruptible("stimopt-fit", "fit", _task)


def compose_fit(overrides: list[str] | None = None):
    """The composed fit config, exactly as ``stimopt-fit OVERRIDES`` would see it (tests, notebooks)."""
    from stimopt.config import compose_app

    return compose_app("fit", overrides)
