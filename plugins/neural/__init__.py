"""Model targets fitted to recorded data: the V4 ensemble model and fMRI/EEG encoders.

Fitting (``stimopt-fit``, see :mod:`stimopt.fit` for the fit-function contract):

- :func:`fit_v4_ensemble` (paper A.1.1): a frozen backbone (default ResNet-50 ``layer3``, the
  paper's "layer 33") computes features once; an ensemble of small CNNs (default 25 members,
  4 residual layers each, a factorized spatial x feature read-out per neuron) is trained member by
  member (own seed, own shuffling) with a train/validation split and early stopping; the
  prediction is the ensemble mean. Held-out R^2 per neuron goes into the report.
- :func:`fit_encoder`: frozen backbone features (any model/layer) -> ridge regression, alpha
  chosen per output (ROI or channel) by k-fold cross-validation; held-out R^2 per output.
- :func:`match_neurons` (paper A.1.1): greedy matching of model neurons to the neurons recorded
  in a new session by R^2 on shared images (``stimopt-fit mode=match``).

Targets: ``target=v4_ensemble target.checkpoint=PATH target.neuron=K`` (an index, a name, or a
list of them -> [B, k] outputs for the objective) and ``target=encoder target.checkpoint=PATH
target.roi=FFA``; batched, on the GPU when present.

Backbone weights: the paper's ResNet-50 has no offline weights here; when a pretrained backbone
cannot be loaded and ``fallback_backbone`` is set, the fit uses it instead and says so (printed
and in the report). Random-weight backbones are initialized from ``seed`` so a checkpoint
rebuilds exactly the same one.
"""
from __future__ import annotations

import copy
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

import stimopt
from stimopt.errors import StimoptError
from stimopt.device import resolve_device
from stimopt.models import LayerReader, load_model

CHECKPOINT_VERSION = 1


# -- frozen backbone ------------------------------------------------------------------------------
class Backbone:
    """Frozen features of ``layer`` of a torchvision/timm model: images [B,3,H,W] -> [B,C,h,w]."""

    def __init__(self, model: str = "resnet50", layer: str = "layer3", weights: str = "pretrained",
                 input_size: int = 112, device="auto", seed: int = 0, fallback: str | None = None,
                 fallback_layer: str | None = None, model_module: nn.Module | None = None):
        self.device = resolve_device(device)
        self.note = None
        if model_module is not None:  # tests: a tiny module made in the test
            net, mean, std = model_module, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
        else:
            try:
                with torch.random.fork_rng(devices=[]):
                    torch.manual_seed(int(seed))
                    net, mean, std = load_model(str(model), str(weights))
            except StimoptError as exc:
                if not fallback or weights != "pretrained":
                    raise
                self.note = (f"{model} weights are not on this machine ({exc}); using {fallback}:{fallback_layer} "
                             f"instead (the paper's model is used as soon as its weights are present)")
                print(f"stimopt: note: {self.note}", file=sys.stderr)
                model, layer = fallback, fallback_layer or layer
                net, mean, std = load_model(str(model), "pretrained")
        self.model, self.layer, self.weights, self.seed = str(model), str(layer), str(weights), int(seed)
        self.input_size = int(input_size)
        self.net = net.eval().to(self.device)
        for p in self.net.parameters():
            p.requires_grad_(False)
        self.reader = LayerReader(self.net, self.layer, self.model)
        self.mean = torch.tensor(mean, device=self.device).view(1, 3, 1, 1)
        self.std = torch.tensor(std, device=self.device).view(1, 3, 1, 1)

    def spec(self) -> dict:
        return {"model": self.model, "layer": self.layer, "weights": self.weights,
                "input_size": self.input_size, "seed": self.seed}

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        x = torch.as_tensor(images).to(self.device, torch.float32)
        if x.shape[-1] != self.input_size or x.shape[-2] != self.input_size:
            x = F.interpolate(x, size=(self.input_size, self.input_size), mode="bilinear", antialias=True, align_corners=False)
        f = self.reader((x - self.mean) / self.std)
        return f if f.ndim == 4 else f[:, :, None, None]

    def features(self, images: torch.Tensor, batch: int = 64) -> torch.Tensor:
        """All images' features, computed in batches, on the CPU (float32)."""
        return torch.cat([self(images[i:i + batch]).float().cpu() for i in range(0, len(images), batch)])


