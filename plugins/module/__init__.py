"""A lab's own torch model as a target (``target=module``): a factory builds the nn.Module, the
checkpoint is loaded with ``weights_only=True``, ``output`` picks the neuron(s); see
:mod:`stimopt_plugins.module.target` and docs/mei.md."""
from pathlib import Path

import stimopt

from stimopt_plugins.module.target import ModuleTarget

__all__ = ["ModuleTarget"]


@stimopt.hookimpl
def register_targets(register):
    register("module", ModuleTarget)


@stimopt.hookimpl
def register_config_dirs(register):
    register(str(Path(__file__).parent / "conf"))
