"""The ``stimopt-analyze`` Hydra app: ``stimopt-analyze NAME key=value ...``.

Primary config ``conf/analyze.yaml``; ``target=`` is composed from the same group as ``stimopt``
(every plugin's config folder is on the search path), ``bank=demo`` or a bank folder, ``out=DIR``.
NAME (the first word that is not an override) becomes ``analysis=NAME``.
"""
from __future__ import annotations

import importlib
import sys
from dataclasses import dataclass, field
from pathlib import Path

from stimopt.analyze import ANALYSES
from stimopt.analyze.common import open_source, write_outputs
from stimopt.errors import StimoptError


@dataclass
class Context:
    """What an analysis reads: ``options`` (its own config section), ``source`` (the bank),
    ``make_target(**overrides)`` (a fresh target; overrides only for keys the target config has),
    ``units``, ``seed``, ``batch_size``, ``repeats``, ``out`` (the output folder)."""

    options: dict
    source: object
    make_target: object
    out: Path
    units: object = None
    seed: int = 0
    batch_size: int = 64
    repeats: int = 1
    target_keys: dict = field(default_factory=dict)

    def build_target(self, **overrides):
        return self.make_target(**{k: v for k, v in overrides.items() if k in self.target_keys})

    def target_has(self, key: str) -> bool:
        return key in self.target_keys

    def target_option(self, key: str, default=None):
        return self.target_keys.get(key, default)


def context_from_config(cfg, out_dir: Path) -> Context:
    from omegaconf import OmegaConf

    from stimopt import noise, plugins
    from stimopt.experiment import build, seed_everything

    plugins.load_plugins()
    name = str(cfg.analysis)
    node = cfg.target
    keys = {k: v for k, v in OmegaConf.to_container(node, resolve=True).items() if not k.startswith("_")}

    def make_target(**overrides):
        seed_everything(int(cfg.seed))  # randomly initialized targets are the same in every call
        n = node.copy()
        for k, v in overrides.items():
            n[k] = v
        return noise.wrap(build("target", n, device=cfg.device), cfg.get("noise"), seed=int(cfg.seed))

    units = cfg.get("units")
    if units is not None and not isinstance(units, str):
        units = list(OmegaConf.to_container(units, resolve=True)) if OmegaConf.is_config(units) else list(units)
    opts = cfg.get(name)
    options = OmegaConf.to_container(opts, resolve=True) if opts is not None else {}
    return Context(options=options, source=open_source(cfg.get("bank")), make_target=make_target, out=out_dir, units=units,
                   seed=int(cfg.seed), batch_size=int(cfg.batch_size), repeats=int(cfg.get("repeats", 1)), target_keys=keys)


def run_analysis(name: str, ctx: Context) -> dict:
    """Run analysis ``name`` on ``ctx`` and write its four outputs; returns the file paths and the line."""
    if name not in ANALYSES:
        raise StimoptError(f"unknown analysis '{name}'; choose one of {', '.join(ANALYSES)}")
    module = importlib.import_module(f"stimopt.analyze.{name}")
    result = module.run(ctx)
    files = write_outputs(ctx.out, name, result)
    return {"files": files, "line": result.line, "payload": result.payload}


def _task(cfg) -> None:
    from hydra.core.hydra_config import HydraConfig

    out_dir = Path(HydraConfig.get().runtime.output_dir)
    try:
        done = run_analysis(str(cfg.analysis), context_from_config(cfg, out_dir))
    except StimoptError as exc:
        print(f"stimopt-analyze: error: {exc}", file=sys.stderr)
        sys.exit(2)
    print(f"{cfg.analysis}: {done['line']}")
    print(f"wrote {done['files']['json']}, .csv, .png; report: {out_dir / 'report.md'}")


def _name_from_argv(argv: list[str]) -> list[str]:
    """``NAME k=v ...`` -> ``k=v ... analysis=NAME`` (Hydra takes overrides only)."""
    words = [i for i, a in enumerate(argv) if "=" not in a and not a.startswith("-")
             and not (i and argv[i - 1].startswith("-") and "=" not in argv[i - 1] and argv[i - 1] not in ("-m", "--multirun"))]
    if not words:
        return argv
    name = argv[words[0]]
    if name not in ANALYSES:
        print(f"stimopt-analyze: error: unknown analysis '{name}'; choose one of {', '.join(ANALYSES)}", file=sys.stderr)
        sys.exit(2)
    i = words[0]
    return argv[:i] + argv[i + 1:] + [f"analysis={name}"]


def main() -> None:
    from stimopt.interrupt import run_app_interruptible

    sys.argv[1:] = _name_from_argv(sys.argv[1:])
    run_app_interruptible("stimopt-analyze", "analyze", _task)


def compose_analyze(overrides: list[str] | None = None):
    """The composed analyze config, exactly as ``stimopt-analyze OVERRIDES`` would see it (tests, notebooks)."""
    from stimopt.config import compose_app

    return compose_app("analyze", overrides)