def backbone_from_config(m, device, seed: int) -> Backbone:
    return Backbone(m.backbone, m.layer, m.get("weights", "pretrained"), int(m.get("input_size", 112)), device, seed,
                    m.get("fallback_backbone"), m.get("fallback_layer"))


# -- data and splits -------------------------------------------------------------------------------
def dataset_from_config(cfg, backbone: Backbone) -> dict:
    """images [N,3,S,S], responses [N,K] (NaN = never recorded), names; synthetic twin when no responses."""
    from stimopt import responses as R

    d = cfg.data
    size = int(d.get("size", 112))
    if d.get("responses") is None:
        if d.get("images") is not None:
            raise StimoptError("data.images given without data.responses; give both, or neither for the synthetic twin")
        t = d.twin
        twin = R.make_twin(backbone, int(t.n_images), int(t.n_neurons), size, float(t.noise), int(t.repeats), int(cfg.seed))
        return {"images": twin["images"], "responses": twin["responses"], "names": twin["names"],
                "clean": twin["clean"], "source": "twin"}
    fmt = str(d.get("format", "table"))
    if fmt == "table":
        table, names = R.load_table(d.responses, str(d.get("key", "responses")))
    elif fmt == "nsd":
        table, names = R.load_nsd(d.responses, d.get("rois"))
    elif fmt == "things_eeg":
        table, names = R.load_things_eeg(d.responses, d.get("channels"), tuple(d.get("window", (0.1, 0.2))))
    else:
        raise StimoptError(f"data.format must be table, nsd or things_eeg, got '{fmt}'")
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


# -- the ensemble members -------------------------------------------------------------------------
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


def _standardize(y: np.ndarray, train: np.ndarray):
    mean = np.nanmean(y[train], axis=0)
    std = np.nanstd(y[train], axis=0)
    std = np.where(np.isfinite(std) & (std > 0), std, 1.0)
    mean = np.where(np.isfinite(mean), mean, 0.0)
    return (y - mean) / std, mean, std


def _twin_report(report: dict, data: dict, pred_test: np.ndarray, test: np.ndarray) -> None:
    if data.get("clean") is not None:
        r2c = r2_score(pred_test, data["clean"][test])
        report["r2_teacher"] = r2c
        report["r2_teacher_median"] = float(np.nanmedian(r2c))


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
    _twin_report(report, data, pred_test, test)
    report["summary"] = f"v4_ensemble ({len(members)} members): median held-out R^2 {report['r2_test_median']:.3f}"
    return report


# -- ridge encoder -----------------------------------------------------------------------------------
def _pool(feats: torch.Tensor, pool: int) -> torch.Tensor:
    if pool and feats.shape[-1] > pool:
        feats = F.adaptive_avg_pool2d(feats, pool)
    return feats.flatten(1)


def _ridge_solutions(x: np.ndarray, y: np.ndarray, alphas: np.ndarray):
    """SVD of the (centred) design; returns a function alpha_per_output -> (W [d,K], b [K])."""
    xm, ym = x.mean(0), y.mean(0)
    u, s, vt = np.linalg.svd(x - xm, full_matrices=False)
    uty = u.T @ (y - ym)  # [r, K]

    def weights(alpha_k: np.ndarray):
        shrink = s[:, None] / (s[:, None] ** 2 + alpha_k[None, :])  # [r, K]
        w = vt.T @ (shrink * uty)
        return w, ym - xm @ w

    return weights


