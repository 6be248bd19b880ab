"""Checks that can run before the first stimulus is shown run before it is shown.

On a rig, generation 0 is an animal's time: a config error found after it was evaluated wastes it.
``preflight(run, cfg)`` is called by ``run_experiment`` after the run is built and before its first
generation; each problem is one StimoptError line. It never calls the target's ``evaluate``.
"""
from __future__ import annotations

import copy
import os
import warnings

import numpy as np

from stimopt.errors import StimoptError


def _objective_reads(run) -> None:
    """The objective applied to zero responses of the target's declared width (``n_outputs``)."""
    n = int(getattr(run.target, "n_outputs", 1) or 1)
    dummy = np.zeros(2) if n == 1 else np.zeros((2, n))
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        copy.deepcopy(run.objective)(dummy)


def _reference(cfg) -> None:
    from stimopt.reference import REFERENCE_KINDS

    kind = (cfg.get("reference") or {}).get("kind")
    if kind not in (None, "null", "none", *REFERENCE_KINDS):
        raise StimoptError(f"reference.kind must be one of {', '.join(REFERENCE_KINDS)} or null, got '{kind}'")


def _timings(run) -> None:
    from stimopt.reference import clean_target

    for part in (run.target, clean_target(run.target)):
        for name in ("poll_s", "timeout_s"):
            value = getattr(part, name, None)
            if isinstance(value, (int, float)) and not (value >= 0 and np.isfinite(value)):
                raise StimoptError(f"target.{name} must be a non-negative number of seconds, got {value}")


def _writable(run) -> None:
    for path in (run.run_dir, run.store.path):
        if path.exists() and not os.access(path, os.W_OK):
            raise StimoptError(f"{path} is read-only; make it writable or choose another hydra.run.dir")


def preflight(run, cfg) -> None:
    _writable(run)
    _reference(cfg)
    _timings(run)
    _objective_reads(run)
