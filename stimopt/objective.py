"""The objective: the one place where responses become scores.

``response = combine(responses)`` reduces a target's [B] or [B, n_outputs] output to one number
per stimulus (the value reported as "response"); ``score = +response`` for ``direction=max`` and
``-response`` for ``direction=min``. Optimizers only ever see scores and always maximize them.
"""
from __future__ import annotations

import numpy as np

from stimopt.errors import StimoptError

DIRECTIONS = {"max": 1.0, "min": -1.0}


class Objective:
    """Direction plus an optional linear read-out over several outputs.

    ``weights``: one weight per output (``a - b`` is ``weights=[1, -1]``); ``None`` takes the
    single output, or the mean when the target has several.
    """

    def __init__(self, direction: str = "max", weights=None):
        if direction not in DIRECTIONS:
            raise StimoptError(f"direction must be 'max' or 'min', got '{direction}'")
        self.direction = direction
        self.sign = DIRECTIONS[direction]
        self.weights = None if weights is None else np.asarray(weights, dtype=np.float64)

    def combine(self, responses: np.ndarray) -> np.ndarray:
        """[B] or [B, n] raw responses -> [B] response values (before the direction)."""
        r = np.asarray(responses, dtype=np.float64)
        if r.ndim == 1:
            if self.weights is not None and self.weights.size != 1:
                raise StimoptError(
                    f"objective has {self.weights.size} weights but the target returns one output per stimulus"
                )
            return r if self.weights is None else r * self.weights[0]
        if self.weights is None:
            return r.mean(axis=1)
        if r.shape[1] != self.weights.size:
            raise StimoptError(
                f"objective has {self.weights.size} weights but the target returns {r.shape[1]} outputs; "
                "give one weight per output"
            )
        return r @ self.weights

    def score(self, response: np.ndarray) -> np.ndarray:
        return self.sign * np.asarray(response, dtype=np.float64)

    def __call__(self, responses) -> tuple[np.ndarray, np.ndarray]:
        response = self.combine(responses)
        return response, self.score(response)

    def better(self, a: float, b: float) -> bool:
        """Is response a better than response b in this direction?"""
        return self.sign * a > self.sign * b