def ridge_cv(x: np.ndarray, y: np.ndarray, alphas, folds: int, seed: int):
    """Ridge with one alpha per output chosen by k-fold CV (missing targets imputed by the column mean)."""
    alphas = np.asarray(alphas, np.float64)
    y = np.where(np.isfinite(y), y, np.nanmean(y, axis=0))
    n, k = y.shape
    fold = np.random.default_rng(seed).permutation(n) % max(2, int(folds))
    err = np.zeros((len(alphas), k))
    for f in range(max(2, int(folds))):
        tr, va = fold != f, fold == f
        solve = _ridge_solutions(x[tr], y[tr], alphas)
        for a, alpha in enumerate(alphas):
            w, b = solve(np.full(k, alpha))
            err[a] += ((x[va] @ w + b - y[va]) ** 2).sum(0)
    best = alphas[err.argmin(0)]
    w, b = _ridge_solutions(x, y, alphas)(best)
    return w, b, best


def fit_encoder(cfg, out_dir: Path) -> dict:
    """Ridge encoder per ROI/channel (see module doc). Writes ``model.pt``; returns the report."""
    from omegaconf import OmegaConf

    m, d = cfg.model, cfg.data
    t0 = time.perf_counter()
    device = resolve_device(cfg.device)
    backbone = backbone_from_config(m, device, int(cfg.seed))
    data = dataset_from_config(cfg, backbone)
    x = _pool(backbone.features(data["images"]), int(m.get("pool", 0))).double().numpy()
    y = np.asarray(data["responses"], np.float64)
    train, val, test = split_indices(len(y), float(d.val_fraction), float(d.test_fraction), int(cfg.seed))
    fit_idx = np.concatenate([train, val])  # CV chooses alpha inside train+val; test stays untouched
    x_mean, x_std = x[fit_idx].mean(0), x[fit_idx].std(0) + 1e-8
    xs = (x - x_mean) / x_std
    w, b, alphas = ridge_cv(xs[fit_idx], y[fit_idx], list(m.alphas), int(m.folds), int(cfg.seed))
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
    _twin_report(report, data, pred, test)
    report["summary"] = f"encoder ({x.shape[1]} features): median held-out R^2 {report['r2_test_median']:.3f}"
    return report


# -- targets ------------------------------------------------------------------------------------------
# ``target.checkpoint=demo``: a twin fitted once, on first use, to synthetic digital-twin neurons
# (stimopt-fit's default data) at the scale of benchmarks/fit_twin.py, and cached. A demo, not a V4 recording.
DEMO_FITS = {
    "v4_ensemble": ["model=v4_ensemble", "model.backbone=efficientnet_lite0", "model.layer=blocks.4", "model.members=3",
                    "model.width=32", "model.epochs=30"],
    "encoder": ["model=encoder"],
}
DEMO_DATA = ["model.input_size=96", "data.size=96", "data.twin.n_images=1200", "data.twin.n_neurons=8", "seed=0"]


def demo_checkpoint(kind: str) -> Path:
    """The cached demo twin of ``kind`` (fitted in a separate stimopt-fit process when missing)."""
    import os
    import shutil
    import subprocess

    from stimopt.cache import cache_dir

    out = cache_dir() / "fits" / f"{kind}-demo-v1"
    if (out / "model.pt").is_file():
        return out / "model.pt"
    print(f"stimopt: fitting the demo {kind} to synthetic digital-twin neurons (once, a few minutes) into {out}",
          file=sys.stderr, flush=True)
    tmp = out.with_name(f"{out.name}.tmp-{os.getpid()}")
    cmd = [sys.executable, "-c", "from stimopt.fit import main; main()", *DEMO_FITS[kind], *DEMO_DATA, f"out={tmp}"]
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


def load_checkpoint(path, kind: str) -> dict:
    if str(path) == "demo":
        path = demo_checkpoint(kind)
    if path is None or not Path(str(path)).is_file():
        raise StimoptError(f"target.checkpoint={path} is not a file; fit one with: stimopt-fit model={kind} ... "
                          "(it writes model.pt), or use target.checkpoint=demo")
    ckpt = torch.load(str(path), map_location="cpu", weights_only=False)
    if not isinstance(ckpt, dict) or ckpt.get("kind") != kind:
        found = ckpt.get("kind") if isinstance(ckpt, dict) else type(ckpt).__name__
        raise StimoptError(f"{path} is not a {kind} checkpoint (it holds '{found}'); use target={found} or another file")
    return ckpt


