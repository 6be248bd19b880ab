"""The schema of the top-level keys of ``conf/config.yaml``, checked once at composition.

Hydra composes strings and numbers as they were typed (``budget=abc`` is the string ``'abc'``,
``seed=1.5`` the float 1.5); :func:`validate` refuses what cannot be meant before anything is
built or evaluated, with one line naming the key and what it takes::

    from stimopt.schema import validate
    validate(cfg)        # raises StimoptError("budget=abc: must be a whole number >= 1, ...")

The schema is the :class:`ExperimentSchema` dataclass: one field per key, its type, and in the
field's metadata its range (``min``) or its choices. Component options are the components' own
business (their constructors check them); the few that can only crash deep inside a model or a
NumPy call (``target.input_size``, the objective's weights and indices) are checked here too.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

from stimopt.errors import StimoptError


def _choices(*values, **extra):
    return field(default=None, metadata={"choices": values, **extra})


def _whole(minimum: int, what: str | None = None, example=None):
    return field(default=None, metadata={"min": minimum, "what": what, "example": example})


@dataclass
class ReferenceSchema:
    kind: str | None = _choices(None, "natural_crops", "bank")
    n: int = _whole(1, None, 500)
    seed: int = _whole(0)
    path: str | None = None


@dataclass
class StoreSchema:
    synchronous: str = _choices("FULL", "NORMAL", upper=True)


@dataclass
class ExperimentSchema:
    direction: str = _choices("max", "min")
    budget: int = _whole(1, "a positive number of evaluations", 2000)
    batch_size: int = _whole(1, "a positive number of stimuli per generation", 20)
    seed: int = _whole(0)
    device: str = "auto"
    resume: bool | str = False
    on_bad_response: str = _choices("stop", "skip")
    store: StoreSchema = None
    reference: ReferenceSchema = None


def _fail(key: str, value, what: str, example=None) -> None:
    fix = f"; set e.g. {key}={_show(example)}" if example is not None else ""
    raise StimoptError(f"{key} must be {what}, got {_show(value)!r}{fix}")


def _show(value) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def whole_number(key: str, value, minimum: int | None = None, what: str | None = None, example=None) -> int:
    """``value`` as an int, refusing strings, booleans and non-integral floats (``seed=1.5``)."""
    hint = f"a whole number >= {minimum}" if minimum is not None else "a whole number"
    hint = f"{what} ({hint})" if what else hint
    example = example if example is not None else max(minimum or 0, 0)
    if isinstance(value, bool) or value is None:
        _fail(key, value, hint, example)
    if isinstance(value, float):
        if not math.isfinite(value) or not value.is_integer():
            _fail(key, value, hint + ", not a fraction", example)
        value = int(value)
    if not isinstance(value, int):
        _fail(key, value, hint, example)
    if minimum is not None and value < minimum:
        _fail(key, value, hint, example)
    return value


def number(key: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(float(value)):
        _fail(key, value, "a finite number", 1.0)
    return float(value)


def _check_field(key: str, f: dataclasses.Field, value) -> None:
    meta = f.metadata
    if "choices" in meta:
        shown = value.upper() if meta.get("upper") and isinstance(value, str) else value
        if shown not in meta["choices"]:
            options = " or ".join(repr(_show(c)) for c in meta["choices"])
            _fail(key, value, options, meta["choices"][-1] if meta["choices"][0] is None else meta["choices"][0])
    elif "min" in meta:
        whole_number(key, value, meta["min"], meta.get("what"), meta.get("example"))


def _check_node(prefix: str, schema: type, node) -> None:
    for f in dataclasses.fields(schema):
        key = f"{prefix}{f.name}"
        if f.name not in node:
            continue
        value = node[f.name]
        sub = {"store": StoreSchema, "reference": ReferenceSchema}.get(f.name) if schema is ExperimentSchema else None
        if sub is not None:
            if value is None:
                continue
            if not hasattr(value, "keys"):
                _fail(key, value, f"a group of keys ({', '.join(x.name for x in dataclasses.fields(sub))}); set them as {key}.KEY=VALUE")
            _check_node(f"{key}.", sub, value)
            continue
        _check_field(key, f, value)


def _check_resume(value) -> None:
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return
    _fail("resume", value, "true, false or the directory of the run to continue (resume=PATH)", True)


def _check_device(value) -> None:
    from stimopt.device import resolve_device

    if not isinstance(value, str):
        _fail("device", value, "auto, cpu, cuda or cuda:N", "auto")
    resolve_device(value)  # one line when torch does not know it or it is not there


def _index_list(key: str, value) -> None:
    values = list(value) if isinstance(value, (list, tuple)) or hasattr(value, "__len__") and not isinstance(value, str) else [value]
    for v in values:
        whole_number(key, v, 0)


def _check_objective(node) -> None:
    """The objective's numbers: weights and pattern are numbers, output lists are 0-based indices."""
    if node is None or not hasattr(node, "keys"):
        return
    for key in ("weights", "pattern"):
        value = node.get(key)
        if value is None:
            continue
        items = list(value) if not isinstance(value, (str, int, float)) else [value]
        for v in items:
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(float(v)):
                _fail(f"objective.{key}", _listed(value), "a list of numbers (one per output)", "[1,-1]")
    for key in ("select", "maximize", "suppress", "pattern_outputs"):
        value = node.get(key)
        if value is not None:
            try:
                _index_list(f"objective.{key}", value)
            except StimoptError:
                _fail(f"objective.{key}", _listed(value), "a list of 0-based output indices", "[0,1]")
    if node.get("suppress_weight") is not None:
        number("objective.suppress_weight", node.get("suppress_weight"))


