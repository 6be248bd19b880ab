"""The V4 ensemble model (paper A.1.1): small CNNs on frozen backbone features, trained one by one.

A frozen backbone (default ResNet-50 ``layer3``, the paper's "layer 33") computes features once; an
ensemble of small CNNs (default 25 members, 4 residual layers each, a factorized spatial x feature
read-out per neuron) is trained member by member (own seed, own shuffling) with a train/validation
split and early stopping; the prediction is the ensemble mean. Held-out R^2 per neuron goes into
the report.
"""
from __future__ import annotations

import copy
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from stimopt.device import resolve_device
from stimopt.errors import StimoptError

from .backbone import backbone_from_config
from .checkpoints import CHECKPOINT_VERSION
from .data import dataset_from_config, r2_score, split_indices, twin_report


class ResidualLayer(nn.Module):
    def __init__(self, width: int):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(width, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
                                  nn.Conv2d(width, width, 3, padding=1, bias=False), nn.BatchNorm2d(width))

    def forward(self, x):
        return F.relu(x + self.body(x))


class EnsembleMember(nn.Module):
    """Backbone features -> 1x1 conv -> ``blocks`` residual layers -> per-neuron factorized read-out
    (a spatial mask [H,W] times feature weights [width] per neuron)."""

    def __init__(self, in_channels: int, height: int, width_px: int, n_out: int, width: int = 64, blocks: int = 4):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, width, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU())
        self.layers = nn.Sequential(*[ResidualLayer(width) for _ in range(blocks)])
        self.spatial = nn.Parameter(torch.full((n_out, height, width_px), 1.0 / (height * width_px)))
        self.feature = nn.Parameter(torch.randn(n_out, width) / width**0.5)
        self.bias = nn.Parameter(torch.zeros(n_out))

    def forward(self, f):
        h = self.layers(self.stem(f))
        pooled = torch.einsum("bchw,khw->bkc", h, self.spatial)
        return (pooled * self.feature).sum(-1) + self.bias


class EnsembleModel(nn.Module):
    """The ensemble: mean of the members' predictions, in the responses' original units."""

    def __init__(self, members: list[nn.Module], mean: np.ndarray, std: np.ndarray):
        super().__init__()
        self.members = nn.ModuleList(members)
        self.register_buffer("mean", torch.as_tensor(mean, dtype=torch.float32))
        self.register_buffer("std", torch.as_tensor(std, dtype=torch.float32))

    def forward(self, f):
        z = torch.stack([mem(f) for mem in self.members]).mean(0)
        return z * self.std + self.mean


def _masked_mse(pred, y):
    ok = torch.isfinite(y)
    return ((pred - torch.nan_to_num(y)) ** 2 * ok).sum() / ok.sum().clamp_min(1)


def _predict(net: nn.Module, feats: torch.Tensor, device, batch: int = 256) -> torch.Tensor:
    net.eval()
    with torch.no_grad():
        return torch.cat([net(feats[i:i + batch].to(device)).cpu() for i in range(0, len(feats), batch)])


def train_member(feats, y, train, val, m, device, seed: int) -> tuple[nn.Module, dict]:
    """One member, trained on its own (seed, shuffling); early stopping on validation loss."""
    torch.manual_seed(seed)
    _, c, h, w = feats.shape
    net = EnsembleMember(c, h, w, y.shape[1], int(m.width), int(m.blocks)).to(device)
    opt = torch.optim.Adam(net.parameters(), lr=float(m.lr), weight_decay=float(m.weight_decay))
    gen = torch.Generator().manual_seed(seed)
    xt, yt, xv, yv = feats[train], y[train], feats[val], y[val]
    best, best_state, bad, epoch = math.inf, None, 0, 0
    bs = int(m.batch_size)
    for epoch in range(int(m.epochs)):
        net.train()
        order = torch.randperm(len(xt), generator=gen)
        for i in range(0, len(order), bs):
            idx = order[i:i + bs]
            if len(idx) < 2:
                continue
            loss = _masked_mse(net(xt[idx].to(device)), yt[idx].to(device))
            opt.zero_grad()
            loss.backward()
            opt.step()
        val_loss = float(_masked_mse(_predict(net, xv, device), yv))
        if val_loss < best - 1e-6:
            best, best_state, bad = val_loss, copy.deepcopy(net.state_dict()), 0
        else:
            bad += 1
            if bad >= int(m.patience):
                break
    if best_state is None:
        raise StimoptError("the validation loss was never finite: are the responses all NaN or the images too few?")
    net.load_state_dict(best_state)
    return net.eval(), {"epochs": epoch + 1, "val_loss": best}


def _standardize(y: np.ndarray, train: np.ndarray):
    mean = np.nanmean(y[train], axis=0)
    std = np.nanstd(y[train], axis=0)
    std = np.where(np.isfinite(std) & (std > 0), std, 1.0)
    mean = np.where(np.isfinite(mean), mean, 0.0)
    return (y - mean) / std, mean, std


def fit_v4_ensemble(cfg, out_dir: Path) -> dict:
    """The V4 ensemble model (see module doc). Writes ``model.pt``; returns the report."""
    from omegaconf import OmegaConf

    m, d = cfg.model, cfg.data
    if int(m.members) < 1 or int(m.blocks) < 0:
        raise StimoptError("model.members must be >= 1 and model.blocks >= 0")
    t0 = time.perf_counter()
    device = resolve_device(cfg.device)
    backbone = backbone_from_config(m, device, int(cfg.seed))
    data = dataset_from_config(cfg, backbone)
    feats = backbone.features(data["images"])
    y_raw = np.asarray(data["responses"], np.float64)
    train, val, test = split_indices(len(y_raw), float(d.val_fraction), float(d.test_fraction), int(cfg.seed))
    y, mean, std = _standardize(y_raw, train)
    yt = torch.as_tensor(y, dtype=torch.float32)
    members, logs = [], []
    for k in range(int(m.members)):
        net, log = train_member(feats, yt, train, val, m, device, seed=int(cfg.seed) * 1000 + k)
        members.append(net.cpu())
        logs.append(log)
    model = EnsembleModel(members, mean, std).to(device)
    pred_test = _predict(model, feats[test], device).double().numpy()
    pred_val = _predict(model, feats[val], device).double().numpy()
    r2 = r2_score(pred_test, y_raw[test])
    ckpt = {
        "kind": "v4_ensemble", "version": CHECKPOINT_VERSION, "backbone": backbone.spec(),
        "member_args": {"in_channels": feats.shape[1], "height": feats.shape[2], "width_px": feats.shape[3],
                        "n_out": y.shape[1], "width": int(m.width), "blocks": int(m.blocks)},
        "n_members": len(members), "state": model.cpu().state_dict(), "names": list(data["names"]),
        "config": OmegaConf.to_container(cfg, resolve=True), "r2_test": r2.tolist(),
    }
    path = out_dir / "model.pt"
    torch.save(ckpt, path)
    report = {
        "model": "v4_ensemble", "checkpoint": str(path), "backbone": backbone.spec(), "backbone_note": backbone.note,
        "data": data["source"], "n_images": len(y_raw), "n_train": len(train), "n_val": len(val), "n_test": len(test),
        "names": list(data["names"]), "members": logs, "r2_val": r2_score(pred_val, y_raw[val]),
        "r2_test": r2, "r2_test_median": float(np.nanmedian(r2)), "fit_s": round(time.perf_counter() - t0, 2),
    }
    twin_report(report, data, pred_test, test)
    report["summary"] = f"v4_ensemble ({len(members)} members): median held-out R^2 {report['r2_test_median']:.3f}"
    return report
