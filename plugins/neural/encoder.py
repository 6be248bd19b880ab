"""fMRI/EEG encoders and the seed paper's readout comparison (Fig. 2a, A.1.2).

Frozen backbone features (any model/layer, a map [B, C, H, W]) -> a readout -> one prediction per
output (ROI, channel, neuron). ``model.readout`` picks the mapping (paper labels i-vi):

===============  ====  ======================================================================
``linear``       i     ridge on the features as read (use a pre-activation layer: "pre-ReLU")
``relu``         ii    ridge on ReLU(features), the classical mapping
``quantile``     iii   ridge on max(0, f_c - t_c), t_c the q-quantile of channel c; q from
                       ``model.quantiles`` by validation R^2
``gain_offset``  iv    per-channel gain and offset, LayerNorm over channels, ReLU, linear
``mix_relu``     v     1x1 convolution C -> C, LayerNorm over channels, ReLU, linear (proposed)
``mix_linear``   vi    v without the ReLU
``compare``            all six on the same split; a table (``readouts.json/.csv/.png``)
===============  ====  ======================================================================

Point-wise steps act on the feature map at its own resolution; the map is then average-pooled to
``pool`` x ``pool`` and read linearly. Ridge mappings (i-iii): one alpha per output by efficient
leave-one-out (:func:`stimopt.ridge.ridge_cv`) on train+validation. Trained mappings (iv-vi):
Adam on the training split, early stopping on the validation split, one mixing shared by all
outputs (a population readout, each output its own linear weights); the 1x1 mixing starts at
the identity. Every mapping is scored on the same untouched test split (held-out R^2 per output),
with a permutation test: the held-out responses shuffled across images ``model.permutations``
times; p = (1 + #{shuffled R^2 >= observed}) / (1 + permutations), per output and for the median.
Responses never recorded (NaN) are imputed by their column's mean before the fit.
"""
from __future__ import annotations

import copy
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from stimopt.device import resolve_device
from stimopt.errors import StimoptError
from stimopt.ridge import ridge_cv

from .backbone import backbone_from_config
from .checkpoints import CHECKPOINT_VERSION
from .data import dataset_from_config, r2_score, split_indices, twin_report

#: model.readout -> (paper label, description)
MAPPINGS = {
    "linear": ("i", "ridge on the pre-ReLU features"),
    "relu": ("ii", "ridge on post-ReLU features"),
    "quantile": ("iii", "ridge on features thresholded at a per-channel quantile"),
    "gain_offset": ("iv", "per-channel gain/offset + LayerNorm + ReLU + linear"),
    "mix_relu": ("v", "1x1 mixing + LayerNorm + ReLU + linear (the paper's proposal)"),
    "mix_linear": ("vi", "1x1 mixing + LayerNorm + linear (no ReLU)"),
}
RIDGE_MAPPINGS = ("linear", "relu", "quantile")


def pool_features(feats: torch.Tensor, pool: int) -> torch.Tensor:
    """[B,C,H,W] -> [B, C*pool*pool] (average-pooled to pool x pool first when the map is larger)."""
    if pool and feats.shape[-1] > pool:
        feats = F.adaptive_avg_pool2d(feats, pool)
    return feats.flatten(1)


def _channel_layernorm(x: torch.Tensor, ln: nn.LayerNorm) -> torch.Tensor:
    return ln(x.movedim(1, -1)).movedim(-1, 1)


