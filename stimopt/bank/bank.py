"""A built bank, opened lazily: memory-mapped features and graph, images decoded on demand."""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from stimopt.api import BankSpace
from stimopt.bank import manifest as mf
from stimopt.bank.sources import Shard, read_items, resize, shard_items
from stimopt.errors import StimoptError


class Bank:
    """``load_bank(path)``: ``size``, ``features`` [N, d], ``graph`` [N, k], ``coresets`` and
    ``images(indices)``. Nothing is read into memory beyond what is asked for."""

    def __init__(self, path: str | Path):
        self.path = Path(path).resolve()
        self.manifest = mf.load_manifest(self.path)
        self.size = int(self.manifest["size"])
        self.image_size = int(self.manifest["image_size"])
        self.features = open_array(self.path, "features.npy", ndim=2, rows=self.size)
        self.graph = open_array(self.path, "graph.npy", ndim=2, rows=self.size, integer=True)
        self.offsets = open_array(self.path, "offsets.npy", ndim=1, rows=int(self.manifest["n_shards"]) + 1, integer=True,
                                  mmap=False)
        cores = open_array(self.path, "coresets.npy", ndim=2, integer=True)
        check_indices(self.path, "graph.npy", self.graph, self.size)
        check_indices(self.path, "coresets.npy", cores, self.size)
        if self.offsets[0] != 0 or self.offsets[-1] != self.size or np.any(np.diff(self.offsets) < 0):
            raise StimoptError(f"bank {self.path}: offsets.npy does not match its {self.size} images; {repair_hint(self.path, 'offsets.npy')}")
        self.coresets = tuple(cores[i] for i in range(len(cores)))
        self._shard = lru_cache(maxsize=32)(self._load_shard)

    @property
    def space(self) -> BankSpace:
        return BankSpace(
            size=self.size, features=self.features, graph=self.graph, coresets=self.coresets, path=str(self.path),
            extras={"feature": dict(self.manifest["features"]), "k": self.manifest["graph"]["k"],
                    "image_size": self.image_size, "note": self.manifest.get("note", "")},
        )

    def _load_shard(self, s: int) -> tuple[Shard, list, np.ndarray]:
        shard = Shard.from_json(mf.read_json(mf.items_path(self.path, s)))
        return shard, shard_items(shard), np.load(mf.shard_dir(self.path, s) / "kept.npy")

    def locate(self, indices) -> list[tuple[int, object]]:
        """Bank indices -> (shard number, item) pairs."""
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        if idx.size and (idx.min() < 0 or idx.max() >= self.size):
            raise StimoptError(f"bank index out of range: the bank {self.path.name} has images 0..{self.size - 1}")
        shards = np.searchsorted(self.offsets, idx, side="right") - 1
        out = []
        for i, s in zip(idx.tolist(), shards.tolist()):
            _, items, kept = self._shard(s)
            out.append((s, items[int(kept[i - self.offsets[s]])]))
        return out

    def images(self, indices, size: int | None = None) -> torch.Tensor:
        """Images float32 [B, 3, size, size] in [0, 1] (default size: the bank's image size)."""
        size = int(size or self.image_size)
        located = self.locate(indices)
        out = torch.empty(len(located), 3, size, size)
        by_shard: dict[int, list[int]] = {}
        for pos, (s, _) in enumerate(located):
            by_shard.setdefault(s, []).append(pos)
        for s, positions in by_shard.items():
            shard = self._shard(s)[0]
            imgs, ok, bad = read_items(shard, [located[p][1] for p in positions], self.image_size)
            if bad:
                raise StimoptError(f"bank image {bad[0][0]} can no longer be read ({bad[0][1]}); was the source changed after the build?")
            out[positions] = resize(imgs, size)
        return out

    def names(self, indices) -> list[str]:
        from stimopt.bank.sources import item_name

        return [item_name(self._shard(s)[0], item) for s, item in self.locate(indices)]

    def describe(self) -> str:
        return f"bank {self.path.name} ({self.size:,} images, k={self.manifest['graph']['k']})"


# What to remove so that running the same `stimopt-bank build` again rewrites a damaged file.
_REWRITES = {"features.npy": ("features.npy", "offsets.npy", "graph.json", "graph.npy", "coresets.npy"),
             "offsets.npy": ("offsets.npy", "features.npy"), "graph.npy": ("graph.npy", "graph.json", "coresets.npy"),
             "coresets.npy": ("coresets.npy",)}


def repair_hint(path: Path, name: str) -> str:
    files = " ".join(str(Path(path) / f) for f in (*_REWRITES.get(name, (name,)), "manifest.json"))
    return f"remove {files} and run the same `stimopt-bank build` again (finished shards are kept)"


def open_array(path: Path, name: str, ndim: int, rows: int | None = None, integer: bool = False, mmap: bool = True) -> np.ndarray:
    """A bank's .npy file (memory-mapped), or one line saying it is missing or damaged and how to rewrite it."""
    file = Path(path) / name
    if not file.is_file():
        raise StimoptError(f"bank {path}: {name} is missing; {repair_hint(path, name)}")
    try:
        arr = np.load(file, mmap_mode="r" if mmap else None, allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:  # truncated, not an .npy, an object array
        why = "not a NumPy array file" if "pickled" in str(exc) else str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__
        raise StimoptError(f"bank {path}: {name} is damaged or truncated ({why}); {repair_hint(path, name)}") from None
    wrong = (arr.ndim != ndim or (rows is not None and arr.shape[0] != rows)
             or (integer and not np.issubdtype(arr.dtype, np.integer)) or (not integer and not np.issubdtype(arr.dtype, np.floating)))
    if wrong:
        want = f"{ndim}-d {'integer' if integer else 'float'} array" + (f" of {rows} rows" if rows is not None else "")
        raise StimoptError(f"bank {path}: {name} is a {arr.ndim}-d {arr.dtype} array of shape {arr.shape}, not a {want}; "
                           f"{repair_hint(path, name)}")
    return arr


FULL_CHECK_ENTRIES = 1 << 25  # graphs up to ~33M entries (128 MB) are range-checked in full at load; larger ones on a sample


def check_indices(path: Path, name: str, arr: np.ndarray, size: int) -> None:
    """Every bank index in ``arr`` (graph neighbours, coresets) lies in 0..size-1."""
    if not arr.size:
        return
    flat = arr.reshape(len(arr), -1) if arr.ndim > 1 else arr.reshape(-1, 1)
    if arr.size <= FULL_CHECK_ENTRIES:
        step = max(1, (1 << 22) // max(1, flat.shape[1]))  # ~16 MB of int32 at a time
        bad = any(flat[s:s + step].min() < 0 or flat[s:s + step].max() >= size for s in range(0, len(flat), step))
    else:
        rows = np.sort(np.random.default_rng(0).choice(len(flat), size=min(4096, len(flat)), replace=False))
        sample = flat[rows]
        bad = sample.min() < 0 or sample.max() >= size
    if bad:
        raise StimoptError(f"bank {path}: {name} holds image indices outside 0..{size - 1} (a damaged or foreign file); "
                           f"{repair_hint(path, name)}")


def load_bank(path: str | Path) -> Bank:
    return Bank(path)
