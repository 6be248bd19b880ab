"""Stimuli the engine shows alongside the optimizer's: reference images and elite re-presentations.

Both go through the engine like any stimulus (generated or loaded, evaluated by the target in the
same batch, recorded in the store, after the optimizer's stimuli of the generation), but they are
never told to the optimizer and never count as "the run's evaluations" (the store marks them:
``kind='reference'`` / ``kind='repeat'``). What is shown in generation ``g`` depends only on ``g``
and the committed store, so a resumed run shows exactly the images it would have shown.

**References** (``target.references``): a fixed set of ``n`` natural images shown every ``every``
generations (from generation 0). ``source``: ``natural_crops`` (the offline photographs),
``demo`` or a bank folder (``n`` images drawn with ``seed``), or a folder of image files (its
first ``n`` in sorted path order). Their mean response at each showing is the session's drift /
health signal: ``gain`` = that mean / the first showing's mean. ``drift_correction: gain`` divides
the optimizer's scores by the latest gain (a multiplicative drift of the neuron's responsiveness
cancels; the stored responses stay as measured, the stored scores are what the optimizer was
told); ``none`` (the default) only records it. A showing whose mean is not a positive finite
number keeps the previous gain.

**Elites** (``target.elites``): every ``every`` generations, the ``n`` codes with the highest mean
score over all their presentations so far are shown again. Evidence rule: the *confirmed best*
is the code with the highest mean score over its presentations among those presented at least
``min_presentations`` times (ties: the earliest); summary.json reports it beside the single-shot best.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from stimopt.errors import StimoptError

DRIFT_CORRECTIONS = ("none", "gain")


def _positive(key: str, value, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != int(value) or int(value) < minimum:
        raise StimoptError(f"{key} must be a whole number >= {minimum}, got {value!r}")
    return int(value)


def load_images(source: str, n: int, size: int, seed: int = 0) -> tuple[torch.Tensor, str]:
    """``n`` reference images [n, 3, size, size] in [0, 1] from a source, and its description."""
    from stimopt import reference

    source = str(source)
    if source == "natural_crops" or source == "demo" or (Path(source) / "manifest.json").exists():
        kind, path = ("natural_crops", None) if source == "natural_crops" else ("bank", source)
        batches, what = reference.reference_images(kind, n, size, seed, path)
        images = torch.cat(list(batches))
    elif Path(source).is_dir():
        from stimopt.bank.sources import decode, plan_shards, read_bytes

        items = [(shard, item) for shard in plan_shards(source) for item in shard.items][:n]
        images = torch.stack([decode(read_bytes(shard, item), size) for shard, item in items])
        what = f"the first {len(items)} images of {source}"
    else:
        raise StimoptError(f"target.references.source {source!r} is neither natural_crops, demo, a bank folder nor a "
                           "folder of images; give one of those")
    if len(images) < n:
        raise StimoptError(f"target.references.source {source} holds {len(images)} images, fewer than "
                           f"target.references.n={n}; lower n or add images")
    return images, what


@dataclass
class References:
    """A fixed set of reference images shown every ``every`` generations."""

    source: str
    n: int = 10
    every: int = 1
    seed: int = 0
    drift_correction: str = "none"

    def __post_init__(self):
        if not self.source:
            raise StimoptError("target.references needs source= natural_crops | demo | a bank folder | a folder of images")
        self.n = _positive("target.references.n", self.n)
        self.every = _positive("target.references.every", self.every)
        if self.drift_correction not in DRIFT_CORRECTIONS:
            raise StimoptError(f"target.references.drift_correction must be one of {DRIFT_CORRECTIONS}, "
                               f"got {self.drift_correction!r}")
        self._images, self.what = None, None

    def due(self, generation: int) -> bool:
        return generation % self.every == 0

    def images(self, like: torch.Tensor) -> torch.Tensor:
        """The reference images at the stimuli's size, dtype and device (loaded once)."""
        size = int(like.shape[-1])
        if self._images is None or self._images.shape[-1] != size:
            self._images, self.what = load_images(self.source, self.n, size, self.seed)
        return self._images.to(dtype=like.dtype, device=like.device)

    @staticmethod
    def gain(first: float, mean: float, previous: float) -> float:
        """The drift gain after a showing whose mean reference response is ``mean``."""
        ok = math.isfinite(mean) and mean > 0 and math.isfinite(first) and first > 0
        return mean / first if ok else previous


@dataclass
class Elites:
    """Re-presentation of the current best codes to confirm them."""

    n: int = 0
    every: int = 1
    min_presentations: int = 2

    def __post_init__(self):
        self.n = _positive("target.elites.n", self.n, minimum=0)
        self.every = _positive("target.elites.every", self.every)
        self.min_presentations = _positive("target.elites.min_presentations", self.min_presentations)

    def due(self, generation: int) -> bool:
        return self.n > 0 and generation > 0 and generation % self.every == 0

    def pick(self, store) -> list[dict]:
        """The ``n`` codes to show again: highest mean score over their presentations (ties: earliest)."""
        return store.presentation_means(limit=self.n)

    def confirmed(self, store) -> dict | None:
        """The evidence rule's best: highest mean score among codes shown >= min_presentations times."""
        rows = store.presentation_means(min_count=self.min_presentations, limit=1)
        return rows[0] if rows else None


