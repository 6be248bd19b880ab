"""The embedded demo bank: 20,000 images made offline, rendered on demand from their number.

Half are random crops of the photographs scikit-image and matplotlib ship (``stimopt.natural``);
one eighth are "gaudy" versions of such crops (each colour channel pushed to 0 or 1 around its
mean, after Cowley & Pillow 2020); the rest are procedural: gratings, Gabors, bars, Gaussian
blobs, checkerboards and coloured letters. Image ``i`` depends only on ``i``, so the bank stores
no pixels. Its features come from EfficientNet-Lite0 ``blocks.3`` (the only offline pretrained
weights; the paper's ResNet-50 ``layer3`` needs weights this machine does not have) and it is
built once into ``$STIMOPT_CACHE`` (default ``~/.cache/stimopt``).
"""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from stimopt.cache import cache_dir
from stimopt.errors import StimoptError

DEMO_SIZE = 20_000
DEMO_SEED = 20240
IMAGE_SIZE = 96
# category of image i = CATEGORY[i % 16]
CATEGORY = ["photo"] * 8 + ["gaudy"] * 2 + ["grating", "gabor", "bars", "blobs", "checker", "letters"]
CROP_BLOCK = 1024
FALLBACK_NOTE = ("features from EfficientNet-Lite0 blocks.3 (offline weights) instead of the paper's ResNet-50 layer3, "
                 "whose weights are not on this machine")


@lru_cache(maxsize=64)
def _crop_block(block: int) -> np.ndarray:
    from stimopt.natural import crop_params

    return crop_params(CROP_BLOCK, seed=DEMO_SEED + block)


def _params(indices: np.ndarray, n: int) -> np.ndarray:
    """[len(indices), n] uniform numbers that depend only on each index."""
    return np.stack([np.random.default_rng([DEMO_SEED, int(i)]).random(n) for i in indices]) if len(indices) else np.zeros((0, n))


def _colors(u: np.ndarray) -> torch.Tensor:
    return torch.as_tensor(u, dtype=torch.float32).view(-1, 3, 1, 1)


def _grid(size: int):
    c = (torch.arange(size, dtype=torch.float32) + 0.5) / size * 2 - 1
    return c.view(1, 1, size, 1), c.view(1, 1, 1, size)  # y, x


def _rotated(u_theta: np.ndarray, size: int):
    y, x = _grid(size)
    th = torch.as_tensor(u_theta * np.pi, dtype=torch.float32).view(-1, 1, 1, 1)
    return x * torch.cos(th) + y * torch.sin(th), -x * torch.sin(th) + y * torch.cos(th)


@lru_cache(maxsize=1)
def _pil_photos() -> tuple:
    from PIL import Image
    from stimopt.natural import photographs

    return tuple(Image.fromarray((img * 255).round().astype(np.uint8)) for _, img in photographs())


def _photos(idx: np.ndarray, size: int) -> torch.Tensor:
    """The crops of ``stimopt.natural.crop_params`` (same geometry as ``render_crops``), resized
    with PIL, which is ~20x faster on CPU than torch's antialiased interpolation."""
    from PIL import Image

    photos = _pil_photos()
    out = np.empty((len(idx), size, size, 3), dtype=np.uint8)
    for n, i in enumerate(idx):
        p, top, left, side, flip = _crop_block(int(i) // CROP_BLOCK)[int(i) % CROP_BLOCK]
        img = photos[int(p)]
        w, h = img.size
        s = max(8, int(side * min(h, w)))
        y, x = int(top * (h - s)), int(left * (w - s))
        crop = img.resize((size, size), Image.BILINEAR, box=(x, y, x + s, y + s), reducing_gap=2.0)
        out[n] = np.asarray(crop.transpose(Image.FLIP_LEFT_RIGHT) if flip else crop)
    return torch.from_numpy(out).permute(0, 3, 1, 2).float().div_(255.0)


def _gaudy(idx: np.ndarray, size: int) -> torch.Tensor:
    img = _photos(idx, size)
    return (img > img.mean(dim=(-2, -1), keepdim=True)).float()


def _grating(idx, size, envelope: bool):
    p = _params(idx, 12)
    u, _ = _rotated(p[:, 0], size)
    freq = torch.as_tensor(1 + 11 * p[:, 1] ** 1.5, dtype=torch.float32).view(-1, 1, 1, 1)
    phase = torch.as_tensor(2 * np.pi * p[:, 2], dtype=torch.float32).view(-1, 1, 1, 1)
    wave = torch.sin(np.pi * freq * u + phase)
    square = torch.as_tensor(p[:, 3] < 0.3).view(-1, 1, 1, 1)
    wave = torch.where(square, torch.sign(wave), wave)
    mix = 0.5 + 0.5 * wave * torch.as_tensor(0.3 + 0.7 * p[:, 4], dtype=torch.float32).view(-1, 1, 1, 1)
    a, b = _colors(p[:, 5:8]), _colors(p[:, 8:11])
    gray = torch.as_tensor(p[:, 11] < 0.5).view(-1, 1, 1, 1)
    a, b = torch.where(gray, torch.zeros_like(a), a), torch.where(gray, torch.ones_like(b), b)
    img = a + (b - a) * mix
    if envelope:
        y, x = _grid(size)
        q = _params(idx + 7_000_000, 4)
        cy, cx = [torch.as_tensor(0.8 * (2 * q[:, j] - 1), dtype=torch.float32).view(-1, 1, 1, 1) for j in (0, 1)]
        sigma = torch.as_tensor(0.1 + 0.4 * q[:, 2], dtype=torch.float32).view(-1, 1, 1, 1)
        env = torch.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * sigma**2))
        bg = torch.as_tensor(q[:, 3], dtype=torch.float32).view(-1, 1, 1, 1)
        img = bg + (img - bg) * env
    return img


