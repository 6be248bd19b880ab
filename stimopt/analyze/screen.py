"""Two-tail screening (seed paper, A.1.1): score a whole bank and keep, for many neurons at once,
the top and bottom K images.

Chunked and resumable: the bank (or a seeded random subset, ``screen.n``) is scored ``chunk``
images at a time (batched within a chunk); each finished chunk is saved under
``<file>.partial/`` and a rerun with the same target, units and images skips it. The result is
one reusable file the other analyses read (``quantiles.screen=``, ``statistics.screen=``,
``neurons.screen=``), ``screen.npz`` with arrays

    indices [N]            bank indices screened, ascending
    units [U]              the neurons (unit names, str)
    responses [N, U]       every response (float32)
    top, top_responses [U, K]         the K highest-responding images per neuron, best first
    bottom, bottom_responses [U, K]   the K lowest-responding images per neuron, lowest first

and ``screen.json`` (JSON keys: ``target``, ``bank``, ``bank_path``, ``n_images``, ``k``,
``units``: one entry per neuron with ``unit``, ``top``/``bottom`` (bank indices), ``max``, ``min``,
``median``, ``file``: the .npz).
"""
from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np

from stimopt.analyze.common import Outputs, UnitReader, check_finite, sample_indices, score_images
from stimopt.errors import StimoptError


def top_bottom(resp: np.ndarray, indices: np.ndarray, k: int):
    """(top [U, K] best first, top_r, bottom [U, K] lowest first, bottom_r) of responses [N, U]."""
    order = np.argsort(resp, axis=0, kind="stable")  # ascending per neuron
    bottom = order[:k].T
    top = order[::-1][:k].T
    take = np.take_along_axis
    return indices[top], take(resp.T, top, 1), indices[bottom], take(resp.T, bottom, 1)


def screen_bank(reader, source, indices, k: int, chunk: int, partial: Path, key: str, batch_size: int, repeats: int = 1,
                log=print) -> np.ndarray:
    """Responses [N, U] of every image ``indices``; finished chunks are kept in ``partial`` (resume)."""
    from tqdm import tqdm

    partial.mkdir(parents=True, exist_ok=True)
    stamp = partial / "key.json"
    if stamp.exists() and json.loads(stamp.read_text()).get("key") != key:
        raise StimoptError(f"{partial} holds a screen of another target, units or image set; remove it or set screen.file=")
    stamp.write_text(json.dumps({"key": key}))
    starts = list(range(0, len(indices), chunk))
    done = sum((partial / f"chunk_{s:09d}.npy").exists() for s in starts)
    if done:
        log(f"screen: resuming, {done} of {len(starts)} chunks already scored in {partial}")
    parts = []
    for s in tqdm(starts, desc="screen (chunks)", unit="chunk", dynamic_ncols=True, leave=False):
        f = partial / f"chunk_{s:09d}.npy"
        if f.exists():
            part = np.load(f)
        else:
            part = score_images(reader, source, indices[s:s + chunk], batch_size, desc=f"chunk {s // chunk + 1}/{len(starts)}",
                                repeats=repeats).astype(np.float32)
            np.save(f.with_suffix(".tmp.npy"), part)
            f.with_suffix(".tmp.npy").replace(f)
        parts.append(part)
    return np.concatenate(parts)


def save_screen(path: Path, meta: dict, arrays: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, **arrays)
    tmp.replace(path)
    path.with_suffix(".json").write_text(json.dumps(meta, indent=1) + "\n")


def load_screen(path, k: int | None = None, option: str = "k") -> dict:
    """A screen file's arrays (see the module docstring) plus ``meta`` (its JSON), or one line saying why not.

    ``k``: the top/bottom set size an analysis needs (its option named ``option``), refused in one
    line when the screen kept fewer images per neuron.
    """
    path = Path(str(path))
    if path.is_dir():
        path = path / "screen.npz"
    if not path.is_file():
        raise StimoptError(f"screen file {path} does not exist; make it with `stimopt-analyze screen out=DIR`")
    try:
        with np.load(path, allow_pickle=False) as z:
            data = {k: z[k] for k in z.files}
    except Exception as exc:
        raise StimoptError(f"{path} is not a screen file ({str(exc).splitlines()[0][:100]})") from None
    need = {"indices", "units", "responses", "top", "bottom", "top_responses", "bottom_responses"}
    if not need <= set(data):
        raise StimoptError(f"{path} is not a screen file (missing {', '.join(sorted(need - set(data)))})")
    side = path.with_suffix(".json")
    data["meta"] = json.loads(side.read_text()) if side.exists() else {}
    data["units"] = [str(u) for u in data["units"]]
    data["path"] = str(path)
    if k is not None and k > data["top"].shape[1]:
        raise StimoptError(f"{option}={k} but the screen kept only {data['top'].shape[1]} images per neuron")
    return data


