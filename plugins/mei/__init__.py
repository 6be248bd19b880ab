"""Gradient MEIs (``optimizer=mei``): decorrelated image parametrization, transformation robustness,
norm/contrast constraints, preconditioned gradients and a diversity term, on any differentiable target."""
from pathlib import Path

import stimopt


@stimopt.hookimpl
def register_config_dirs(register):
    register(str(Path(__file__).parent / "conf"))
