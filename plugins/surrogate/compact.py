"""A compact copy of the bank's features for the whole-bank scan of big banks.

At 10M x 256 float32 the features are 10 GB: one pass per generation is disk- and memory-bound
(~18 s on a shared 2-core machine, and every page read counts as resident memory). The scan
instead reads a copy that is 16x smaller: the features projected on their top ``dims`` principal
axes (faiss ``PCAMatrix``, trained on a fixed sample), each coordinate 8-bit scalar-quantized
(faiss ``ScalarQuantizer`` QT_8bit: one byte per coordinate, 64 bytes per image at dims=64).
Both maps are affine, so a linear readout w . x of the full features is, up to the discarded
variance and the rounding, a readout of the codes: w . x ~= (w . mu + (A w) . a) + ((A w) * b) . q,
one uint8 -> float32 product per chunk.

The copy is computed once per bank and cached beside the features (``surrogate/`` in the bank
folder, or next to the memory-mapped file), keyed by the source files' sizes and modification
times; banks held in memory get an in-memory copy. The search ranks the bank on the copy, then
re-scores the best candidates on the full features (:func:`.scan.scan_bank`), so what it shows is
ranked by the full-precision model.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from stimopt.errors import StimoptError

FORMAT = 1


def read_block(arr, start: int, stop: int) -> np.ndarray:
    """Rows start:stop of ``arr`` as float32. A top-level ``np.memmap`` is read through a mapping
    of just those rows, dropped afterwards, so streaming a 10 GB file leaves no resident pages."""
    if isinstance(arr, np.memmap) and getattr(arr, "filename", None) and arr.base is not None and arr.flags.c_contiguous \
            and arr.ndim == 2 and stop > start:
        row = arr.shape[1] * arr.dtype.itemsize
        block = np.memmap(arr.filename, dtype=arr.dtype, mode="r", offset=arr.offset + start * row, shape=(stop - start, arr.shape[1]))
        out = np.array(block, dtype=np.float32)
        del block
        return out
    return np.asarray(arr[start:stop], dtype=np.float32)


def read_rows(arrays, idx: np.ndarray, window_bytes: int = 1 << 27) -> np.ndarray:
    """Rows ``idx`` (sorted, unique) of the concatenated feature arrays as float32 [len(idx), d].
    A memory-mapped file is read through temporary mappings of at most ``window_bytes`` each, so
    the pages read (and the kernel's read-around) do not stay resident."""
    idx = np.asarray(idx, dtype=np.int64)
    out = []
    for arr in arrays:
        if isinstance(arr, np.memmap) and getattr(arr, "filename", None) and arr.base is not None and arr.flags.c_contiguous \
                and arr.ndim == 2 and idx.size:
            row = arr.shape[1] * arr.dtype.itemsize
            span = max(1, window_bytes // row)
            part = np.empty((idx.size, arr.shape[1]), dtype=np.float32)
            cuts = np.searchsorted(idx, np.arange(0, arr.shape[0] + span, span))
            for w, (a, b) in enumerate(zip(cuts[:-1], cuts[1:])):
                if b > a:
                    lo = w * span
                    window = np.memmap(arr.filename, dtype=arr.dtype, mode="r", offset=arr.offset + lo * row,
                                       shape=(min(span, arr.shape[0] - lo), arr.shape[1]))
                    part[a:b] = window[idx[a:b] - lo]
                    del window
            out.append(part)
        else:
            out.append(np.asarray(arr[idx], dtype=np.float32))
    return np.concatenate(out, axis=1) if len(out) > 1 else out[0]


def _source_key(arrays) -> list | None:
    """(file, size, mtime) of each memory-mapped feature array, or None if one is held in memory."""
    key = []
    for a in arrays:
        name = getattr(a, "filename", None)
        if not isinstance(a, np.memmap) or not name:
            return None
        st = os.stat(name)
        key.append([os.path.basename(name), st.st_size, st.st_mtime_ns, list(a.shape)])
    return key


def cache_folder(arrays, bank_path: str | None) -> Path | None:
    if _source_key(arrays) is None:
        return None
    return Path(bank_path) / "surrogate" if bank_path else Path(arrays[0].filename).parent / "surrogate"


class CompactFeatures:
    """uint8 codes [N, dims] of the PCA-projected features and the affine maps back to them."""

    def __init__(self, codes: np.ndarray, mean: np.ndarray, axes: np.ndarray, offset: np.ndarray, step: np.ndarray):
        self.codes, self.mean, self.axes, self.offset, self.step = codes, mean, axes, offset, step

    @property
    def dims(self) -> int:
        return self.codes.shape[1]

    def readout(self, raw: np.ndarray, const: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Raw-feature readouts (rows of ``raw`` [S, d], plus ``const`` [S]) -> the same readouts of
        the codes: (weights [dims, S] float32, constants [S])."""
        proj = raw.astype(np.float64) @ self.axes.T  # [S, dims]: (A w) per readout
        c = const.astype(np.float64).ravel() + raw.astype(np.float64) @ self.mean + proj @ self.offset
        return np.ascontiguousarray((proj * self.step).T, dtype=np.float32), c.astype(np.float32)


def build_compact(arrays, dims: int, n_train: int = 65536, block: int = 65536, seed: int = 0) -> CompactFeatures:
    """Train PCA (``dims`` axes) and the 8-bit quantizer on a fixed sample, then encode every row."""
    import faiss
    from tqdm import tqdm

    size = arrays[0].shape[0]
    d = sum(a.shape[1] for a in arrays)
    if not 0 < dims <= d:
        raise StimoptError(f"optimizer.scan_dims must be in 1..{d} (the feature width), got {dims}")
    rows = np.arange(size) if size <= n_train else np.sort(np.random.default_rng(seed).choice(size, n_train, replace=False))
    sample = np.ascontiguousarray(read_rows(arrays, rows))
    pca = faiss.PCAMatrix(d, dims)
    pca.train(sample)
    sq = faiss.ScalarQuantizer(dims, faiss.ScalarQuantizer.QT_8bit)
    sq.train(pca.apply(sample))
    codes = np.empty((size, dims), dtype=np.uint8)
    with tqdm(total=size, desc="surrogate: compact scan copy", unit="img", unit_scale=True, leave=False) as bar:
        for s in range(0, size, block):
            e = min(size, s + block)
            x = np.concatenate([read_block(a, s, e) for a in arrays], axis=1)
            codes[s:e] = sq.compute_codes(np.ascontiguousarray(pca.apply(x)))
            bar.update(e - s)
    axes = faiss.vector_to_array(pca.A).reshape(dims, d).astype(np.float64)
    mean = faiss.vector_to_array(pca.mean).astype(np.float64)
    # The quantizer's decoding is affine per coordinate: y = offset + step x code.
    lo = sq.decode(np.zeros((1, dims), np.uint8))[0].astype(np.float64)
    hi = sq.decode(np.full((1, dims), 255, np.uint8))[0].astype(np.float64)
    step = (hi - lo) / 255.0
    return CompactFeatures(codes, mean, axes, lo, step)


def compact_features(arrays, dims: int, bank_path: str | None = None) -> CompactFeatures:
    """The cached compact copy of ``arrays`` (built and written on first use), or an in-memory one."""
    key = _source_key(arrays)
    folder = cache_folder(arrays, bank_path)
    if folder is not None:
        stem = folder / ("+".join(Path(k[0]).stem for k in key) + f".pca{dims}")
        meta_file, codes_file = Path(f"{stem}.json"), Path(f"{stem}.npy")
        try:
            meta = json.loads(meta_file.read_text())
            if meta.get("format") == FORMAT and meta.get("source") == key and codes_file.is_file():
                codes = np.load(codes_file, mmap_mode="r")
                if codes.shape == (arrays[0].shape[0], dims):
                    maps = {k: np.asarray(meta[k], dtype=np.float64) for k in ("mean", "axes", "offset", "step")}
                    return CompactFeatures(codes, **maps)
        except (OSError, ValueError, KeyError):
            pass  # missing or stale: rebuilt below
    comp = build_compact(arrays, dims)
    if folder is None:
        return comp
    try:
        folder.mkdir(parents=True, exist_ok=True)
        tmp = codes_file.with_name(f"{codes_file.stem}.tmp-{os.getpid()}.npy")
        np.save(tmp, comp.codes)
        os.replace(tmp, codes_file)
        meta = {"format": FORMAT, "source": key, "dims": dims, "mean": comp.mean.tolist(), "axes": comp.axes.tolist(),
                "offset": comp.offset.tolist(), "step": comp.step.tolist()}
        tmp = meta_file.with_name(f"{meta_file.name}.tmp-{os.getpid()}")
        tmp.write_text(json.dumps(meta))
        os.replace(tmp, meta_file)
        comp.codes = np.load(codes_file, mmap_mode="r")  # the scan reads the file; its pages can be dropped
    except OSError:  # a read-only bank: keep the in-memory copy for this run
        pass
    return comp
