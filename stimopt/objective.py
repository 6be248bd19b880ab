"""The objective: the one place where responses become scores.

``response = combine(responses)`` reduces a target's [B] or [B, n_outputs] output to one number
per stimulus (the value reported as "response"); ``score = +response`` for ``direction=max`` and
``-response`` for ``direction=min``. Optimizers only ever see scores and always maximize them.

One implementation, in torch: the engine passes numpy arrays (and gets numpy back), a white-box
optimizer's :class:`stimopt.differentiable.DifferentiableObjective` passes tensors with gradients
(and gets differentiable tensors back), so both paths score exactly the same thing. Nothing else
applies the direction: reports read the stored ``score`` column.

Read-outs over many outputs (neurons, ROIs, channels), each a ``conf/objective/*.yaml``:

- ``single``: the one output (or the mean of all when there are several);
- ``weights: [w0, w1, ...]``: a weighted sum, ``[1, -1]`` is "a minus b";
- ``select: [i, j, ...]``: the mean over a set of outputs;
- ``maximize: [...]`` + ``suppress: [...]`` (+ ``suppress_weight``): a contrast, the mean of the
  first set minus ``suppress_weight`` x the mean of the second (drive A while silencing B);
- ``terms: [{outputs: [...], weight: w}, ...]``: the general form, sum of weight x mean(outputs);
- ``pattern: [p0, p1, ...]`` (+ ``pattern_outputs``, ``pattern_metric: rmse | correlation``):
  closeness to a target population pattern; the response is ``-rmse`` (or the correlation), so
  ``direction=max`` moves the population toward the pattern.

A response is NaN when any output it reads is NaN (a missing trial stays missing).
"""
from __future__ import annotations

import numpy as np
import torch

from stimopt.errors import StimoptError

DIRECTIONS = {"max": 1.0, "min": -1.0}
PATTERN_METRICS = ("rmse", "correlation")


def _index_list(value, what: str) -> list[int]:
    items = list(value) if isinstance(value, (list, tuple)) or hasattr(value, "__len__") and not isinstance(value, str) else [value]
    try:
        out = [int(v) for v in items]
    except (TypeError, ValueError):
        raise StimoptError(f"objective {what} must be output indices (0-based integers), got {list(items)}") from None
    if not out:
        raise StimoptError(f"objective {what} is empty; give at least one output index")
    if min(out) < 0:
        raise StimoptError(f"objective {what} has a negative output index: {out}")
    return out


