"""Fitting data for model neurons: images + responses (or the synthetic twin), splits, R^2."""
from __future__ import annotations

import numpy as np

from stimopt.errors import StimoptError


def dataset_from_config(cfg, backbone) -> dict:
    """images [N,3,S,S], responses [N,K] (NaN = never recorded), names; synthetic twin when no responses."""
    from stimopt import responses as R

    d = cfg.data
    size = int(d.get("size", 112))
    if d.get("responses") is None:
        if d.get("images") is not None:
            raise StimoptError("data.images given without data.responses; give both, or neither for the synthetic twin")
        t = d.twin
        twin = R.make_twin(backbone, int(t.n_images), int(t.n_neurons), size, float(t.noise), int(t.repeats), int(cfg.seed),
                           tails=str(t.get("tails", "two")))
        return {"images": twin["images"], "responses": twin["responses"], "names": twin["names"],
                "clean": twin["clean"], "source": "twin"}
    table, names = R.load_responses(d, "data")
    if d.get("images") is None:
        raise StimoptError("data.images is missing: give the folder/.zip/.npz of the images the responses belong to")
    images = R.load_images(d.images, size)
    if len(images) != len(table):
        raise StimoptError(f"{len(images)} images but the response table has {len(table)} rows (images); they must match")
    return {"images": images, "responses": table, "names": names, "clean": None, "source": str(d.responses)}


def split_indices(n: int, val_fraction: float, test_fraction: float, seed: int):
    """Disjoint (train, val, test) index arrays, a fixed permutation per seed."""
    perm = np.random.default_rng(seed).permutation(n)
    n_test, n_val = max(1, int(round(n * test_fraction))), max(1, int(round(n * val_fraction)))
    if n - n_test - n_val < 2:
        raise StimoptError(f"{n} images are too few for a train/validation/test split")
    return perm[n_test + n_val:], perm[n_test:n_test + n_val], perm[:n_test]


def r2_score(pred: np.ndarray, true: np.ndarray) -> np.ndarray:
    """Per-column R^2 = 1 - SSE/SST over the finite entries of ``true``."""
    pred, true = np.asarray(pred, np.float64), np.asarray(true, np.float64)
    ok = np.isfinite(true)
    t = np.where(ok, true, 0.0)
    cnt = ok.sum(0)
    mean = t.sum(0) / np.maximum(cnt, 1)
    sse = (np.where(ok, pred - t, 0.0) ** 2).sum(0)
    sst = (np.where(ok, t - mean, 0.0) ** 2).sum(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(sst > 0, 1 - sse / sst, np.nan)


def twin_report(report: dict, data: dict, pred_test: np.ndarray, test: np.ndarray) -> None:
    """On the synthetic twin, also the R^2 against the noiseless teacher."""
    if data.get("clean") is not None:
        r2c = r2_score(pred_test, data["clean"][test])
        report["r2_teacher"] = r2c
        report["r2_teacher_median"] = float(np.nanmedian(r2c))
