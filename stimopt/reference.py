"""Relative activation: how a run's best stimulus compares with natural images (XDream's metric).

    relative_activation = best evolved response / best response over a natural-image set
    random_relative     = expected best of as many random natural images as the run evaluated,
                          / the same best natural response

The natural set (config ``reference``):

- ``kind: natural_crops``: ``n`` random crops of the offline photographs (:mod:`stimopt.natural`);
- ``kind: bank``: ``n`` images drawn (seeded) from an image bank (:mod:`stimopt.bank`):
  ``path: demo`` (the embedded demo bank, which must be built: ``stimopt-bank demo``) or a folder;
- ``kind: null``: off (the default, so runs stay cheap).

Responses are the *noiseless* target's (a :class:`stimopt.noise.NoisyTarget` is read through its
clean target), and the best evolved stimulus is the one with the best recorded score, regenerated
from its code and measured without noise: what an experimenter would pick, measured truly.
"Best" means best-scoring, as the run's objective scores it (with direction=min, the lowest); a
ratio is reported only when the best natural score is positive (the best natural response has the
direction's sign), otherwise it would not mean "how much stronger".
"""
from __future__ import annotations

import numpy as np
import torch

from stimopt.errors import StimoptError
from stimopt.objective import Objective

REFERENCE_KINDS = ("natural_crops", "bank")


def clean_target(target):
    """The target without its noise wrapper."""
    return getattr(target, "inner", target)


def _to_numpy(r) -> np.ndarray:
    return r.detach().double().cpu().numpy() if isinstance(r, torch.Tensor) else np.asarray(r, np.float64)


def reference_images(kind: str, n: int, size: int, seed: int = 0, path: str | None = None):
    """Yield batches of ``n`` natural images [b, 3, size, size] and a description of the set."""
    if kind == "natural_crops":
        from stimopt.natural import crop_params, render_crops

        params = crop_params(n, seed)
        return (render_crops(params[i:i + 100], size) for i in range(0, n, 100)), f"{n} random crops of the offline photographs"
    if kind == "bank":
        from stimopt.bank import demo_bank_path, load_bank

        bank = load_bank(demo_bank_path(build=False) if path in (None, "demo") else path)
        idx = np.sort(np.random.default_rng(seed).choice(bank.size, size=min(n, bank.size), replace=False))
        return (bank.images(idx[i:i + 100], size) for i in range(0, len(idx), 100)), f"{len(idx)} images of {bank.describe()}"
    raise StimoptError(f"reference.kind must be one of {', '.join(REFERENCE_KINDS)} or null, got '{kind}'")


def natural_responses(target, objective, kind: str = "natural_crops", n: int = 500, size: int = 128,
                      seed: int = 0, path: str | None = None) -> tuple[np.ndarray, str]:
    """The clean target's combined responses [n] to the reference set, and the set's description."""
    batches, what = reference_images(kind, n, size, seed, path)
    t = clean_target(target)
    with torch.inference_mode():
        out = [objective.combine(_to_numpy(t.evaluate(b))) for b in batches]
    return np.concatenate(out), what


def _expected_best(responses: np.ndarray, scores: np.ndarray, k: int) -> float:
    """Expected response of the best-scoring of ``k`` draws (with replacement) from these stimuli."""
    order = np.argsort(scores, kind="stable")
    i = np.arange(1, order.size + 1, dtype=np.float64)
    weights = (i / order.size) ** k - ((i - 1) / order.size) ** k
    return float(weights @ responses[order])


def relative(evolved: float, natural: np.ndarray, n_random: int, direction: str = "max") -> dict:
    """The metrics from a best evolved response and the natural (combined) responses (pure function).

    "Best" is best-scoring: the responses are scored by the run's objective for ``direction`` (the
    one place that applies it); every value reported is a response, ratios are of responses.
    """
    score = Objective(direction).score
    nat = np.asarray(natural, np.float64)
    nat = nat[np.isfinite(nat)]
    s = score(nat)
    best = int(np.argmax(s)) if nat.size else None
    best_nat = float(nat[best]) if nat.size else float("nan")
    random_best = _expected_best(nat, s, int(n_random)) if nat.size else float("nan")
    ok = best is not None and s[best] > 0  # on the direction's side of zero, or "x times stronger" means nothing
    return {
        "best_evolved": float(evolved),
        "best_natural": best_nat,
        "relative_activation": float(evolved / best_nat) if ok else None,
        "expected_best_of_random": random_best,
        "random_relative_activation": float(random_best / best_nat) if ok else None,
        "n_random": int(n_random),
        "n_natural": int(nat.size),
    }


def clean_response(run, code) -> float:
    """The noiseless response (direction applied) to one code of the run's generator."""
    codes = np.asarray([code], dtype=np.float32) if np.ndim(code) else np.asarray([code], dtype=np.int64)
    with torch.inference_mode():
        images = run.generator.generate(codes)
        r = _to_numpy(clean_target(run.target).evaluate(images))
    return float(run.objective.combine(r)[0])


def best_evolved(run) -> float | None:
    """The clean response to the stimulus with the best recorded score."""
    top = run.store.top(1)
    return clean_response(run, top[0]["code"]) if top else None


def last_generation_best(run) -> dict | None:
    """XDream's scoring of a noisy run: the last generation's best-scored stimulus, read clean.
    ``{"clean": response, "score": its recorded score, "generation": n}``; None when nothing was scored."""
    rows = run.store.shown("stimulus")
    if not rows:
        return None
    last = max(r["generation"] for r in rows)
    scored = [r for r in rows if r["generation"] == last and np.isfinite(r["score"])]
    if not scored:
        return None
    pick = max(scored, key=lambda r: r["score"])
    return {"clean": clean_response(run, pick["code"]), "score": float(pick["score"]), "generation": int(last)}


def summarize(run, cfg) -> dict | None:
    """summary.json's ``reference`` block (None when ``reference.kind`` is null)."""
    ref = cfg.get("reference") if hasattr(cfg, "get") else None
    if not ref or not ref.get("kind"):
        return None
    try:
        evolved = best_evolved(run)
        if evolved is None:
            return {"error": "no evaluation has a score"}
        size = int(ref.get("size") or getattr(clean_target(run.target), "input_size", 128))
        natural, what = natural_responses(run.target, run.objective, str(ref.kind), int(ref.get("n", 500)), size,
                                          int(ref.get("seed", 0)), ref.get("path"))
        out = relative(evolved, natural, run.progress.n_evaluations, run.objective.direction)
        out.update(kind=str(ref.kind), natural_set=what)
        return out
    except Exception as exc:  # the summary is written in a finally block: never let the reference sink it
        return {"error": f"{type(exc).__name__}: {exc}" if not isinstance(exc, StimoptError) else str(exc)}
