"""Matching model neurons to the neurons recorded in a new session (paper A.1.1), by R^2 on
shared images (``stimopt-fit mode=match``)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from stimopt.errors import StimoptError

from .checkpoints import read_checkpoint
from .targets import EncoderTarget, V4EnsembleTarget


def match_neurons(predicted: np.ndarray, recorded: np.ndarray) -> list[dict]:
    """Greedy one-to-one matching by R^2 (squared correlation over shared images): repeatedly take
    the (model, recorded) pair with the highest R^2 and remove both from the candidates."""
    p = np.asarray(predicted, np.float64)
    r = np.asarray(recorded, np.float64)
    r = np.where(np.isfinite(r), r, np.nanmean(r, axis=0))

    def z(a):
        a = a - a.mean(0)
        return a / (np.linalg.norm(a, axis=0) + 1e-12)

    r2 = (z(p).T @ z(r)) ** 2  # [model, recorded]
    pairs = []
    avail = np.isfinite(r2)
    for _ in range(min(r2.shape)):
        masked = np.where(avail, r2, -np.inf)
        i, j = np.unravel_index(int(np.argmax(masked)), r2.shape)
        if not np.isfinite(masked[i, j]):
            break
        pairs.append({"model": int(i), "recorded": int(j), "r2": float(r2[i, j])})
        avail[i, :] = False
        avail[:, j] = False
    return pairs


def match_from_config(cfg, out_dir: Path) -> dict:
    """``stimopt-fit mode=match checkpoint=PATH data.images=... data.responses=...``."""
    from stimopt import responses as R

    path = cfg.get("checkpoint")
    kind = read_checkpoint(path).get("kind") if path and Path(str(path)).is_file() else "v4_ensemble"
    target = (EncoderTarget if kind == "encoder" else V4EnsembleTarget)(path, None, cfg.device)
    if cfg.data.get("images") is None or cfg.data.get("responses") is None:
        raise StimoptError("mode=match needs data.images and data.responses of the new session (shared random images)")
    images = R.load_images(cfg.data.images, int(cfg.data.get("size", 112)))
    recorded, rec_names = R.load_table(cfg.data.responses, str(cfg.data.get("key", "responses")))
    if len(images) != len(recorded):
        raise StimoptError(f"{len(images)} images but {len(recorded)} response rows")
    with torch.no_grad():
        pred = torch.cat([target.predict_all(images[i:i + 64]).cpu() for i in range(0, len(images), 64)]).double().numpy()
    pairs = match_neurons(pred, recorded)
    for p in pairs:
        p["model_name"], p["recorded_name"] = target.names[p["model"]], rec_names[p["recorded"]]
    return {"mode": "match", "checkpoint": str(path), "pairs": pairs,
            "summary": f"matched {len(pairs)} model neurons (median R^2 {np.median([p['r2'] for p in pairs]) if pairs else float('nan'):.3f})"}
