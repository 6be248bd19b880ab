"""A lab's own torch model as a target (``target=module``): a factory builds the nn.Module, the
checkpoint is loaded with ``weights_only=True``, ``output`` picks the neuron(s)."""
from pathlib import Path

import stimopt


@stimopt.hookimpl
def register_config_dirs(register):
    register(str(Path(__file__).parent / "conf"))
