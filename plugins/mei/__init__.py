"""Gradient MEIs (``optimizer=mei``): decorrelated image parametrization, transformation robustness,
norm/contrast constraints, preconditioned gradients and a diversity term, on any differentiable target.

The optimizer brings its own image parametrization and works with ``generator=pixels`` (codes are
images), so every image the target scores goes through the engine and is recorded; see
:mod:`stimopt_plugins.mei.optimizer` and docs/mei.md.
"""
from pathlib import Path

import stimopt

from stimopt_plugins.mei.optimizer import MEI

__all__ = ["MEI"]


@stimopt.hookimpl
def register_optimizers(register):
    register("mei", MEI)


@stimopt.hookimpl
def register_config_dirs(register):
    register(str(Path(__file__).parent / "conf"))
