"""fMRI/EEG encoders: frozen backbone features (any model/layer) -> ridge regression, one alpha
per output (ROI or channel) chosen by efficient leave-one-out (:func:`stimopt.ridge.ridge_cv`,
scikit-learn's ``RidgeCV``); held-out R^2 per output. Responses never recorded (NaN) are imputed
by their column's mean before the fit."""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from stimopt.device import resolve_device
from stimopt.ridge import ridge_cv

from .backbone import backbone_from_config
from .checkpoints import CHECKPOINT_VERSION
from .data import dataset_from_config, r2_score, split_indices, twin_report


def pool_features(feats: torch.Tensor, pool: int) -> torch.Tensor:
    """[B,C,H,W] -> [B, C*pool*pool] (average-pooled to pool x pool first when the map is larger)."""
    if pool and feats.shape[-1] > pool:
        feats = F.adaptive_avg_pool2d(feats, pool)
    return feats.flatten(1)


def fit_encoder(cfg, out_dir: Path) -> dict:
    """Ridge encoder per ROI/channel (see module doc). Writes ``model.pt``; returns the report."""
    from omegaconf import OmegaConf

    m, d = cfg.model, cfg.data
    t0 = time.perf_counter()
    device = resolve_device(cfg.device)
    backbone = backbone_from_config(m, device, int(cfg.seed))
    data = dataset_from_config(cfg, backbone)
    x = pool_features(backbone.features(data["images"]), int(m.get("pool", 0))).double().numpy()
    y = np.asarray(data["responses"], np.float64)
    train, val, test = split_indices(len(y), float(d.val_fraction), float(d.test_fraction), int(cfg.seed))
    fit_idx = np.concatenate([train, val])  # leave-one-out chooses alpha inside train+val; test stays untouched
    x_mean, x_std = x[fit_idx].mean(0), x[fit_idx].std(0) + 1e-8
    xs = (x - x_mean) / x_std
    y_fit = y[fit_idx]
    with np.errstate(invalid="ignore"):
        col_mean = np.nan_to_num(np.nanmean(y_fit, axis=0))
    y_fit = np.where(np.isfinite(y_fit), y_fit, col_mean)
    w, b, alphas = ridge_cv(xs[fit_idx], y_fit, list(m.alphas))
    pred = xs[test] @ w + b
    r2 = r2_score(pred, y[test])
    ckpt = {
        "kind": "encoder", "version": CHECKPOINT_VERSION, "backbone": backbone.spec(), "pool": int(m.get("pool", 0)),
        "x_mean": torch.as_tensor(x_mean, dtype=torch.float32), "x_std": torch.as_tensor(x_std, dtype=torch.float32),
        "w": torch.as_tensor(w, dtype=torch.float32), "b": torch.as_tensor(b, dtype=torch.float32),
        "alphas": alphas.tolist(), "names": list(data["names"]), "config": OmegaConf.to_container(cfg, resolve=True),
        "r2_test": r2.tolist(),
    }
    path = out_dir / "model.pt"
    torch.save(ckpt, path)
    report = {
        "model": "encoder", "checkpoint": str(path), "backbone": backbone.spec(), "backbone_note": backbone.note,
        "data": data["source"], "n_images": len(y), "n_features": int(x.shape[1]), "n_test": len(test),
        "names": list(data["names"]), "alphas": alphas, "r2_test": r2, "r2_test_median": float(np.nanmedian(r2)),
        "fit_s": round(time.perf_counter() - t0, 2),
    }
    twin_report(report, data, pred, test)
    report["summary"] = f"encoder ({x.shape[1]} features): median held-out R^2 {report['r2_test_median']:.3f}"
    return report
