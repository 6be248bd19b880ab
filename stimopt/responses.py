"""Recorded responses and the images that evoked them: loaders, and synthetic "digital twin" data.

Images (:func:`load_images`): a folder of image files or a .zip of them (sorted by name), or an
array file (.npy, or .npz with an ``images`` array) of shape [N,H,W,3] or [N,3,H,W], uint8 or
float in [0, 1]. Returned as float32 [N,3,size,size] in [0, 1].

Response tables (:func:`load_table`), always images x outputs after loading:

- ``.npz`` / ``.h5``: array ``responses`` (or ``key``) of shape [N, K] (repeat-averaged),
  [N, R, K] (R repeats per image; NaN = missing trial; averaged with nanmean), or trial-level
  [T, K] together with ``image_index`` [T] (which image each trial showed; averaged per image).
  Optional ``names`` [K] (strings) names the outputs.
- ``.csv``: a header row; column ``image`` (image index, 0-based) then one column per output.
  Several rows with the same ``image`` are trials and are averaged.

NSD-style fMRI (:func:`load_nsd`): ``betas`` [T, V] (single-trial voxel betas), ``image_index``
[T], and one boolean mask ``roi_<NAME>`` [V] per region of interest; the response of a ROI to an
image is its voxels' mean beta, averaged over the image's repeats.

THINGS-EEG-style (:func:`load_things_eeg`): ``eeg`` [N, R, C, T] (images, repeats, channels,
time points), ``times`` [T] in seconds and ``ch_names`` [C]; the response of a channel is its
mean over ``window`` and repeats (an ERP amplitude).

Digital twin (:func:`make_twin`, paper A.1.3): responses of a known teacher to natural crops,
plus Gaussian noise of ``noise`` x the response SD; fitting is tested on it end to end.
"""
from __future__ import annotations

import csv
import io
import zipfile
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from stimopt.errors import StimoptError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"}


# -- images ------------------------------------------------------------------------------------
def _as_images(arr: np.ndarray, size: int | None) -> torch.Tensor:
    arr = np.asarray(arr)
    if arr.ndim == 3:  # grey [N,H,W]
        arr = np.repeat(arr[..., None], 3, axis=-1)
    if arr.ndim != 4 or 3 not in (arr.shape[1], arr.shape[-1]):
        raise StimoptError(f"image array has shape {arr.shape}; expected [N,H,W,3] or [N,3,H,W]")
    if arr.shape[0] == 0:
        raise StimoptError(f"the image array holds 0 images (shape {arr.shape}); give at least one image per response row")
    if not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool):
        raise StimoptError(f"the image array has dtype {arr.dtype}; give uint8 (0..255) or float (0..1) pixels")
    x = torch.from_numpy(arr.astype(np.float32) / (255.0 if arr.dtype == np.uint8 else 1.0))
    if x.shape[1] != 3:
        x = x.permute(0, 3, 1, 2)
    x = x.contiguous().clamp(0, 1)
    if size is not None and (x.shape[-1] != size or x.shape[-2] != size):
        x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return x


def _decode(data: bytes, size: int | None) -> np.ndarray:
    from PIL import Image

    img = Image.open(io.BytesIO(data)).convert("RGB")
    if size is not None:
        img = img.resize((size, size), Image.BILINEAR)
    return np.asarray(img)


def load_images(path: str | Path, size: int | None = None) -> torch.Tensor:
    """Images as float32 [N,3,size,size] in [0,1] from a folder, a .zip or a .npy/.npz array."""
    path = Path(path)
    if not path.exists():
        raise StimoptError(f"images '{path}' do not exist; give a folder, a .zip or a .npy/.npz array")
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise StimoptError(f"no image files ({', '.join(sorted(IMAGE_SUFFIXES))}) in folder {path}")
        return _as_images(np.stack([_decode(p.read_bytes(), size) for p in files]), size)
    if path.suffix == ".zip":
        with zipfile.ZipFile(path) as zf:
            names = sorted(n for n in zf.namelist() if Path(n).suffix.lower() in IMAGE_SUFFIXES)
            if not names:
                raise StimoptError(f"no image files in {path}")
            return _as_images(np.stack([_decode(zf.read(n), size) for n in names]), size)
    try:
        if path.suffix == ".npy":
            return _as_images(np.load(path, allow_pickle=False), size)
        if path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as z:
                if "images" not in z:
                    raise StimoptError(f"{path} has no 'images' array (it has: {', '.join(z.files)})")
                return _as_images(z["images"], size)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:  # truncated, not an array file, pickled objects
        raise StimoptError(f"images '{path}' cannot be read as a {path.suffix} array ({_first_line(exc)}); give a NumPy "
                           "array file of [N,H,W,3] or [N,3,H,W] pixels") from None
    raise StimoptError(f"cannot read images from '{path}': give a folder, a .zip, a .npy or a .npz")


