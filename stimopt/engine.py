"""The loop: the one place where target, generator and optimizer meet.

    codes  = optimizer.ask(n)
    images = generator.generate(codes)
    resp   = target.evaluate(images)
    score  = objective(resp)            # direction applied here, once
    optimizer.tell(codes, score)
    store.append(generation, ...)       # committed, with the checkpoint, before the next ask;
                                        # on disk (store.sync) before the next stimuli are shown

The black-box path runs under ``torch.inference_mode()``. A white-box optimizer scores codes
with gradients inside its ``ask`` through the run's :class:`DifferentiableObjective` (handed to
``Optimizer.bind``); each such pass is committed as a generation of its own through the same
``_record`` and counts against the budget (stimopt.differentiable).

Stimuli the engine shows beside the optimizer's (reference images, elite re-presentations:
stimopt.interleave) go to the target in the same batch, after the optimizer's, and are recorded
with their kind; only the optimizer's are told and count as evaluations. ``budget_counts``:
``stimuli`` (the optimizer's, the default) or ``presentations`` (every image shown, times the
target's ``presentations_per_image``, references and repeats included).

``lookahead=1`` (latency hiding): while the target evaluates generation g, a thread asks and
generates generation g+1 (and hands its images to the target's optional ``prepare``; a target with
``wait_published(g, timeout)`` is first left to publish g undisturbed), so the
time between g's last answer and g+1 being shown is the tell, the commit and the publication
only. The ask of g+1 then cannot see g's answers: a one-generation lag, exact for an optimizer
whose ask never depends on them (random search), a delayed update for a population method. Only
optimizers that declare ``asks_ahead`` (an ask may come before the previous tell; tell names its
codes) allow it. The asked-ahead codes are in the checkpoint, so a resumed run shows exactly them.

Observers (progress bar, W&B, ...) hang off the loop; they never change what it computes.
"""
from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from stimopt.api import Generator, Optimizer, Target
from stimopt.differentiable import DifferentiableObjective
from stimopt.errors import StimoptError
from stimopt.interleave import Interleave
from stimopt.objective import Objective
from stimopt.store import RunStore

BAD_RESPONSE_POLICIES = ("stop", "skip")
BUDGET_COUNTS = ("stimuli", "presentations")


class Ahead(threading.Thread):
    """The next generation asked, generated and prepared (``target.prepare``) while the target works."""

    def __init__(self, run: "Run", n: int, shown: int):
        super().__init__(name="stimopt-lookahead", daemon=True)
        self.run_, self.n, self.shown, self.value, self.error = run, n, shown, None, None
        self.start()

    def run(self) -> None:
        try:
            wait = getattr(self.run_.target, "wait_published", None)
            if wait is not None:  # a target that shows its stimuli somewhere: not in the way of that
                wait(self.shown, timeout=10.0)
            codes, info, _ = self.run_._ask(self.n)
            with torch.inference_mode():
                images = self.run_.generator.generate(codes)
            prepare = getattr(self.run_.target, "prepare", None)
            if prepare is not None:
                prepare(images)
            self.value = {"codes": codes, "info": info, "images": images}
        except BaseException as exc:  # noqa: BLE001 - raised in the loop's thread by result()
            self.error = exc

    def result(self) -> dict:
        self.join()
        if self.error is not None:
            raise self.error
        return self.value


class Observer:
    """Receives the run as it happens. Override what you need."""

    def on_start(self, run: "Run") -> None: ...

    def on_generation(self, run: "Run", record: dict) -> None: ...

    def on_end(self, run: "Run", summary: dict) -> None: ...


@dataclass
class Progress:
    """What the engine knows between generations; it is the checkpoint (with the parts' states)."""

    generation: int = 0
    n_evaluations: int = 0
    n_presentations: int = 0  # every image shown (references, repeats) x the target's presentations per image
    reference_first: float = math.nan  # mean response to the references at their first showing
    drift_gain: float = 1.0  # the latest showing's mean / the first's (stimopt.interleave)
    best_response: float = math.nan
    best_score: float = -math.inf
    time_generate: float = 0.0
    time_evaluate: float = 0.0
    time_total: float = 0.0