class Readout(nn.Module):
    """One mapping of the table above: feature map [B, C, H, W] -> predictions [B, K] (differentiable)."""

    def __init__(self, kind: str, channels: int, n_features: int, n_out: int, pool: int):
        super().__init__()
        if kind not in MAPPINGS:
            raise StimoptError(f"model.readout={kind} is not a mapping; choose one of {', '.join(MAPPINGS)} or compare")
        self.kind, self.pool = kind, int(pool)
        c = int(channels)
        self.register_buffer("threshold", torch.zeros(c))
        if kind == "gain_offset":
            self.gain, self.offset = nn.Parameter(torch.ones(c)), nn.Parameter(torch.zeros(c))
        if kind in ("mix_relu", "mix_linear"):
            self.mix = nn.Conv2d(c, c, 1)
            with torch.no_grad():  # start at the identity: the mapping begins as LayerNorm(features)
                self.mix.weight.copy_(torch.eye(c)[:, :, None, None] + 0.01 * torch.randn(c, c, 1, 1))
                self.mix.bias.zero_()
        if kind not in RIDGE_MAPPINGS:
            self.ln = nn.LayerNorm(c)
        self.register_buffer("x_mean", torch.zeros(n_features))
        self.register_buffer("x_std", torch.ones(n_features))
        self.linear = nn.Linear(n_features, n_out)

    def transform(self, f: torch.Tensor) -> torch.Tensor:
        """The point-wise steps on the map, then pooling: [B, C, H, W] -> [B, n_features]."""
        k = self.kind
        if k == "relu":
            f = F.relu(f)
        elif k == "quantile":
            f = F.relu(f - self.threshold.view(1, -1, 1, 1))
        elif k == "gain_offset":
            f = F.relu(_channel_layernorm(f * self.gain.view(1, -1, 1, 1) + self.offset.view(1, -1, 1, 1), self.ln))
        elif k in ("mix_relu", "mix_linear"):
            f = _channel_layernorm(self.mix(f), self.ln)
            if k == "mix_relu":
                f = F.relu(f)
        return pool_features(f, self.pool)

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        return self.linear((self.transform(f) - self.x_mean) / self.x_std)

    @classmethod
    def from_checkpoint(cls, ckpt: dict) -> "Readout":
        """The readout of an encoder checkpoint (checkpoints before readouts hold a ridge on the features)."""
        w = ckpt["w"]
        state = ckpt.get("readout_state")
        if state is None:
            r = cls("linear", 1, w.shape[0], w.shape[1], int(ckpt["pool"]))
            state = {"threshold": torch.zeros(1), "x_mean": ckpt["x_mean"], "x_std": ckpt["x_std"],
                     "linear.weight": w.T.contiguous(), "linear.bias": ckpt["b"]}
        else:
            r = cls(str(ckpt["readout"]), int(ckpt["channels"]), w.shape[0], w.shape[1], int(ckpt["pool"]))
        r.load_state_dict(state)
        return r.eval()


# ------------------------------------------------------------------------------------------- fitting
def _features(readout: Readout, feats: torch.Tensor, batch: int = 256) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([readout.transform(feats[i:i + batch]) for i in range(0, len(feats), batch)])


def _predict(readout: Readout, feats: torch.Tensor, batch: int = 256) -> np.ndarray:
    with torch.no_grad():
        return torch.cat([readout(feats[i:i + batch]) for i in range(0, len(feats), batch)]).double().numpy()


def _set_linear(readout: Readout, x_mean, x_std, w, b) -> None:
    with torch.no_grad():
        readout.x_mean.copy_(torch.as_tensor(x_mean, dtype=torch.float32))
        readout.x_std.copy_(torch.as_tensor(x_std, dtype=torch.float32))
        readout.linear.weight.copy_(torch.as_tensor(np.asarray(w).T, dtype=torch.float32))
        readout.linear.bias.copy_(torch.as_tensor(b, dtype=torch.float32))


def _ridge_into(readout: Readout, feats: torch.Tensor, y: np.ndarray, rows: np.ndarray, alphas) -> np.ndarray:
    """Ridge (alpha per output by leave-one-out on ``rows``) from the readout's features; returns the alphas."""
    x = _features(readout, feats).double().numpy()
    x_mean, x_std = x[rows].mean(0), x[rows].std(0) + 1e-8
    w, b, alpha = ridge_cv((x[rows] - x_mean) / x_std, y[rows], alphas)
    _set_linear(readout, x_mean, x_std, w, b)
    return alpha


def fit_ridge_mapping(kind, feats, y, train, val, m) -> tuple[Readout, dict]:
    """Mappings i-iii; ``y`` finite (imputed)."""
    readout = Readout(kind, feats.shape[1], _n_features(feats, m), y.shape[1], int(m.get("pool", 0)))
    fit_rows = np.concatenate([train, val])
    info = {}
    if kind == "quantile":
        grid = [float(q) for q in m.get("quantiles", [0.1, 0.3, 0.5, 0.7, 0.9])]
        if not grid or not all(0.0 < q < 1.0 for q in grid):
            raise StimoptError(f"model.quantiles must be numbers strictly between 0 and 1, got {grid}")
        per_channel = feats[torch.as_tensor(train)].movedim(1, 0).flatten(1).numpy()  # [C, n_train * H * W]
        thresholds = {q: torch.as_tensor(np.quantile(per_channel, q, axis=1), dtype=torch.float32) for q in grid}
        scores = {}
        for q in grid:
            readout.threshold.copy_(thresholds[q])
            _ridge_into(readout, feats, y, train, m.alphas)
            scores[q] = float(np.nanmedian(r2_score(_predict(readout, feats[torch.as_tensor(val)]), y[val])))
        best = max(grid, key=lambda q: scores[q])
        readout.threshold.copy_(thresholds[best])
        info = {"quantile": best, "val_r2_by_quantile": {str(q): s for q, s in scores.items()}}
    info["alphas"] = _ridge_into(readout, feats, y, fit_rows, m.alphas).tolist()
    return readout, info