# -- response tables ----------------------------------------------------------------------------
def _first_line(exc: Exception) -> str:
    text = (str(exc).splitlines() or [type(exc).__name__])[0]
    return "not a NumPy array file" if "pickled" in text else text[:160]  # numpy's guess for foreign bytes


def _read_arrays(path: Path) -> dict:
    if not path.exists():
        raise StimoptError(f"response file '{path}' does not exist")
    if path.suffix not in (".npz", ".h5", ".hdf5"):
        raise StimoptError(f"cannot read responses from '{path}': give a .npz, .h5 or .csv file")
    try:
        if path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as z:
                return {k: z[k] for k in z.files}
        import h5py

        with h5py.File(path, "r") as f:
            return {k: f[k][()] for k in f.keys() if isinstance(f[k], h5py.Dataset)}
    except StimoptError:
        raise
    except Exception as exc:  # a truncated or foreign file: zipfile, h5py and numpy each raise their own kind
        raise StimoptError(f"response file '{path}' cannot be read ({_first_line(exc)}); give an intact {path.suffix} file") from None


def check_table(table: np.ndarray, names: list[str], path) -> np.ndarray:
    """Refuse a response table that cannot be fitted: no rows, infinities, or an output never recorded."""
    table = np.asarray(table, dtype=np.float64)
    if table.ndim != 2 or table.shape[0] == 0 or table.shape[1] == 0:
        raise StimoptError(f"{path}: the response table is empty (shape {table.shape}); it needs one row per image and one "
                           "column per neuron/ROI/channel")
    if np.isinf(table).any():
        raise StimoptError(f"{path}: the responses hold infinite values; record missing trials as NaN, not inf")
    recorded = np.isfinite(table)
    if not recorded.any():
        raise StimoptError(f"{path}: every response is NaN (nothing was recorded); check data.key / the file's contents")
    empty = [names[i] if i < len(names) else str(i) for i in np.flatnonzero(~recorded.any(axis=0))]
    if empty:
        raise StimoptError(f"{path}: output(s) {', '.join(empty[:10])} have no recorded response (all NaN); drop them from the table")
    return table


def average_trials(values: np.ndarray, image_index: np.ndarray | None = None) -> np.ndarray:
    """Repeat-average: [N,R,K] -> [N,K] (nanmean over R), or trial-level [T,K] + image_index [T] -> [N,K]."""
    values = np.asarray(values, dtype=np.float64)
    if image_index is None:
        if values.ndim == 3:
            with np.errstate(invalid="ignore"), __import__("warnings").catch_warnings():
                __import__("warnings").simplefilter("ignore", RuntimeWarning)
                return np.nanmean(values, axis=1)
        if values.ndim == 1:
            return values[:, None]
        return values
    idx = np.asarray(image_index).astype(np.int64)
    if values.ndim == 1:
        values = values[:, None]
    if idx.shape[0] != values.shape[0]:
        raise StimoptError(f"image_index has {idx.shape[0]} trials but the responses have {values.shape[0]} rows")
    if idx.min() < 0:
        raise StimoptError("image_index must be 0-based image numbers (found a negative one)")
    n = int(idx.max()) + 1
    ok = np.isfinite(values)
    sums = np.zeros((n, values.shape[1]))
    counts = np.zeros((n, values.shape[1]))
    np.add.at(sums, idx, np.where(ok, values, 0.0))
    np.add.at(counts, idx, ok)
    with np.errstate(invalid="ignore", divide="ignore"):
        return sums / counts


def _names(arrays: dict, k: int, prefix: str) -> list[str]:
    if "names" in arrays:
        names = [n.decode() if isinstance(n, bytes) else str(n) for n in np.asarray(arrays["names"]).ravel()]
        if len(names) == k:
            return names
    return [f"{prefix}{i}" for i in range(k)]