def _bars(idx, size):
    p = _params(idx, 11)
    u, v = _rotated(p[:, 0], size)
    cx, cy = [torch.as_tensor(0.7 * (2 * p[:, j] - 1), dtype=torch.float32).view(-1, 1, 1, 1) for j in (1, 2)]
    length = torch.as_tensor(0.2 + 1.2 * p[:, 3], dtype=torch.float32).view(-1, 1, 1, 1)
    width = torch.as_tensor(0.03 + 0.25 * p[:, 4] ** 2, dtype=torch.float32).view(-1, 1, 1, 1)
    y, x = _grid(size)
    th = torch.as_tensor(p[:, 0] * np.pi, dtype=torch.float32).view(-1, 1, 1, 1)
    du = (x - cx) * torch.cos(th) + (y - cy) * torch.sin(th)
    dv = -(x - cx) * torch.sin(th) + (y - cy) * torch.cos(th)
    inside = ((du.abs() < length / 2) & (dv.abs() < width / 2)).float()
    fg, bg = _colors(p[:, 5:8]), _colors(p[:, 8:11])
    return bg + (fg - bg) * inside


def _blobs(idx, size, n_blobs: int = 3):
    p = _params(idx, 3 + 7 * n_blobs)
    y, x = _grid(size)
    img = _colors(p[:, :3]).expand(-1, 3, size, size).clone()
    for j in range(n_blobs):
        q = p[:, 3 + 7 * j: 10 + 7 * j]
        cx, cy = [torch.as_tensor(2 * q[:, m] - 1, dtype=torch.float32).view(-1, 1, 1, 1) for m in (0, 1)]
        sigma = torch.as_tensor(0.08 + 0.35 * q[:, 2], dtype=torch.float32).view(-1, 1, 1, 1)
        alpha = torch.as_tensor(q[:, 3] > 0.25, dtype=torch.float32).view(-1, 1, 1, 1)
        env = alpha * torch.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * sigma**2))
        img = img + (_colors(q[:, 4:7]) - img) * env
    return img


def _checker(idx, size):
    p = _params(idx, 9)
    u, v = _rotated(p[:, 0] * 0.5, size)
    freq = torch.as_tensor(1 + 7 * p[:, 1], dtype=torch.float32).view(-1, 1, 1, 1)
    phase = torch.as_tensor(p[:, 2], dtype=torch.float32).view(-1, 1, 1, 1)
    cells = (torch.floor(freq * (u + 1) + phase) + torch.floor(freq * (v + 1) + phase)) % 2
    a, b = _colors(p[:, 3:6]), _colors(p[:, 6:9])
    return a + (b - a) * cells


def _letters(idx, size):
    from PIL import Image, ImageDraw, ImageFont

    p = _params(idx, 10)
    out = torch.empty(len(idx), 3, size, size)
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
    for n, q in enumerate(p):
        bg = tuple(int(255 * c) for c in q[0:3])
        fg = tuple(int(255 * c) for c in q[3:6])
        img = Image.new("RGB", (size, size), bg)
        font = ImageFont.load_default(size=int(size * (0.3 + 0.6 * q[6])))
        ch = alphabet[int(q[7] * len(alphabet))]
        ImageDraw.Draw(img).text((size * (0.1 + 0.5 * q[8]), size * (0.0 + 0.5 * q[9])), ch, fill=fg, font=font)
        out[n] = torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0).permute(2, 0, 1)
    return out


RENDER = {
    "photo": _photos, "gaudy": _gaudy, "grating": lambda i, s: _grating(i, s, False),
    "gabor": lambda i, s: _grating(i, s, True), "bars": _bars, "blobs": _blobs, "checker": _checker, "letters": _letters,
}


def category(indices) -> list[str]:
    return [CATEGORY[int(i) % len(CATEGORY)] for i in np.asarray(indices).reshape(-1)]


def render(indices: np.ndarray, size: int = IMAGE_SIZE) -> torch.Tensor:
    """Demo images number ``indices`` -> float32 [B, 3, size, size] in [0, 1] (batched per category)."""
    idx = np.asarray(indices, dtype=np.int64).reshape(-1)
    out = torch.empty(len(idx), 3, size, size)
    cats = np.array(category(idx))
    for name, fn in RENDER.items():
        sel = np.flatnonzero(cats == name)
        if len(sel):
            out[sel] = fn(idx[sel], size).expand(len(sel), 3, size, size).float()
    return out.clamp_(0, 1)


def demo_options(n: int = DEMO_SIZE) -> dict:
    from stimopt.bank.features import FeatureSpec

    spec = FeatureSpec(model="efficientnet_lite0", layer="blocks.3", input_size=IMAGE_SIZE, pool_kernel=2, pool_stride=2,
                       weights="pretrained", batch_size=128)
    return {"features": spec, "k": 100, "method": "auto", "image_size": IMAGE_SIZE, "shard_size": 2_500, "seed": 0,
            "n_coresets": 10, "note": FALLBACK_NOTE}


def demo_bank_path(build: bool = True, log=None, n: int = DEMO_SIZE) -> str:
    """The demo bank's folder; built (a few minutes, once) when missing and ``build`` is true."""
    path = cache_dir() / "banks" / f"demo-v2-{n}"
    if (path / "manifest.json").exists():
        return str(path)
    if not build:
        raise StimoptError(f"the demo bank is not built yet; run `stimopt-bank demo` (a few minutes, once) to make {path}")
    from stimopt.bank.build import build_bank

    if log:
        log(f"building the demo bank ({n:,} images) into {path}; this happens once")
    build_bank(f"demo:{n}", path, log=log, **demo_options(n))
    return str(path)
