"""What every analysis shares: the image source (a bank), the responses of one or many units
(batched, with a progress bar), and the four outputs (``NAME.json``, ``NAME.csv``, ``NAME.png``,
a line in ``report.md``)."""
from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

from stimopt.errors import StimoptError


class ArraySource:
    """Images held in memory (tests, given images): float [N, 3, H, W] in [0, 1]."""

    def __init__(self, images, names=None, what: str = "given images"):
        arr = torch.as_tensor(np.asarray(images, np.float32))
        if arr.ndim != 4 or arr.shape[1] != 3:
            raise StimoptError(f"images must be an array [N, 3, H, W] in [0, 1], got shape {tuple(arr.shape)}")
        self.array, self.size, self.image_size, self.what = arr, len(arr), int(arr.shape[-1]), what
        self._names = list(names) if names is not None else [f"image {i}" for i in range(self.size)]

    def images(self, idx, size: int | None = None) -> torch.Tensor:
        x = self.array[torch.as_tensor(np.asarray(idx, np.int64))]
        if size and size != x.shape[-1]:
            x = torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        return x

    def names(self, idx) -> list[str]:
        return [self._names[int(i)] for i in np.asarray(idx).reshape(-1)]

    def describe(self) -> str:
        return f"{self.size:,} {self.what}"


class DemoSource:
    """The embedded demo bank's images, rendered from their numbers (:mod:`stimopt.bank.demo`): the
    same images as the built bank, usable before it is built (no features or graph are needed here)."""

    def __init__(self):
        from stimopt.bank.demo import DEMO_SIZE, IMAGE_SIZE

        self.size, self.image_size = DEMO_SIZE, IMAGE_SIZE

    def images(self, idx, size: int | None = None) -> torch.Tensor:
        from stimopt.bank.demo import render

        return render(np.asarray(idx, np.int64), int(size or self.image_size))

    def names(self, idx) -> list[str]:
        from stimopt.bank.demo import category

        return [f"demo:{int(i)} ({c})" for i, c in zip(np.asarray(idx).reshape(-1), category(idx))]

    def describe(self) -> str:
        return f"the demo bank ({self.size:,} images)"


def open_source(bank):
    """``bank=demo`` (the embedded demo bank: the built one when ``stimopt-bank demo`` has made it, else
    rendered from the image numbers) or a bank folder made by ``stimopt-bank build``."""
    from stimopt.bank import demo_bank_path, load_bank

    if bank in (None, "", "demo"):
        try:  # built: the same images, plus its backbone features (statistics' embedding classifier)
            return load_bank(demo_bank_path(build=False))
        except StimoptError:
            return DemoSource()

    if not Path(str(bank)).is_dir():
        raise StimoptError(f"bank={bank} is not a bank folder (made by `stimopt-bank build`); use bank=demo or a folder")
    return load_bank(str(bank))


def sample_indices(n_bank: int, n, seed: int, what: str = "images") -> np.ndarray:
    """``n`` distinct bank indices (sorted), seeded; ``n`` null = the whole bank."""
    if n is None or int(n) >= n_bank:
        if n is not None and int(n) > n_bank:
            raise StimoptError(f"the bank has {n_bank:,} images, fewer than the {int(n):,} {what} asked for")
        return np.arange(n_bank)
    if int(n) < 1:
        raise StimoptError(f"the number of {what} must be at least 1, got {n}")
    return np.sort(np.random.default_rng(seed).choice(n_bank, size=int(n), replace=False))


# ----------------------------------------------------------------------------------------- responses
def _numpy(r) -> np.ndarray:
    return r.detach().double().cpu().numpy() if isinstance(r, torch.Tensor) else np.asarray(r, np.float64)