def load_table(path: str | Path, key: str = "responses") -> tuple[np.ndarray, list[str]]:
    """(responses [N, K] float64 with NaN for never-recorded, output names)."""
    path = Path(path)
    if path.suffix == ".csv":
        if not path.exists():
            raise StimoptError(f"response file '{path}' does not exist")
        with open(path, newline="") as f:
            rows = list(csv.reader(f))
        if len(rows) < 2 or rows[0][0].strip() != "image":
            raise StimoptError(f"{path}: a CSV response table needs a header row starting with 'image', then one row per trial")
        try:
            idx = np.array([int(r[0]) for r in rows[1:]])
            vals = np.array([[float(v) if v.strip() else np.nan for v in r[1:]] for r in rows[1:]])
        except ValueError as exc:
            raise StimoptError(f"{path}: not a numeric response table ({exc})") from None
        names = [c.strip() for c in rows[0][1:]]
        return check_table(average_trials(vals, idx), names, path), names
    arrays = _read_arrays(path)
    if key not in arrays:
        raise StimoptError(f"{path} has no '{key}' array (it has: {', '.join(arrays)}); set data.key")
    if not np.issubdtype(np.asarray(arrays[key]).dtype, np.number):
        raise StimoptError(f"{path}: '{key}' has dtype {np.asarray(arrays[key]).dtype}, not numbers")
    if np.asarray(arrays[key]).size == 0:
        raise StimoptError(f"{path}: '{key}' is empty (shape {np.asarray(arrays[key]).shape}); it needs one row per image")
    table = average_trials(arrays[key], arrays.get("image_index"))
    names = _names(arrays, table.shape[1], "n")
    return check_table(table, names, path), names


def load_nsd(path: str | Path, rois=None) -> tuple[np.ndarray, list[str]]:
    """NSD-style single-trial betas -> [N images, n ROIs] (ROI mean over voxels, repeat-averaged)."""
    arrays = _read_arrays(Path(path))
    for need in ("betas", "image_index"):
        if need not in arrays:
            raise StimoptError(f"{path}: NSD-style data needs '{need}' (see stimopt.responses); it has {', '.join(arrays)}")
    masks = {k[4:]: np.asarray(v, bool) for k, v in arrays.items() if k.startswith("roi_")}
    if not masks:
        raise StimoptError(f"{path}: no ROI masks; add boolean arrays named roi_<NAME> over the voxels")
    names = list(rois) if rois else sorted(masks)
    missing = [r for r in names if r not in masks]
    if missing:
        raise StimoptError(f"ROI(s) {', '.join(missing)} not in {path}; it has: {', '.join(sorted(masks))}")
    betas = np.asarray(arrays["betas"], dtype=np.float64)
    m = np.stack([masks[r] for r in names], axis=1).astype(np.float64)  # [V, n_roi]
    per_trial = (np.nan_to_num(betas) @ m) / m.sum(axis=0)  # ROI means, one matmul
    return check_table(average_trials(per_trial, arrays["image_index"]), names, path), names


def load_things_eeg(path: str | Path, channels=None, window=(0.1, 0.2)) -> tuple[np.ndarray, list[str]]:
    """THINGS-EEG-style epochs [N,R,C,T] -> [N images, channels] (mean over the window and repeats)."""
    arrays = _read_arrays(Path(path))
    for need in ("eeg", "times", "ch_names"):
        if need not in arrays:
            raise StimoptError(f"{path}: THINGS-EEG-style data needs '{need}' (see stimopt.responses); it has {', '.join(arrays)}")
    eeg = np.asarray(arrays["eeg"], dtype=np.float64)
    if eeg.ndim != 4:
        raise StimoptError(f"{path}: 'eeg' must be [images, repeats, channels, times], got shape {eeg.shape}")
    ch = [c.decode() if isinstance(c, bytes) else str(c) for c in np.asarray(arrays["ch_names"]).ravel()]
    names = list(channels) if channels else ch
    missing = [c for c in names if c not in ch]
    if missing:
        raise StimoptError(f"channel(s) {', '.join(missing)} not in {path}; it has: {', '.join(ch)}")
    t = np.asarray(arrays["times"], dtype=np.float64)
    sel = (t >= float(window[0])) & (t <= float(window[1]))
    if not sel.any():
        raise StimoptError(f"window {list(window)} s holds no time points of {path} ({t.min():.3f}..{t.max():.3f} s)")
    cidx = [ch.index(c) for c in names]
    erp = eeg[:, :, cidx][..., sel].mean(axis=-1)  # [N, R, C]
    return check_table(average_trials(erp), names, path), names


