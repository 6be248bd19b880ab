"""The three contracts third parties implement: Target, Generator, Optimizer, and the code spaces.

Shapes and types (stable API):

- images: ``torch.Tensor`` float32 ``[B, 3, H, W]`` in ``[0, 1]``.
- responses: float32 ``[B]`` or ``[B, n_outputs]`` (numpy array or tensor).
- codes: ``numpy.ndarray``; float32 ``[B, dim]`` in a :class:`ContinuousSpace`,
  int64 ``[B]`` bank indices in a :class:`BankSpace`.
- scores: float64 ``[B]``, always *maximized* by optimizers; NaN marks a missing response
  (a dropped trial) and optimizers must tolerate it.
"""
from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

if TYPE_CHECKING:
    from stimopt.differentiable import DifferentiableObjective


class CodeSpace:
    """What an optimizer searches over. The engine hands it to the optimizer before the first ask."""

    kind: ClassVar[str] = "abstract"


@dataclass(frozen=True)
class ContinuousSpace(CodeSpace):
    """A box (or unbounded) subset of R^dim. ``init_std`` is the natural scale of a code.

    ``levels`` (optional): each coordinate's level of detail (0 = coarsest), for generators whose
    coordinates differ in spatial scale; an optimizer may search the coordinates of low level
    first and add the finer ones later (coarse-to-fine). ``None``: all coordinates alike.
    """

    dim: int
    low: float | None = None
    high: float | None = None
    init_mean: float = 0.0
    init_std: float = 1.0
    levels: tuple[int, ...] | None = field(default=None, repr=False)
    kind: ClassVar[str] = "continuous"

    def clip(self, codes: np.ndarray) -> np.ndarray:
        if self.low is None and self.high is None:
            return codes
        return np.clip(codes, self.low, self.high)


@dataclass(frozen=True)
class BankSpace(CodeSpace):
    """A discrete bank of ``size`` stimuli; codes are indices.

    Where the bank was built with them: ``features`` [size, d] and ``graph`` [size, k] (kNN
    indices, nearest first) are memory-mapped arrays; ``coresets`` is a list of index arrays;
    ``path`` is the bank folder. Bank-aware optimizers read the bank from here only.
    """

    size: int
    features: np.ndarray | None = None
    graph: np.ndarray | None = None
    coresets: tuple[np.ndarray, ...] = ()
    path: str | None = None
    extras: dict[str, Any] = field(default_factory=dict)
    kind: ClassVar[str] = "bank"


class Target(abc.ABC):
    """Scores images: ``evaluate(images [B,3,H,W] in [0,1]) -> responses [B] or [B, n_outputs]``.

    A target may keep random state (noise models, a rig's trial counter); if so it implements
    ``state_dict``/``load_state_dict`` so a resumed run continues exactly.

    ``differentiable``: True when ``evaluate`` computes its responses in torch so gradients flow
    from them back to the images (a model target). White-box optimizers are refused at
    composition for a target that is not (a rig, a noise model).
    """

    n_outputs: int = 1
    differentiable: ClassVar[bool] = False

    @abc.abstractmethod
    def evaluate(self, images):
        """Return float32 responses for a batch of images."""

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass

    def describe(self) -> str:
        return type(self).__name__

    def close(self) -> None:
        """Release resources (processes, files) at the end of a run."""


class Generator(abc.ABC):
    """Turns codes into images. ``space`` describes its code space; ``space_type`` names its
    class so the engine can say which optimizers fit without building the generator."""

    space_type: ClassVar[type[CodeSpace]] = ContinuousSpace

    @property
    @abc.abstractmethod
    def space(self) -> CodeSpace:
        """The code space (a ContinuousSpace or a BankSpace)."""

    @abc.abstractmethod
    def generate(self, codes: np.ndarray):
        """Return images float32 [B,3,H,W] in [0,1] for codes [B, ...]."""

    def describe(self) -> str:
        return type(self).__name__


class Optimizer(abc.ABC):
    """Proposes codes and learns from their scores (always maximized).

    ``accepts`` names the code-space classes this optimizer can search; the engine refuses a
    trio whose generator's space is not one of them.
    """

    accepts: ClassVar[tuple[type[CodeSpace], ...]] = (ContinuousSpace,)
    #: White-box optimizers (gradient ascent) set this: they score codes through the handle given to
    #: ``bind``, and the engine refuses them for targets or generators that cannot be differentiated.
    white_box: ClassVar[bool] = False

    def bind(self, objective: "DifferentiableObjective") -> None:
        """Called once by the engine, after ``setup``, with the run's objective handle.

        ``objective(codes_tensor)`` returns differentiable scores, and every such call is an
        evaluation the engine records and counts against the budget (``objective.remaining``
        says how many are left to the current ask); ``objective.direction`` is there for
        algorithms stated in response terms. Black-box optimizers ignore it.
        """

    def setup(self, space: CodeSpace, *, seed: int, budget: int, batch_size: int) -> None:
        """Called once before the first ask (also before ``load_state_dict`` on resume)."""
        self.space = space
        self.seed = seed
        self.budget = budget
        self.batch_size = batch_size

    @abc.abstractmethod
    def ask(self, n: int) -> np.ndarray:
        """Return n codes to evaluate next."""

    @abc.abstractmethod
    def tell(self, codes: np.ndarray, scores: np.ndarray) -> None:
        """Learn from the scores (NaN = missing) of codes returned by the last ask."""

    def report(self) -> dict:
        """Optional end-of-run findings (JSON-serializable), written to summary.json as ``optimizer_report``."""
        return {}

    def ask_info(self) -> list[dict] | None:
        """Optional per-code metadata of the last ask (e.g. parents), stored with each evaluation."""
        return None

    @abc.abstractmethod
    def state_dict(self) -> dict:
        """Everything needed to continue exactly where this optimizer stands (picklable)."""

    @abc.abstractmethod
    def load_state_dict(self, state: dict) -> None:
        """Restore the state from ``state_dict``."""

    def describe(self) -> str:
        return type(self).__name__