def _listed(value) -> str:
    if isinstance(value, (str, int, float)):
        return str(value)
    return "[" + ",".join(_show(v) for v in value) + "]"


def _check_component_sizes(cfg) -> None:
    """Image sizes of the target and generator: a size of 0 crashes deep inside a model."""
    for group in ("target", "generator"):
        node = cfg.get(group)
        if node is None or not hasattr(node, "keys"):
            continue
        for key in ("input_size", "size", "image_size"):
            if node.get(key) is not None:
                whole_number(f"{group}.{key}", node.get(key), 1, example=128)


def check_resolves(cfg) -> None:
    """Every ``${...}`` interpolation of the config resolves (a typo is one line naming its key)."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    try:
        OmegaConf.to_container(cfg, resolve=True)
    except OmegaConfBaseException as exc:
        key = getattr(exc, "full_key", None) or "?"
        why = (str(exc).splitlines() or [type(exc).__name__])[0]
        raise StimoptError(f"{key}: {why}; fix the ${{...}} interpolation in that key (or its override)") from None


def validate(cfg) -> None:
    """Check the composed experiment config's types and ranges; raise one-line StimoptErrors."""
    check_resolves(cfg)
    _check_node("", ExperimentSchema, cfg)
    if "resume" in cfg:
        _check_resume(cfg.get("resume"))
    if "device" in cfg:
        _check_device(cfg.get("device"))
    _check_objective(cfg.get("objective"))
    _check_component_sizes(cfg)


def check_output_dir(path, key: str) -> None:
    """The run (or sweep) directory can hold a run: a folder (new or existing) that this process can write in."""
    import os
    import tempfile
    from pathlib import Path

    folder = Path(str(path))
    if folder.exists() and not folder.is_dir():
        raise StimoptError(f"{key}={folder} is a file, not a folder; give a new folder for the run ({key}=PATH)")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".stimopt-write-check-", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise StimoptError(f"{key}={folder} cannot be written ({exc.strerror or exc}); give a folder you can write in "
                           f"({key}=PATH) or fix its permissions") from None


try:
    from hydra.experimental.callback import Callback as _Callback
except ImportError:  # pragma: no cover - Hydra is a dependency; only a bare `import stimopt.schema` sees this
    _Callback = object


class OutputDirCheck(_Callback):
    """Hydra callback: refuse an unusable ``hydra.run.dir`` / ``hydra.sweep.dir`` in one line, before Hydra
    creates it (Hydra itself would raise a traceback from ``mkdir``) and before anything is built."""

    def on_run_start(self, config, **kwargs) -> None:
        self._check(config.hydra.run.dir, self._key(config, config.hydra.run.dir, "hydra.run.dir"))

    def on_multirun_start(self, config, **kwargs) -> None:
        self._check(config.hydra.sweep.dir, self._key(config, config.hydra.sweep.dir, "hydra.sweep.dir"))

    @staticmethod
    def _key(config, path, key: str) -> str:
        return "out" if config.get("out") is not None and str(config.get("out")) == str(path) else key  # stimopt-fit's out=

    @staticmethod
    def _check(path, key: str) -> None:
        import sys
        from pathlib import Path

        try:
            check_output_dir(path, key)
        except StimoptError as exc:  # Hydra turns exceptions from callbacks into warnings: exit here
            print(f"{Path(sys.argv[0]).name}: error: {exc}", file=sys.stderr)
            sys.exit(2)


# Hydra's own flags that take a value (the value is not an override).
_FLAGS_WITH_VALUE = {"--cfg", "-c", "--config-path", "-cp", "--config-name", "-cn", "--config-dir", "-cd", "--package", "-p",
                     "--experimental-rerun", "--info", "-i"}


def check_override_syntax(args: list[str]) -> None:
    """Each command-line override parses as Hydra's ``KEY=VALUE`` grammar; one line naming the bad one."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()
    skip = False
    for arg in args:
        if skip:
            skip = False
            continue
        if arg.startswith("-"):
            skip = arg in _FLAGS_WITH_VALUE and arg not in ("--info", "-i")
            continue
        try:
            (override,) = parser.parse_overrides([arg])
        except Exception as exc:  # OverrideParseException, and the odd assertion inside Hydra's parser
            why = " ".join(line.strip() for line in str(exc).splitlines()[:2] if "hydra.cc" not in line) or type(exc).__name__
            raise StimoptError(f"cannot read the override '{arg}' ({why}); write KEY=VALUE, e.g. seed=1 or "
                               "'objective.weights=[1,-1]' (quote values with spaces)") from None
        if not override.key_or_group:
            raise StimoptError(f"the override '{arg}' names no key; write KEY=VALUE, e.g. seed=1")
