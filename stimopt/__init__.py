"""stimopt: find the images a visual neuron prefers (direction=max) and anti-prefers (direction=min).

The stable API: :class:`Target`, :class:`Generator`, :class:`Optimizer`, the code spaces
:class:`ContinuousSpace` and :class:`BankSpace`, and :data:`hookimpl` for plugins.
"""
from stimopt.api import BankSpace, CodeSpace, ContinuousSpace, Generator, Optimizer, Target
from stimopt.errors import StimoptError
from stimopt.hookspecs import hookimpl

__version__ = "0.1.0"
__all__ = [
    "BankSpace", "CodeSpace", "ContinuousSpace", "Generator", "Optimizer", "Target",
    "StimoptError", "hookimpl", "__version__",
]