class Objective:
    """Direction plus an optional read-out over several outputs (see the module doc).

    ``weights``: one weight per output (``a - b`` is ``weights=[1, -1]``); ``None`` (and no other
    read-out) takes the single output, or the mean when the target has several.
    """

    def __init__(self, direction: str = "max", weights=None, select=None, maximize=None, suppress=None,
                 suppress_weight: float = 1.0, terms=None, pattern=None, pattern_outputs=None,
                 pattern_metric: str = "rmse"):
        if direction not in DIRECTIONS:
            raise StimoptError(f"direction must be 'max' or 'min', got '{direction}'")
        self.direction = direction
        self._sign = DIRECTIONS[direction]  # private: the direction is applied by score() only
        modes = [name for name, v in (("weights", weights), ("select", select), ("maximize/suppress", maximize or suppress),
                                      ("terms", terms), ("pattern", pattern)) if v is not None and v is not False]
        if len(modes) > 1:
            raise StimoptError(f"objective: choose one read-out, got {' and '.join(modes)}")
        self.weights = None if weights is None else np.asarray(weights, dtype=np.float64)
        self.terms: list[tuple[list[int], float]] | None = None
        if select is not None:
            self.terms = [(_index_list(select, "select"), 1.0)]
        elif maximize is not None or suppress is not None:
            if maximize is None:
                raise StimoptError("objective: suppress needs maximize (the outputs to drive)")
            self.terms = [(_index_list(maximize, "maximize"), 1.0)]
            if suppress is not None:
                self.terms.append((_index_list(suppress, "suppress"), -float(suppress_weight)))
        elif terms is not None:
            self.terms = []
            for t in terms:
                if not hasattr(t, "get") or t.get("outputs") is None:
                    raise StimoptError("objective terms: each term needs 'outputs: [indices]' (and optionally 'weight')")
                self.terms.append((_index_list(t["outputs"], "term outputs"), float(t.get("weight", 1.0))))
        self.pattern = None if pattern is None else np.asarray(pattern, dtype=np.float64).ravel()
        self.pattern_outputs = None if pattern_outputs is None else _index_list(pattern_outputs, "pattern_outputs")
        if pattern_metric not in PATTERN_METRICS:
            raise StimoptError(f"objective pattern_metric must be one of {PATTERN_METRICS}, got '{pattern_metric}'")
        self.pattern_metric = pattern_metric
        if self.pattern is not None and self.pattern_outputs is not None and len(self.pattern_outputs) != self.pattern.size:
            raise StimoptError(f"objective pattern has {self.pattern.size} values but pattern_outputs names {len(self.pattern_outputs)} outputs")

    # -- read-outs (torch: the engine's numpy arrays and a white-box optimizer's tensors alike) -------
    def _columns(self, r: torch.Tensor, idx: list[int], what: str) -> torch.Tensor:
        if max(idx) >= r.shape[1]:
            raise StimoptError(f"objective {what} reads output {max(idx)}, but the target returns {r.shape[1]} outputs (0..{r.shape[1] - 1})")
        return r[:, idx]

    def _pattern(self, r: torch.Tensor) -> torch.Tensor:
        x = r if self.pattern_outputs is None else self._columns(r, self.pattern_outputs, "pattern_outputs")
        if x.shape[1] != self.pattern.size:
            raise StimoptError(f"objective pattern has {self.pattern.size} values but the target returns {x.shape[1]} outputs")
        p = torch.as_tensor(self.pattern, dtype=r.dtype, device=r.device)
        if self.pattern_metric == "rmse":
            return -((x - p) ** 2).mean(1).sqrt()
        xc, pc = x - x.mean(1, keepdim=True), p - p.mean()
        return (xc @ pc) / (xc.norm(dim=1) * pc.norm())

    def _combine(self, r: torch.Tensor) -> torch.Tensor:
        if self.terms is not None or self.pattern is not None:
            r = r[:, None] if r.ndim == 1 else r
            if self.pattern is not None:
                return self._pattern(r)
            return sum(w * self._columns(r, idx, "outputs").mean(1) for idx, w in self.terms)
        if r.ndim == 1:
            if self.weights is not None and self.weights.size != 1:
                raise StimoptError(
                    f"objective has {self.weights.size} weights but the target returns one output per stimulus"
                )
            return r if self.weights is None else r * float(self.weights[0])
        if self.weights is None:
            return r.mean(1)
        if r.shape[1] != self.weights.size:
            raise StimoptError(
                f"objective has {self.weights.size} weights but the target returns {r.shape[1]} outputs; "
                "give one weight per output"
            )
        return r @ torch.as_tensor(self.weights, dtype=r.dtype, device=r.device)

    def combine(self, responses):
        """[B] or [B, n] raw responses -> [B] response values (before the direction).

        A numpy array (or list) gives float64 numpy; a tensor gives a tensor of its dtype and
        device, differentiable.
        """
        if isinstance(responses, torch.Tensor):
            return self._combine(responses)
        return self._combine(torch.from_numpy(np.asarray(responses, dtype=np.float64))).numpy()

    def score(self, response):
        """The direction, applied here and nowhere else: what optimizers maximize."""
        if isinstance(response, torch.Tensor):
            return self._sign * response
        return self._sign * np.asarray(response, dtype=np.float64)

    def __call__(self, responses):
        """(response, score), both [B]: numpy for numpy input, tensors (with gradients) for tensors."""
        response = self.combine(responses)
        return response, self.score(response)

    def describe(self) -> str:
        if self.pattern is not None:
            return f"pattern({self.pattern_metric})"
        if self.terms is not None:
            return " + ".join(f"{w:g}*mean{idx}" for idx, w in self.terms)
        return "weights" + str(self.weights.tolist()) if self.weights is not None else "single"
