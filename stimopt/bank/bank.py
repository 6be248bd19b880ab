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
        self.features = np.load(self.path / "features.npy", mmap_mode="r")
        self.graph = np.load(self.path / "graph.npy", mmap_mode="r")
        self.offsets = np.load(self.path / "offsets.npy")
        cores = np.load(self.path / "coresets.npy", mmap_mode="r")
        self.coresets = tuple(cores[i] for i in range(len(cores)))
        if len(self.features) != self.size or len(self.graph) != self.size:
            raise StimoptError(f"bank {self.path} is inconsistent (features/graph rows differ from its size); rebuild it")
        self._shard = lru_cache(maxsize=32)(self._load_shard)

    @property
    def graph_features(self) -> np.ndarray:
        """The vectors the graph was built on (PCA-reduced features when the bank used PCA)."""
        pca = self.path / "features_pca.npy"
        return np.load(pca, mmap_mode="r") if pca.exists() else self.features

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


def load_bank(path: str | Path) -> Bank:
    return Bank(path)