def from_config(node) -> tuple[References | None, Elites | None]:
    """``target.references`` / ``target.elites`` (plain dicts or None) -> the parts the engine runs."""
    refs, elites = (node or {}).get("references"), (node or {}).get("elites")
    try:
        refs = References(**dict(refs)) if refs and refs.get("source") else None
        elites = Elites(**dict(elites)) if elites and int(elites.get("n") or 0) > 0 else None
    except TypeError as exc:
        raise StimoptError(f"target.references / target.elites: {exc}; references take source, n, every, seed, "
                           "drift_correction; elites take n, every, min_presentations") from None
    return refs, elites


class Interleave:
    """What the engine adds to a generation (nothing unless configured), and the drift signal."""

    def __init__(self, references: References | None = None, elites: Elites | None = None):
        self.references, self.elites = references, elites

    def plan(self, generation: int, store) -> list[dict]:
        """The extra stimuli of ``generation``, in the order they follow the optimizer's."""
        out = []
        if self.references is not None and self.references.due(generation):
            out += [{"kind": "reference", "code": None, "info": {"reference": j}} for j in range(self.references.n)]
        if self.elites is not None and self.elites.due(generation):
            out += [{"kind": "repeat", "code": r["code"], "info": {"of": r["id"]}} for r in self.elites.pick(store)]
        return out

    def most(self, generation: int) -> int:
        """The most extra stimuli ``generation`` can have (the plan has at most this many)."""
        refs = self.references.n if self.references is not None and self.references.due(generation) else 0
        return refs + (self.elites.n if self.elites is not None and self.elites.due(generation) else 0)

    def append(self, images, extras: list[dict], generator):
        """The optimizer's images followed by the extras' (references loaded, repeats regenerated)."""
        if not extras:
            return images
        images = torch.as_tensor(images)
        parts = [images]
        refs = [e["info"]["reference"] for e in extras if e["kind"] == "reference"]
        if refs:
            parts.append(self.references.images(images)[refs])
        repeats = [e["code"] for e in extras if e["kind"] == "repeat"]
        if repeats:
            parts.append(torch.as_tensor(generator.generate(np.asarray(repeats))).to(images))
        return torch.cat(parts)

    def correct(self, progress, response: np.ndarray, score: np.ndarray, extras: list[dict]) -> np.ndarray:
        """Track the drift gain from this generation's references; divide the scores by it when
        ``drift_correction=gain``. References get no score."""
        n = len(response) - len(extras)
        refs = [n + j for j, e in enumerate(extras) if e["kind"] == "reference"]
        score = np.array(score, dtype=np.float64)
        if refs:
            seen = response[refs][np.isfinite(response[refs])]
            mean = float(seen.mean()) if seen.size else math.nan
            if not math.isfinite(progress.reference_first) and math.isfinite(mean) and mean > 0:
                progress.reference_first = mean
            progress.drift_gain = References.gain(progress.reference_first, mean, progress.drift_gain)
            score[refs] = math.nan
        if self.references is not None and self.references.drift_correction == "gain":
            score = score / progress.drift_gain
        return score

    def summarize(self, store) -> dict:
        """summary.json's ``references`` (each showing's mean response and drift gain) and ``elites``
        (the evidence rule's confirmed best) blocks, read back from the store; None when off."""
        return {"references": self._references_summary(store) if self.references is not None else None,
                "elites": self._elites_summary(store) if self.elites is not None else None}

    def _references_summary(self, store) -> dict:
        r = self.references
        by_generation: dict[int, list[float]] = {}
        for row in store.shown("reference"):
            by_generation.setdefault(row["generation"], []).append(row["response"])
        showings, first, gain = [], math.nan, 1.0
        for g, values in sorted(by_generation.items()):
            seen = np.asarray(values)[np.isfinite(values)]
            mean = float(seen.mean()) if seen.size else math.nan
            if not math.isfinite(first) and math.isfinite(mean) and mean > 0:
                first = mean
            gain = References.gain(first, mean, gain)
            showings.append({"generation": g, "mean_response": mean if math.isfinite(mean) else None,
                             "n_missing": int(len(values) - seen.size), "gain": round(gain, 6)})
        return {"source": str(r.source), "n": r.n, "every": r.every, "drift_correction": r.drift_correction,
                "showings": showings, "drift_gain": round(gain, 6) if showings else None}

    def _elites_summary(self, store) -> dict:
        e = self.elites
        best = e.confirmed(store)
        if best is not None:
            best = {k: best[k] for k in ("id", "mean_score", "mean_response", "presentations")}
        return {"n": e.n, "every": e.every, "min_presentations": e.min_presentations,
                "n_repeats": len(store.shown("repeat")), "confirmed_best": best}

    @staticmethod
    def rows(extras: list[dict], outputs, response, score, trials) -> list[dict]:
        """The store's rows for the extras (stimopt.store.RunStore.append_generation)."""
        return [{**e, "outputs": outputs[j] if outputs.ndim == 2 else None, "response": response[j], "score": score[j],
                 "trials": None if trials is None else trials[j]} for j, e in enumerate(extras)]