# -- digital twin -------------------------------------------------------------------------------
class TwinTeacher(torch.nn.Module):
    """A known "V4-like" teacher: per neuron, a rectified linear read-out of a feature map with a
    Gaussian spatial receptive field. ``features(images) -> [B,C,H,W]`` is any frozen extractor."""

    def __init__(self, features, channels: int, height: int, width: int, n_neurons: int, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.features = features
        self.w = torch.randn(n_neurons, channels, generator=g) / channels**0.5
        yy, xx = torch.meshgrid(torch.arange(height, dtype=torch.float32), torch.arange(width, dtype=torch.float32), indexing="ij")
        cy = torch.rand(n_neurons, generator=g) * (height - 1) * 0.5 + (height - 1) * 0.25
        cx = torch.rand(n_neurons, generator=g) * (width - 1) * 0.5 + (width - 1) * 0.25
        sd = max(height, width) / 4
        rf = torch.exp(-((yy[None] - cy[:, None, None]) ** 2 + (xx[None] - cx[:, None, None]) ** 2) / (2 * sd**2))
        self.rf = rf / rf.sum(dim=(1, 2), keepdim=True)  # [K, H, W]

        self.threshold = torch.zeros(n_neurons)

    @torch.no_grad()
    def drive(self, images: torch.Tensor) -> torch.Tensor:
        """The linear drive [B, K] before the threshold."""
        f = self.features(images)  # [B, C, H, W]
        pooled = torch.einsum("bchw,khw->bkc", f, self.rf.to(f.device))
        return (pooled * self.w.to(f.device)).sum(-1)

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        d = self.drive(images)
        return F.relu(d - self.threshold.to(d.device))  # [B, K]


def load_responses(spec, what: str = "data") -> tuple[np.ndarray, list[str]]:
    """The response table named by a data config (``responses``, ``format``: table | nsd | things_eeg,
    and the format's own keys ``key``, ``rois``, ``channels``, ``window``); ``what`` names the config
    section in error messages (``data`` for stimopt-fit, ``model`` for a landscape fit)."""
    fmt = str(spec.get("format", "table"))
    if fmt == "table":
        return load_table(spec["responses"], str(spec.get("key", "responses")))
    if fmt == "nsd":
        return load_nsd(spec["responses"], spec.get("rois"))
    if fmt == "things_eeg":
        return load_things_eeg(spec["responses"], spec.get("channels"), tuple(spec.get("window", (0.1, 0.2))))
    raise StimoptError(f"{what}.format must be table, nsd or things_eeg, got '{fmt}'")


TWIN_TAILS = ("two", "one")


def make_twin(features, n_images: int = 1500, n_neurons: int = 8, size: int = 112, noise: float = 0.2,
              repeats: int = 1, seed: int = 0, batch: int = 64, tails: str = "two") -> dict:
    """Synthetic data set: natural crops, a teacher's noiseless responses and noisy trials.

    ``tails="two"`` (default): each neuron's response is its linear drive about its median, so
    images drive it above and below baseline (preferred and anti-preferred tails, like recorded V4
    neurons in the seed paper, Fig. 1). ``tails="one"``: the same drive rectified at the median,
    silent (exactly 0) for half of the images and with no anti-preferred tail (like a post-ReLU CNN
    unit; skewness ~1.6 for a Gaussian drive, where a 30% floor would give ~1.0, the one/two
    boundary of ``stimopt-analyze skewness``).

    Returns ``images`` [N,3,size,size], ``clean`` [N,K], ``trials`` [N,R,K] (clean + noise x SD x
    N(0,1) per trial) and ``responses`` [N,K] (their repeat average).
    """
    from stimopt.natural import natural_crops

    for key, value, low in (("n_images", n_images, 1), ("n_neurons", n_neurons, 1), ("repeats", repeats, 1), ("size", size, 8)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or int(value) != value or value < low:
            raise StimoptError(f"data.twin.{key} must be a whole number >= {low}, got {value!r}")
    if not np.isfinite(float(noise)) or float(noise) < 0:
        raise StimoptError(f"data.twin.noise must be a number >= 0, got {noise!r}")
    if str(tails) not in TWIN_TAILS:
        raise StimoptError(f"data.twin.tails must be two (responses above and below baseline) or one (a ReLU), got {tails!r}")
    images = natural_crops(int(n_images), size=int(size), seed=int(seed))
    with torch.no_grad():
        probe = features(images[:1])
    teacher = TwinTeacher(features, probe.shape[1], probe.shape[2], probe.shape[3], int(n_neurons), seed=int(seed) + 1)
    drive = torch.cat([teacher.drive(images[i:i + batch]).cpu() for i in range(0, len(images), batch)])
    teacher.threshold = drive.median(dim=0).values  # the baseline: each neuron's median drive
    if str(tails) == "one":  # rectified at baseline: silent (exactly 0) for half of the images
        clean = F.relu(drive - teacher.threshold).double().numpy()
    else:  # two-tailed: responses above and below baseline
        clean = (drive - teacher.threshold).double().numpy()
    sd = clean.std(axis=0, keepdims=True) + 1e-12
    clean = clean / sd  # unit SD per neuron
    rng = np.random.default_rng(seed)
    trials = clean[:, None, :] + float(noise) * rng.standard_normal((clean.shape[0], int(repeats), clean.shape[1]))
    return {"images": images, "clean": clean, "trials": trials, "responses": trials.mean(axis=1),
            "names": [f"twin{i}" for i in range(clean.shape[1])]}