@dataclass
class Run:
    target: Target
    generator: Generator
    optimizer: Optimizer
    objective: Objective
    store: RunStore
    budget: int
    batch_size: int
    on_bad_response: str = "stop"
    budget_counts: str = "stimuli"
    interleave: Interleave = field(default_factory=Interleave)
    lookahead: int = 0
    run_dir: Path = Path(".")
    observers: list[Observer] = field(default_factory=list)
    progress: Progress = field(default_factory=Progress)
    _clock: float = field(default=0.0, init=False, repr=False)  # end of the last commit (loop time)
    _asked: int = field(default=0, init=False, repr=False)  # codes the ask in flight will return
    _ahead: dict | None = field(default=None, init=False, repr=False)  # lookahead: the next generation's codes, info, images

    def __post_init__(self):
        if self.budget <= 0:
            raise StimoptError(f"budget must be a positive number of evaluations, got {self.budget}")
        if self.batch_size <= 0:
            raise StimoptError(f"batch_size must be positive, got {self.batch_size}")
        if self.on_bad_response not in BAD_RESPONSE_POLICIES:
            raise StimoptError(f"on_bad_response must be one of {BAD_RESPONSE_POLICIES}, got '{self.on_bad_response}'")
        if self.budget_counts not in BUDGET_COUNTS:
            raise StimoptError(f"budget_counts must be one of {BUDGET_COUNTS}, got '{self.budget_counts}'")
        self.per_image = int(getattr(self.target, "presentations_per_image", 1))
        if self.lookahead not in (0, 1):
            raise StimoptError(f"lookahead must be 0 or 1 (generations asked ahead), got {self.lookahead!r}")
        if self.lookahead and not getattr(self.optimizer, "asks_ahead", False):
            raise StimoptError(f"lookahead=1 needs an optimizer that may be asked again before it is told (asks_ahead); "
                               f"{self.optimizer.describe()} is not one: use lookahead=0")
        self.optimizer.bind(DifferentiableObjective(self))

    # -- checkpointing ----------------------------------------------------------------------
    def checkpoint(self) -> dict:
        """Plain values and arrays only (stimopt.state writes it without pickle)."""
        import dataclasses

        ahead = None if self._ahead is None else {k: self._ahead[k] for k in ("codes", "info")}
        return {
            "progress": dataclasses.asdict(self.progress),
            "optimizer": self.optimizer.state_dict(),
            "target": self.target.state_dict(),
            "ahead": ahead,
        }

    def restore(self) -> bool:
        """Continue from the store's last committed generation, if any. Returns whether it did."""
        saved = self.store.checkpoint()
        if saved is None:
            return False
        import dataclasses

        _, state = saved
        known = {f.name for f in dataclasses.fields(Progress)}
        self.progress = Progress(**{k: v for k, v in dict(state["progress"]).items() if k in known})
        self.optimizer.load_state_dict(state["optimizer"])
        self.target.load_state_dict(state["target"])
        self._ahead = dict(state["ahead"]) if state.get("ahead") is not None else None
        return True

    # -- one generation ---------------------------------------------------------------------
    def step(self) -> dict:
        g = self.progress.generation
        extras = self.interleave.plan(g, self.store)  # references, elites to show again
        n = self._batch(len(extras)) if self._ahead is None else len(self._ahead["codes"])
        if self.budget_counts == "presentations" and n + len(extras) > self.room():
            extras = []  # the optimizer's stimuli first
        self._clock, self._asked = time.perf_counter(), n
        codes, info, images = self._ask(n)
        t1 = time.perf_counter()
        with torch.inference_mode():
            images = self.generator.generate(codes) if images is None else images
            images = self.interleave.append(images, extras, self.generator)
            self.store.sync()  # every earlier generation on disk before these stimuli are shown
            t2 = time.perf_counter()
            ahead = self._ask_ahead(g + 1, n, len(extras))  # lookahead: g+1 prepared while the target works
            raw = self.target.evaluate(images)
            self._ahead = ahead.result() if ahead is not None else None
        t3 = time.perf_counter()
        self._asked = 0
        outputs = self._check(raw, codes, images, n + len(extras))
        response, score = self.objective(outputs)
        score = self.interleave.correct(self.progress, response, score, extras)  # drift: off unless configured
        self.optimizer.tell(codes, score[:n])
        return self._record(codes, outputs, response, score, info, t2 - t1, t3 - t2, extras)

    def _batch(self, n_extras: int, room: int | None = None) -> int:
        """The optimizer's stimuli in a generation with ``n_extras`` beside them, when the budget has
        ``room`` left (they make way when the presentation budget is short)."""
        room = self.room() if room is None else room
        if self.budget_counts == "presentations" and n_extras < room:
            room -= n_extras
        return min(self.batch_size, room)

    def _ask(self, n: int):
        """(codes, ask info, images or None) of this generation: asked now, or during the last one (lookahead)."""
        if self._ahead is not None:
            ahead, self._ahead = self._ahead, None
            return ahead["codes"], ahead["info"], ahead.get("images")
        codes = np.asarray(self.optimizer.ask(n))  # a white-box ask commits its own passes in here
        if len(codes) != n:
            raise StimoptError(f"optimizer {self.optimizer.describe()} returned {len(codes)} codes for ask({n})")
        return codes, self.optimizer.ask_info(), None

    def _ask_ahead(self, generation: int, n: int, n_extras: int):
        """lookahead=1: ask, generate and prepare ``generation`` in a thread (None when off or out of budget),
        sized for the budget left once the current one (``n`` stimuli, ``n_extras`` beside them) is committed."""
        if not self.lookahead:
            return None
        room = self.room() - (n + n_extras if self.budget_counts == "presentations" else n)
        n = self._batch(self.interleave.most(generation), room)
        return Ahead(self, n, generation - 1) if n > 0 else None

    def room(self) -> int:
        """Stimuli the budget still allows (budget_counts: the optimizer's stimuli, or presentations)."""
        if self.budget_counts == "stimuli":
            return self.budget - self.progress.n_evaluations
        return (self.budget - self.progress.n_presentations) // self.per_image

    def budget_left_in_ask(self) -> int:
        """Evaluations a white-box ask may still spend, keeping room for the codes it returns."""
        return self.room() - self._asked

    def commit(self, codes, images, raw, info, time_generate: float, time_evaluate: float) -> dict:
        """A white-box pass (stimopt.differentiable): checked, scored and stored as a generation; not told."""
        outputs = self._check(raw, codes, images, len(codes))
        response, score = self.objective(outputs)
        return self._record(codes, outputs, response, score, info, time_generate, time_evaluate)

    def _record(self, codes, outputs, response, score, info, time_generate: float, time_evaluate: float,
                extras=()) -> dict:
        """Best so far, counters, the store (one transaction with the checkpoint), observers.
        The first ``len(codes)`` rows are the optimizer's stimuli, the rest ``extras``."""
        p, n = self.progress, len(codes)
        trials = getattr(self.target, "trial_records", lambda: None)()  # per image shown, or None
        shown = self.interleave.rows(extras, outputs[n:], response[n:], score[n:], trials and trials[n:])
        outputs, response, score = outputs[:n], response[:n], score[:n]
        finite = np.isfinite(score)
        best = int(np.flatnonzero(finite)[np.argmax(score[finite])]) if finite.any() else None
        if best is not None and score[best] > p.best_score:
            p.best_score, p.best_response = float(score[best]), float(response[best])
        p.n_evaluations += n
        p.n_presentations += (n + len(shown)) * self.per_image
        p.time_generate += time_generate
        p.time_evaluate += time_evaluate
        now = time.perf_counter()
        p.time_total += now - self._clock
        record = {
            "generation": p.generation,
            "n_evaluations": p.n_evaluations,
            "n_presentations": p.n_presentations,
            "best_so_far": p.best_response,
            "generation_best": float(response[best]) if best is not None else math.nan,
            "generation_mean": float(response[finite].mean()) if finite.any() else math.nan,
            "n_missing": int((~finite).sum()),
        }
        p.generation += 1
        self.store.append_generation(
            record["generation"], codes, response, score, outputs if outputs.ndim == 2 else None, info,
            p.n_evaluations, now - self._clock, self.checkpoint(), trials=trials and trials[:n], extras=shown,
        )
        self._clock = time.perf_counter()
        p.time_total += self._clock - now
        for obs in self.observers:
            obs.on_generation(self, record)
        return record

    def _check(self, raw, codes, images, n: int) -> np.ndarray:
        """Responses as float64 [n] or [n, k]; NaN/inf or a wrong shape follow on_bad_response."""
        out = raw.detach().float().cpu().numpy() if isinstance(raw, torch.Tensor) else np.asarray(raw, dtype=np.float64)
        out = out.astype(np.float64, copy=False)
        problem = None
        if out.ndim not in (1, 2) or out.shape[0] != n:
            problem = f"target returned responses of shape {tuple(out.shape)} for {n} stimuli (expected [{n}] or [{n}, n_outputs])"
            out = np.full(n, np.nan)
        elif not np.isfinite(out).all():
            bad = ~np.isfinite(out) if out.ndim == 1 else ~np.isfinite(out).all(axis=1)
            problem = f"target returned NaN/inf for {int(bad.sum())} of {n} stimuli"
            out = np.where(np.isfinite(out), out, np.nan)
        if problem and self.on_bad_response == "stop":
            path = self.run_dir / f"bad_generation_{self.progress.generation}.npz"
            imgs = images.detach().float().cpu().numpy() if isinstance(images, torch.Tensor) else np.asarray(images)
            np.savez_compressed(path, codes=codes, images=imgs, responses=np.asarray(out))
            raise StimoptError(
                f"{problem} in generation {self.progress.generation}; stimuli saved to {path}; "
                f"{self.progress.n_evaluations} earlier evaluations are safe in {self.store.path}; "
                "set on_bad_response=skip to record them as missing and go on"
            )
        return out

    # -- the whole run ------------------------------------------------------------------------
    def run(self) -> Progress:
        for obs in self.observers:
            obs.on_start(self)
        while self.room() > 0:
            self.step()
        return self.progress