def run(ctx) -> Outputs:
    opt = ctx.options
    k, chunk = int(opt.get("k", 100)), int(opt.get("chunk", 1000))
    if k < 1 or chunk < 1:
        raise StimoptError(f"screen.k and screen.chunk must be at least 1, got {k} and {chunk}")
    indices = sample_indices(ctx.source.size, opt.get("n"), ctx.seed, "images to screen")
    if len(indices) < 2 * k:
        raise StimoptError(f"screen.k={k} needs at least {2 * k} images (top and bottom {k}); the screen has {len(indices)}")
    target = ctx.build_target()
    reader = UnitReader(target, ctx.units)
    file = Path(str(opt["file"])) if opt.get("file") else ctx.out / "screen.npz"
    bank_path = str(getattr(ctx.source, "path", "demo"))
    key = hashlib.sha256(json.dumps([target.describe(), reader.names, bank_path, indices.tolist(), chunk, ctx.repeats]).encode()).hexdigest()
    partial = file.with_name(file.stem + ".partial")
    resp = screen_bank(reader, ctx.source, indices, k, chunk, partial, key, ctx.batch_size, ctx.repeats)
    check_finite(resp, "the screened responses")
    top, top_r, bottom, bottom_r = top_bottom(resp, indices, k)
    units = [{"unit": u, "top": top[j], "bottom": bottom[j], "max": float(top_r[j, 0]), "min": float(bottom_r[j, 0]),
              "median": float(np.median(resp[:, j]))} for j, u in enumerate(reader.names)]
    meta = {"target": target.describe(), "bank": ctx.source.describe(), "bank_path": bank_path, "n_images": len(indices), "k": k,
            "units_option": ctx.units, "units": units, "file": file.name}
    from stimopt.analyze.common import jsonable

    save_screen(file, jsonable(meta), {"indices": indices, "units": np.array(reader.names), "responses": resp.astype(np.float32),
                                       "top": top, "top_responses": top_r, "bottom": bottom, "bottom_responses": bottom_r})
    shutil.rmtree(partial, ignore_errors=True)
    rows = [{"unit": u["unit"], "max": u["max"], "min": u["min"], "median": u["median"], "top1": int(u["top"][0]),
             "bottom1": int(u["bottom"][0])} for u in units]
    line = f"{target.describe()}: {len(indices):,} images of {ctx.source.describe()} x {len(units)} neuron(s), top/bottom {k} kept in {file}"
    return Outputs({**meta, "file": str(file)}, rows, lambda p: _figure(p, ctx.source, units), line)


def _figure(path, source, units, n_show: int = 5, max_rows: int = 8) -> None:
    import matplotlib.pyplot as plt

    shown = units[:max_rows]
    fig, axes = plt.subplots(len(shown), 2 * n_show, figsize=(2 * n_show * 0.9, len(shown) * 0.95 + 0.4), squeeze=False)
    for row, u in enumerate(shown):
        idx = list(u["top"][:n_show]) + list(u["bottom"][:n_show])
        imgs = source.images(np.array(idx)).permute(0, 2, 3, 1).numpy()
        for col, img in enumerate(imgs):
            ax = axes[row, col]
            ax.imshow(img.clip(0, 1))
            ax.set_xticks([])
            ax.set_yticks([])
            if col == 0:
                ax.set_ylabel(f"unit {u['unit']}", fontsize=7)
            if row == 0:
                ax.set_title("preferred" if col == 0 else ("anti-preferred" if col == n_show else ""), fontsize=8, loc="left")
    fig.tight_layout(pad=0.2)
    fig.savefig(path, dpi=80)
    plt.close(fig)