class UnitReader:
    """Responses ``[B, U]`` of the chosen units of a target.

    ``units`` null: every output of the target (one for a single unit, ``n_outputs`` for a
    multi-output target such as v4_ensemble). ``units`` a list (or ``all``): outputs of a
    multi-output target, or, for a single-unit target with a ``unit`` option over a channel map
    (cnn_unit), channels of its layer read from ONE forward pass (the target's own feature map at
    its own position / spatial mean; checked against the target's ``evaluate`` on the first batch).
    """

    def __init__(self, target, units=None):
        self.target, self.units, self.fast = target, None, False
        n_out = int(getattr(target, "n_outputs", 1) or 1)
        if units is None:
            self.names = [str(i) for i in range(n_out)] if n_out > 1 else [str(getattr(target, "unit", 0))]
            return
        channels = self._channels() if n_out == 1 else n_out
        if channels is None:
            noisy = " (with noise=, read one unit at a time: target.unit=N)" if hasattr(target, "inner") else ""
            raise StimoptError("units=[...] needs a multi-output target or a channel-map target with a 'unit' option (cnn_unit)"
                               + noisy)
        if units == "all":
            units = list(range(channels))
        units = [int(u) for u in (units if isinstance(units, (list, tuple)) else [units])]
        bad = [u for u in units if not 0 <= u < channels]
        if bad or not units:
            raise StimoptError(f"units {bad or '[]'} out of range: the target has {channels} units (0..{channels - 1})")
        self.units, self.names, self.fast = units, [str(u) for u in units], n_out == 1
        self._checked = False

    def _channels(self):
        t = self.target
        if hasattr(t, "unit") and hasattr(t, "_features") and hasattr(t, "feature_shape"):
            return int(t.feature_shape[0])
        return None

    def _from_features(self, images) -> torch.Tensor:
        t = self.target
        feats = t._features(images)
        if feats.ndim == 2:
            return feats[:, self.units]
        if getattr(t, "spatial", "center") == "mean":
            return feats[:, self.units].mean(dim=(-2, -1))
        y, x = t.position
        return feats[:, self.units, y, x]

    def __call__(self, images) -> np.ndarray:
        with torch.inference_mode():
            if self.units is None:
                r = _numpy(self.target.evaluate(images))
                return r.reshape(len(images), -1)
            if not self.fast:
                return _numpy(self.target.evaluate(images)).reshape(len(images), -1)[:, self.units]
            r = _numpy(self._from_features(images))
            if not self._checked:  # the channel read must equal the target's own response for its unit
                self._checked = True
                own = _numpy(self.target.evaluate(images)).reshape(-1)
                mine = _numpy(self._features_unit(images, int(self.target.unit)))
                if not np.allclose(own, mine, rtol=1e-4, atol=1e-5):
                    raise StimoptError("units=[...]: this target's channels cannot be read from its feature map; "
                                       "analyse one unit at a time (target.unit=N)")
            return r

    def _features_unit(self, images, unit: int):
        units, self.units = self.units, [unit]
        try:
            return self._from_features(images)[:, 0]
        finally:
            self.units = units


def score_images(reader, source, indices, batch_size: int = 64, desc: str = "responses", repeats: int = 1,
                 size: int | None = None) -> np.ndarray:
    """Responses [len(indices), U] of ``reader`` to bank images ``indices`` (batched, tqdm bar with
    ETA; ``repeats`` presentations averaged, for noisy targets). NaN/inf responses are one line."""
    from tqdm import tqdm

    indices = np.asarray(indices, np.int64)
    out = []
    with tqdm(total=len(indices), desc=desc, unit="img", dynamic_ncols=True, mininterval=1.0, leave=False) as bar:
        for s in range(0, len(indices), int(batch_size)):
            imgs = source.images(indices[s:s + int(batch_size)], size)
            r = np.mean([reader(imgs) for _ in range(max(1, int(repeats)))], axis=0)
            out.append(r)
            bar.update(len(imgs))
    resp = np.concatenate(out) if out else np.zeros((0, len(reader.names)))
    check_finite(resp, "the target's responses")
    return resp


def check_finite(resp: np.ndarray, what: str) -> None:
    bad = ~np.isfinite(resp)
    if bad.any():
        rows = np.flatnonzero(bad.any(axis=1) if bad.ndim > 1 else bad)
        raise StimoptError(f"{what} hold {int(bad.sum())} NaN/inf value(s) (first at image {int(rows[0])}); "
                           "fix the target or the response table")


# ------------------------------------------------------------------------------------------- outputs
@dataclass
class Outputs:
    """What an analysis returns: the JSON payload, the CSV rows, a figure function, a report line."""

    payload: dict
    rows: list[dict]
    figure: object  # callable(path) -> None
    line: str
    extra: dict = field(default_factory=dict)


def jsonable(obj):
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return jsonable(obj.tolist())
    if isinstance(obj, (float, np.floating)):
        return None if not math.isfinite(float(obj)) else float(obj)
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.bool_,)):
        return bool(obj)
    if isinstance(obj, Path):
        return str(obj)
    return obj


def write_outputs(out_dir: str | Path, name: str, result: Outputs) -> dict:
    """``NAME.json``, ``NAME.csv``, ``NAME.png`` in ``out_dir``, and one line appended to ``report.md``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = {"json": out / f"{name}.json", "csv": out / f"{name}.csv", "png": out / f"{name}.png"}
    payload = {"analysis": name, **result.payload, "files": {k: p.name for k, p in files.items()}}
    files["json"].write_text(json.dumps(jsonable(payload), indent=1) + "\n")
    fields = list(dict.fromkeys(k for row in result.rows for k in row))
    with open(files["csv"], "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        w.writerows(jsonable(result.rows))
    import matplotlib

    matplotlib.use("Agg")
    result.figure(files["png"])
    report = out / "report.md"
    if not report.exists():
        report.write_text("# stimopt-analyze report\n\n")
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    with open(report, "a") as f:
        f.write(f"- **{name}** ({stamp}): {result.line} [{files['json'].name}, {files['csv'].name}, {files['png'].name}]\n")
    return {k: str(p) for k, p in files.items()}
