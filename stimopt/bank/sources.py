"""Where a bank's images come from: a folder (recursive), zip shards, webdataset tar shards, the demo.

A source is split into shards (one zip or tar = one shard; a folder or the demo in chunks of
``shard_size`` images). A shard lists its items (member names, or tar offsets); images are read
lazily, item by item, and an item that cannot be decoded is reported, never fatal.
"""
from __future__ import annotations

import io
import os
import re
import tarfile
import zipfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from stimopt.errors import StimoptError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm")
DEFAULT_SHARD_SIZE = 20_000  # ImageBeagle stores 20k images per zip


def is_image_name(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS) and not os.path.basename(name).startswith(".")


@dataclass
class Shard:
    """One unit of work: ``kind`` (folder|zip|tar|demo), ``location`` and its ``items``.

    folder: items are paths relative to the folder; zip: member names; tar: [name, offset, size];
    demo: [start, stop) image numbers in ``items`` = [start, stop].
    """

    kind: str
    location: str
    items: list

    def __len__(self) -> int:
        if self.kind == "demo":
            return int(self.items[1] - self.items[0])
        return len(self.items)

    def to_json(self) -> dict:
        return {"kind": self.kind, "location": self.location, "items": self.items}

    @classmethod
    def from_json(cls, d: dict) -> "Shard":
        return cls(d["kind"], d["location"], d["items"])


def decode(data: bytes, size: int) -> torch.Tensor:
    """Encoded image bytes -> float32 [3, size, size] in [0, 1] (raises on a corrupt image)."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as img:
        img.load()
        rgb = img.convert("RGB").resize((size, size), Image.BILINEAR)
    return torch.from_numpy(np.asarray(rgb, dtype=np.uint8).copy()).permute(2, 0, 1).float().div_(255.0)


def parse_source(spec: str) -> tuple[str, str]:
    """A source string -> (kind, location). ``demo`` / ``demo:N``; a .zip/.tar file or a folder
    of them; otherwise a folder of images (recursive)."""
    spec = str(spec)
    if spec == "demo" or spec.startswith("demo:"):
        return "demo", spec
    path = Path(spec)
    if path.is_file():
        if spec.endswith(".zip"):
            return "zip", str(path.resolve())
        if spec.endswith(".tar"):
            return "tar", str(path.resolve())
        raise StimoptError(f"bank source {spec} is a file but neither .zip nor .tar; give a folder, zip/tar shards or 'demo'")
    if not path.is_dir():
        raise StimoptError(f"bank source {spec} does not exist; give a folder of images, zip/tar shards or 'demo'")
    if any(path.glob("*.zip")):
        return "zip", str(path.resolve())
    if any(path.glob("*.tar")):
        return "tar", str(path.resolve())
    return "folder", str(path.resolve())


def plan_shards(spec: str, shard_size: int = DEFAULT_SHARD_SIZE) -> list[Shard]:
    """List the shards of a source (reads zip/tar directories, not the images)."""
    kind, loc = parse_source(spec)
    if shard_size <= 0:
        raise StimoptError(f"shard_size must be positive, got {shard_size}")
    if kind == "demo":
        from stimopt.bank.demo import DEMO_SIZE

        n = int(loc.split(":", 1)[1]) if ":" in loc else DEMO_SIZE
        return [Shard("demo", "demo", [s, min(s + shard_size, n)]) for s in range(0, n, shard_size)]
    root = Path(loc)
    if kind == "folder":
        files = sorted(
            str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and is_image_name(p.name)
        )
        if not files:
            raise StimoptError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) found under {loc}")
        return [Shard("folder", loc, files[s:s + shard_size]) for s in range(0, len(files), shard_size)]
    archives = [root] if root.is_file() else sorted(root.glob(f"*.{kind}"))
    shards = []
    for archive in archives:
        try:
            if kind == "zip":
                with zipfile.ZipFile(archive) as zf:
                    items = [n for n in zf.namelist() if is_image_name(n)]
            else:
                with tarfile.open(archive) as tf:
                    items = [[m.name, m.offset_data, m.size] for m in tf.getmembers() if m.isfile() and is_image_name(m.name)]
        except (zipfile.BadZipFile, tarfile.TarError, OSError) as exc:
            raise StimoptError(f"shard {archive} cannot be opened ({exc}); remove or repair it") from None
        if items:
            shards.append(Shard(kind, str(archive), items))
    if not shards:
        raise StimoptError(f"no images found in the {kind} shards under {loc}")
    return shards


@lru_cache(maxsize=64)
def _zip(path: str) -> zipfile.ZipFile:
    return zipfile.ZipFile(path)


def read_bytes(shard: Shard, item) -> bytes:
    if shard.kind == "folder":
        with open(os.path.join(shard.location, item), "rb") as f:
            return f.read()
    if shard.kind == "zip":
        return _zip(shard.location).read(item)
    if shard.kind == "tar":
        _, offset, size = item
        with open(shard.location, "rb") as f:
            f.seek(int(offset))
            return f.read(int(size))
    raise StimoptError(f"shard kind {shard.kind} holds no encoded images")


def item_name(shard: Shard, item) -> str:
    name = item[0] if shard.kind == "tar" else str(item)
    return f"{os.path.basename(shard.location)}:{name}" if shard.kind in ("zip", "tar") else name


def read_items(shard: Shard, items: list, size: int) -> tuple[torch.Tensor, list[int], list[tuple[str, str]]]:
    """Decode ``items`` of a shard: (images [n_ok, 3, size, size], positions kept, [(name, reason)] skipped)."""
    if shard.kind == "demo":
        from stimopt.bank.demo import render

        return render(np.asarray(items, dtype=np.int64), size), list(range(len(items))), []
    images, kept, skipped = [], [], []
    for pos, item in enumerate(items):
        try:
            images.append(decode(read_bytes(shard, item), size))
            kept.append(pos)
        except Exception as exc:  # corrupt, truncated, unreadable: skipped and listed
            reason = re.sub(r" (at|object at) 0x[0-9a-fA-F]+", "", f"{type(exc).__name__}: {exc}")
            skipped.append((item_name(shard, item), reason[:200]))
    out = torch.stack(images) if images else torch.zeros(0, 3, size, size)
    return out, kept, skipped


def shard_items(shard: Shard) -> list:
    """The shard's items as a list (the demo's numbers expanded)."""
    if shard.kind == "demo":
        return list(range(int(shard.items[0]), int(shard.items[1])))
    return list(shard.items)


def resize(images: torch.Tensor, size: int) -> torch.Tensor:
    if images.shape[-1] == size and images.shape[-2] == size:
        return images
    return F.interpolate(images, size=(size, size), mode="bilinear", antialias=True, align_corners=False).clamp_(0, 1)
