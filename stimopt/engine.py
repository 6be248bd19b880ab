"""The loop: the one place where target, generator and optimizer meet.

    codes  = optimizer.ask(n)
    images = generator.generate(codes)
    resp   = target.evaluate(images)
    score  = objective(resp)            # direction applied here, once
    optimizer.tell(codes, score)
    store.append(generation, ...)       # committed, with the checkpoint, before the next ask

Observers (progress bar, W&B, ...) hang off the loop; they never change what it computes.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from stimopt.api import Generator, Optimizer, Target
from stimopt.errors import StimoptError
from stimopt.objective import Objective
from stimopt.store import RunStore

BAD_RESPONSE_POLICIES = ("stop", "skip")


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
    seed: int = 0
    on_bad_response: str = "stop"
    run_dir: Path = Path(".")
    observers: list[Observer] = field(default_factory=list)
    progress: Progress = field(default_factory=Progress)

    def __post_init__(self):
        if self.budget <= 0:
            raise StimoptError(f"budget must be a positive number of evaluations, got {self.budget}")
        if self.batch_size <= 0:
            raise StimoptError(f"batch_size must be positive, got {self.batch_size}")
        if self.on_bad_response not in BAD_RESPONSE_POLICIES:
            raise StimoptError(f"on_bad_response must be one of {BAD_RESPONSE_POLICIES}, got '{self.on_bad_response}'")

    # -- checkpointing ----------------------------------------------------------------------
    def checkpoint(self) -> dict:
        """Plain values and arrays only (stimopt.state writes it without pickle)."""
        import dataclasses

        return {
            "progress": dataclasses.asdict(self.progress),
            "optimizer": self.optimizer.state_dict(),
            "target": self.target.state_dict(),
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
        return True

    # -- one generation ---------------------------------------------------------------------
    def step(self) -> dict:
        p = self.progress
        n = min(self.batch_size, self.budget - p.n_evaluations)
        t0 = time.perf_counter()
        codes = np.asarray(self.optimizer.ask(n))
        if len(codes) != n:
            raise StimoptError(f"optimizer {self.optimizer.describe()} returned {len(codes)} codes for ask({n})")
        info = self.optimizer.ask_info()
        t1 = time.perf_counter()
        with torch.inference_mode():
            images = self.generator.generate(codes)
        t2 = time.perf_counter()
        with torch.inference_mode():
            raw = self.target.evaluate(images)
        t3 = time.perf_counter()
        outputs = self._check(raw, codes, images, n)
        response, score = self.objective(outputs)
        self.optimizer.tell(codes, score)
        t4 = time.perf_counter()

        finite = np.isfinite(score)
        if finite.any():
            i = int(np.flatnonzero(finite)[np.argmax(score[finite])])
            if score[i] > p.best_score:
                p.best_score, p.best_response = float(score[i]), float(response[i])
        p.n_evaluations += n
        p.time_generate += t2 - t1
        p.time_evaluate += t3 - t2
        p.time_total += t4 - t0
        record = {
            "generation": p.generation,
            "n_evaluations": p.n_evaluations,
            "best_so_far": p.best_response,
            "generation_best": float(response[finite][np.argmax(score[finite])]) if finite.any() else math.nan,
            "generation_mean": float(response[finite].mean()) if finite.any() else math.nan,
            "n_missing": int((~finite).sum()),
        }
        generation = p.generation
        p.generation += 1
        self.store.append_generation(
            generation, codes, response, score, outputs if outputs.ndim == 2 else None, info,
            p.n_evaluations, t4 - t0, self.checkpoint(),
        )
        p.time_total += time.perf_counter() - t4
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
        while self.progress.n_evaluations < self.budget:
            record = self.step()
            for obs in self.observers:
                obs.on_generation(self, record)
        return self.progress