def select_outputs(names: list[str], which, what: str) -> tuple[list[int], bool]:
    """Indices for ``which`` (None = all, an index, a name, or a list) and whether it was a list."""
    if which is None:
        return list(range(len(names))), True
    many = isinstance(which, (list, tuple)) or (hasattr(which, "__iter__") and not isinstance(which, (str, bytes)))
    items = list(which) if many else [which]
    out = []
    for it in items:
        if isinstance(it, str) and it in names:
            out.append(names.index(it))
        elif isinstance(it, (int, np.integer)) or (isinstance(it, str) and it.lstrip("-").isdigit()):
            i = int(it)
            if not 0 <= i < len(names):
                raise StimoptError(f"{what} {i} is out of range: the model has {len(names)} ({0}..{len(names) - 1})")
            out.append(i)
        else:
            raise StimoptError(f"unknown {what} '{it}'; the model has: {', '.join(names)}")
    return out, many


class _FittedTarget(stimopt.Target):
    kind = "?"

    def _setup(self, checkpoint, which, what: str, device):
        path = demo_checkpoint(self.kind) if str(checkpoint) == "demo" else checkpoint
        self.ckpt = load_checkpoint(path, self.kind)
        self.checkpoint = str(path)
        self.device = resolve_device(device)
        spec = self.ckpt["backbone"]
        self.backbone = Backbone(spec["model"], spec["layer"], spec["weights"], spec["input_size"], self.device, spec["seed"])
        self.names = list(self.ckpt["names"])
        self.index, self.many = select_outputs(self.names, which, what)
        self.n_outputs = len(self.index)

    def _shape(self, r: torch.Tensor) -> torch.Tensor:
        r = r[:, self.index].float()
        return r if self.many else r[:, 0]

    def describe(self) -> str:
        return f"{self.kind}:{Path(self.checkpoint).name}[{','.join(self.names[i] for i in self.index)}]"


class V4EnsembleTarget(_FittedTarget):
    """Predicted response(s) of fitted V4 model neuron(s): the ensemble mean."""

    kind = "v4_ensemble"

    def __init__(self, checkpoint=None, neuron=0, device="auto"):
        self._setup(checkpoint, neuron, "neuron", device)
        a = self.ckpt["member_args"]
        members = [EnsembleMember(**a) for _ in range(int(self.ckpt["n_members"]))]
        self.model = EnsembleModel(members, np.zeros(a["n_out"]), np.ones(a["n_out"]))
        self.model.load_state_dict(self.ckpt["state"])
        self.model.eval().to(self.device)

    def predict_all(self, images) -> torch.Tensor:
        return self.model(self.backbone(images))

    def evaluate(self, images):
        return self._shape(self.predict_all(images))


class EncoderTarget(_FittedTarget):
    """Predicted response(s) of fMRI ROI(s) / EEG channel(s) from a ridge encoder."""

    kind = "encoder"

    def __init__(self, checkpoint=None, roi=None, device="auto"):
        self._setup(checkpoint, roi, "roi/channel", device)
        c = self.ckpt
        self.pool = int(c["pool"])
        self.x_mean, self.x_std = c["x_mean"].to(self.device), c["x_std"].to(self.device)
        self.w, self.b = c["w"].to(self.device), c["b"].to(self.device)

    def predict_all(self, images) -> torch.Tensor:
        x = _pool(self.backbone(images), self.pool)
        return ((x - self.x_mean) / self.x_std) @ self.w + self.b

    def evaluate(self, images):
        return self._shape(self.predict_all(images))


# -- matching model neurons to recorded neurons (paper A.1.1) ----------------------------------------
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
    kind = torch.load(str(path), map_location="cpu", weights_only=False).get("kind") if path and Path(str(path)).is_file() else "v4_ensemble"
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


@stimopt.hookimpl
def register_targets(register):
    register("v4_ensemble", V4EnsembleTarget)
    register("encoder", EncoderTarget)


@stimopt.hookimpl
def register_config_dirs(register):
    register(str(Path(__file__).parent / "conf"))
