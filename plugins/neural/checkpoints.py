"""Checkpoints of fitted model neurons: reading them (tensors and plain values only) and the demo twins.

``target.checkpoint=demo``: a twin fitted once, on first use, to synthetic digital-twin neurons
(stimopt-fit's default data) at the scale of benchmarks/fit_twin.py, and cached. A demo, not a V4
recording. The demo neurons are two-tailed (``data.twin.tails=two``: images drive them above and
below baseline, so ``direction=min`` finds anti-preferred images); ``target.checkpoint=demo:one``
is the one-tailed variant (a ReLU teacher, half of the images at exactly 0). Each variant has its own
cache folder, named with ``DEMO_VERSION`` and the tails, so a cache of an older demo is never reused.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import torch

from stimopt.errors import StimoptError

CHECKPOINT_VERSION = 1

DEMO_FITS = {
    "v4_ensemble": ["model=v4_ensemble", "model.backbone=efficientnet_lite0", "model.layer=blocks.4", "model.members=3",
                    "model.width=32", "model.epochs=30"],
    "encoder": ["model=encoder"],
}
DEMO_VERSION = 2  # bump when the demo data or fit changes: the cache folder is keyed by it
DEMO_TAILS = ("two", "one")
DEMO_DATA = ["model.input_size=96", "data.size=96", "data.twin.n_images=1200", "data.twin.n_neurons=8", "seed=0"]


def demo_spelling(checkpoint) -> str | None:
    """The tails of a demo checkpoint spelling (``demo`` -> two, ``demo:one``, ``demo:two``), else None."""
    text = str(checkpoint)
    if text == "demo":
        return "two"
    if not text.startswith("demo:"):
        return None
    tails = text.split(":", 1)[1]
    if tails not in DEMO_TAILS:
        raise StimoptError(f"target.checkpoint={text}: the demo twin is demo (two-tailed), demo:two or demo:one (one-tailed)")
    return tails


def demo_checkpoint(kind: str, tails: str = "two") -> Path:
    """The cached demo twin of ``kind`` with ``tails`` (two | one), fitted in a separate stimopt-fit
    process when missing."""
    from stimopt.cache import cache_dir

    if tails not in DEMO_TAILS:
        raise StimoptError(f"the demo twin's tails must be two or one, got {tails!r}")
    out = cache_dir() / "fits" / f"{kind}-demo-v{DEMO_VERSION}-{tails}"
    if (out / "model.pt").is_file():
        return out / "model.pt"
    print(f"stimopt: fitting the demo {kind} to synthetic {tails}-tailed digital-twin neurons (once, a few minutes) into {out}",
          file=sys.stderr, flush=True)
    tmp = out.with_name(f"{out.name}.tmp-{os.getpid()}")
    cmd = [sys.executable, "-c", "from stimopt.fit import main; main()", *DEMO_FITS[kind], *DEMO_DATA, f"data.twin.tails={tails}", f"out={tmp}"]
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if proc.returncode != 0 or not (tmp / "model.pt").is_file():
        tail = " | ".join(proc.stdout.strip().splitlines()[-2:])
        raise StimoptError(f"the demo {kind} fit failed ({tail}); fit one yourself: stimopt-fit model={kind}")
    try:
        os.replace(tmp, out)
    except OSError:  # another process placed it first (or a stale folder is in the way)
        if not (out / "model.pt").is_file():
            shutil.rmtree(out, ignore_errors=True)
            os.replace(tmp, out)
    shutil.rmtree(tmp, ignore_errors=True)
    return out / "model.pt"


def read_checkpoint(path) -> dict:
    """A checkpoint's contents: tensors and plain values only (``weights_only=True``: no pickled code)."""
    try:
        ckpt = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure is the same user-facing problem
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise StimoptError(f"{path} is not a readable stimopt-fit checkpoint ({first}); refit it with stimopt-fit") from None
    if not isinstance(ckpt, dict):
        raise StimoptError(f"{path} is not a stimopt-fit checkpoint (it holds a {type(ckpt).__name__})")
    return ckpt


def load_checkpoint(path, kind: str) -> dict:
    tails = demo_spelling(path)
    if tails is not None:
        path = demo_checkpoint(kind, tails)
    if path is None or not Path(str(path)).is_file():
        raise StimoptError(f"target.checkpoint={path} is not a file; fit one with: stimopt-fit model={kind} ... "
                           "(it writes model.pt), or use target.checkpoint=demo")
    ckpt = read_checkpoint(path)
    if ckpt.get("kind") != kind:
        raise StimoptError(f"{path} is not a {kind} checkpoint (it holds '{ckpt.get('kind')}'); "
                           f"use target={ckpt.get('kind')} or another file")
    return ckpt
