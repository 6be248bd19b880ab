"""Hook specifications: the whole plugin API of stimopt.

A plugin is a module (or package) named in the ``stimopt`` entry-point group that implements
some of these hooks with ``@stimopt.hookimpl``. Each hook receives a ``register`` callable.
"""
from __future__ import annotations

from typing import Callable

import pluggy

hookspec = pluggy.HookspecMarker("stimopt")
hookimpl = pluggy.HookimplMarker("stimopt")


@hookspec
def register_targets(register: Callable[[str, type], None]) -> None:
    """Register Target classes: ``register("name", TargetClass)``."""


@hookspec
def register_generators(register: Callable[[str, type], None]) -> None:
    """Register Generator classes: ``register("name", GeneratorClass)``."""


@hookspec
def register_optimizers(register: Callable[[str, type], None]) -> None:
    """Register Optimizer classes: ``register("name", OptimizerClass)``."""


@hookspec
def register_config_dirs(register: Callable[[str], None]) -> None:
    """Register a folder of Hydra group configs (``target/NAME.yaml``, ...) to add to the search path."""