def _n_features(feats: torch.Tensor, m) -> int:
    return int(pool_features(feats[:1], int(m.get("pool", 0))).shape[1])


def fit_trained_mapping(kind, feats, y, train, val, m, seed: int) -> tuple[Readout, dict]:
    """Mappings iv-vi: Adam on ``train`` (z-scored responses), early stopping on ``val``; ``y`` finite."""
    torch.manual_seed(seed)
    readout = Readout(kind, feats.shape[1], _n_features(feats, m), y.shape[1], int(m.get("pool", 0)))
    mu, sd = y[train].mean(0), y[train].std(0)
    sd = np.where(sd > 0, sd, 1.0)
    yz = torch.as_tensor((y - mu) / sd, dtype=torch.float32)
    decay = float(m.get("weight_decay", 1e-3))
    opt = torch.optim.Adam([{"params": [p for n, p in readout.named_parameters() if n != "linear.weight"]},
                            {"params": [readout.linear.weight], "weight_decay": decay}], lr=float(m.get("lr", 1e-3)))
    gen = torch.Generator().manual_seed(seed)
    xt, yt, xv, yv = feats[torch.as_tensor(train)], yz[train], feats[torch.as_tensor(val)], yz[val]
    bs, patience = int(m.get("batch_size", 128)), int(m.get("patience", 15))
    best, best_state, bad, epoch = math.inf, None, 0, 0
    for epoch in range(int(m.get("epochs", 150))):
        readout.train()
        order = torch.randperm(len(xt), generator=gen)
        for i in range(0, len(order), bs):
            idx = order[i:i + bs]
            loss = F.mse_loss(readout(xt[idx]), yt[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        readout.eval()
        with torch.no_grad():
            val_loss = float(F.mse_loss(readout(xv), yv))
        if val_loss < best - 1e-6:
            best, best_state, bad = val_loss, copy.deepcopy(readout.state_dict()), 0
        else:
            bad += 1
            if bad >= patience:
                break
    if best_state is None:
        raise StimoptError(f"readout {kind}: the validation loss was never finite; check the responses (all NaN?)")
    readout.load_state_dict(best_state)
    with torch.no_grad():  # back to the responses' own units
        readout.linear.weight.mul_(torch.as_tensor(sd, dtype=torch.float32)[:, None])
        readout.linear.bias.mul_(torch.as_tensor(sd, dtype=torch.float32)).add_(torch.as_tensor(mu, dtype=torch.float32))
    return readout.eval(), {"epochs": epoch + 1, "val_loss": best}


def permutation_test(pred: np.ndarray, true: np.ndarray, n: int, seed: int = 0) -> dict:
    """Held-out R^2 against the responses shuffled across images: p per output and for the median."""
    observed = r2_score(pred, true)
    if int(n) < 1:
        return {"p": [None] * len(observed), "p_median": None, "n": 0}
    rng = np.random.default_rng(seed)
    null = np.stack([r2_score(pred, true[rng.permutation(len(true))]) for _ in range(int(n))])  # [n, K]
    with np.errstate(invalid="ignore"):
        p = (1 + (null >= observed).sum(0)) / (1 + int(n))
        p_med = (1 + int((np.nanmedian(null, axis=1) >= np.nanmedian(observed)).sum())) / (1 + int(n))
    return {"p": p, "p_median": float(p_med), "n": int(n), "null_median_r2": float(np.nanmedian(null))}


def fit_mapping(kind, feats, y, train, val, m, seed: int) -> tuple[Readout, dict]:
    if kind in RIDGE_MAPPINGS:
        return fit_ridge_mapping(kind, feats, y, train, val, m)
    return fit_trained_mapping(kind, feats, y, train, val, m, seed)


def compare_readouts(feats: torch.Tensor, y: np.ndarray, split, m, seed: int = 0, mappings=None,
                     clean: np.ndarray | None = None) -> tuple[dict, dict]:
    """Fit each mapping on the same split and score it on the same test images.

    ``feats`` [N, C, H, W] backbone features, ``y`` [N, K] responses (NaN = not recorded),
    ``split`` (train, val, test). Returns ({name: Readout}, {name: row}), a row holding ``label``,
    ``r2_test`` (per output), ``r2_test_median``, ``r2_test_se``, ``p``, ``p_median``, ``fit_s`` and
    the mapping's own choices (alphas, quantile, epochs).
    """
    from tqdm import tqdm

    train, val, test = (np.asarray(s) for s in split)
    mappings = list(mappings or MAPPINGS)
    bad = [k for k in mappings if k not in MAPPINGS]
    if bad:
        raise StimoptError(f"unknown readout(s) {bad}; choose from {', '.join(MAPPINGS)}")
    feats = torch.as_tensor(feats, dtype=torch.float32)
    if feats.ndim != 4:
        raise StimoptError(f"readouts need a feature map [N, C, H, W], got shape {tuple(feats.shape)}")
    y = np.asarray(y, np.float64)
    fit_rows = np.concatenate([train, val])
    with np.errstate(invalid="ignore"):
        col_mean = np.nan_to_num(np.nanmean(y[fit_rows], axis=0))
    y_fit = np.where(np.isfinite(y), y, col_mean)  # test rows are scored on the recorded values only
    readouts, rows = {}, {}
    for i, kind in enumerate(tqdm(mappings, desc="readouts", unit="mapping", leave=False, disable=len(mappings) == 1)):
        t0 = time.perf_counter()
        readout, info = fit_mapping(kind, feats, y_fit, train, val, m, seed)
        pred = _predict(readout, feats[torch.as_tensor(test)])
        r2 = r2_score(pred, y[test])
        perm = permutation_test(pred, y[test], int(m.get("permutations", 1000)), seed + 17 * i)
        finite = r2[np.isfinite(r2)]
        row = {"readout": kind, "label": MAPPINGS[kind][0], "description": MAPPINGS[kind][1], "r2_test": r2,
               "r2_test_median": float(np.nanmedian(r2)) if finite.size else float("nan"),
               "r2_test_mean": float(finite.mean()) if finite.size else float("nan"),
               "r2_test_se": float(finite.std(ddof=1) / math.sqrt(finite.size)) if finite.size > 1 else 0.0,
               "p": perm["p"], "p_median": perm["p_median"], "permutations": perm["n"], **info,
               "fit_s": round(time.perf_counter() - t0, 2), "_pred": pred}
        if clean is not None:
            row["r2_teacher_median"] = float(np.nanmedian(r2_score(pred, clean[test])))
        readouts[kind], rows[kind] = readout, row
    return readouts, rows


# ------------------------------------------------------------------------------------------- the app
def _checkpoint(readout: Readout, backbone, data, cfg, r2, info: dict) -> dict:
    from omegaconf import OmegaConf

    lin = readout.linear
    return {
        "kind": "encoder", "version": CHECKPOINT_VERSION, "backbone": backbone.spec(), "pool": readout.pool,
        "readout": readout.kind, "channels": int(readout.threshold.numel()),
        "readout_state": {k: v.detach().clone() for k, v in readout.state_dict().items()},
        "x_mean": readout.x_mean.clone(), "x_std": readout.x_std.clone(),
        "w": lin.weight.detach().T.contiguous().clone(), "b": lin.bias.detach().clone(),
        "alphas": list(info.get("alphas", [])), "names": list(data["names"]),
        "config": OmegaConf.to_container(cfg, resolve=True), "r2_test": np.asarray(r2).tolist(),
    }


def fit_encoder(cfg, out_dir: Path) -> dict:
    """Encoder per ROI/channel with ``model.readout`` (see module doc). Writes ``model.pt``; returns the report."""
    m, d = cfg.model, cfg.data
    t0 = time.perf_counter()
    choice = str(m.get("readout", "linear"))
    if choice != "compare" and choice not in MAPPINGS:
        raise StimoptError(f"model.readout={choice} is not a mapping; choose one of {', '.join(MAPPINGS)} or compare")
    mappings = list(m.get("compare") or MAPPINGS) if choice == "compare" else [choice]
    device = resolve_device(cfg.device)
    backbone = backbone_from_config(m, device, int(cfg.seed))
    data = dataset_from_config(cfg, backbone)
    feats = backbone.features(data["images"])
    y = np.asarray(data["responses"], np.float64)
    split = split_indices(len(y), float(d.val_fraction), float(d.test_fraction), int(cfg.seed))
    test = split[2]
    with torch.random.fork_rng(devices=[]):
        readouts, rows = compare_readouts(feats, y, split, m, int(cfg.seed), mappings, data.get("clean"))
    best = max(rows, key=lambda k: (np.nan_to_num(rows[k]["r2_test_median"], nan=-np.inf)))
    path = out_dir / "model.pt"
    torch.save(_checkpoint(readouts[best], backbone, data, cfg, rows[best]["r2_test"], rows[best]), path)
    n_features = int(readouts[best].x_mean.numel())
    row = rows[best]
    report = {
        "model": "encoder", "readout": best, "checkpoint": str(path), "backbone": backbone.spec(),
        "backbone_note": backbone.note, "data": data["source"], "n_images": len(y), "n_features": n_features,
        "feature_map": list(feats.shape[1:]), "n_test": len(test), "names": list(data["names"]),
        "alphas": row.get("alphas", []), "r2_test": row["r2_test"], "r2_test_median": row["r2_test_median"],
        "p": row["p"], "p_median": row["p_median"], "fit_s": round(time.perf_counter() - t0, 2),
    }
    twin_report(report, data, row["_pred"], test)
    if choice == "compare":
        table = [{k: v for k, v in r.items() if k != "_pred"} for r in rows.values()]
        for r in table:
            torch.save(_checkpoint(readouts[r["readout"]], backbone, data, cfg, r["r2_test"], r),
                       out_dir / f"model_{r['readout']}.pt")
            r["checkpoint"] = str(out_dir / f"model_{r['readout']}.pt")
        report["readouts"] = table
        report["files"] = write_readout_table(out_dir, table)
        report["summary"] = ("readouts: " + ", ".join(f"{r['label']} {r['readout']} {r['r2_test_median']:.3f}" for r in table)
                             + f" (median held-out R^2); best {best}, written to model.pt")
    else:
        label = MAPPINGS[best][0]
        p = "no permutation test" if report["p_median"] is None else f"permutation p {report['p_median']:.3g}"
        report["summary"] = (f"encoder ({n_features} features, readout {label} {best}): median held-out R^2 "
                             f"{report['r2_test_median']:.3f} ({p})")
    return report


def write_readout_table(out_dir: Path, table: list[dict]) -> dict:
    """``readouts.json`` (the rows), ``readouts.csv`` (one line per mapping), ``readouts.png`` (bar chart)."""
    import csv

    from stimopt.fit import _jsonable

    files = {"json": out_dir / "readouts.json", "csv": out_dir / "readouts.csv", "png": out_dir / "readouts.png"}
    files["json"].write_text(json.dumps(_jsonable({"readouts": table}), indent=1) + "\n")
    cols = ["label", "readout", "r2_test_median", "r2_test_mean", "r2_test_se", "p_median", "permutations", "quantile",
            "r2_teacher_median", "fit_s", "description"]
    with open(files["csv"], "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols, extrasaction="ignore")
        w.writeheader()
        w.writerows(_jsonable(table))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.4))
    x = np.arange(len(table))
    med = [r["r2_test_median"] for r in table]
    ax.bar(x, med, yerr=[r["r2_test_se"] for r in table], color=["tab:purple" if r["readout"] == "mix_relu" else "tab:grey"
                                                                   for r in table], capsize=3)
    for xi, r in zip(x, table):
        if r["p_median"] is not None and r["p_median"] < 0.001:
            ax.text(xi, r["r2_test_median"] + r["r2_test_se"], "*", ha="center", va="bottom")
    ax.set_xticks(x)
    ax.set_xticklabels([f"{r['label']}\n{r['readout']}" for r in table], fontsize=7)
    ax.set_ylabel("held-out R^2 (median over outputs, +- s.e.)")
    ax.set_title("readouts (* permutation p < 0.001)", fontsize=9)
    fig.tight_layout()
    fig.savefig(files["png"], dpi=90)
    plt.close(fig)
    return {k: str(p) for k, p in files.items()}
