"""Natural photographs available offline, and random crops of them.

scikit-image and matplotlib ship a few sample photographs; random crops (position, scale, flip)
of them stand in for natural images wherever no image bank is given: the reference of "best
natural image" responses, the photo part of the demo bank, tests.
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F

SKIMAGE_PHOTOS = (
    "astronaut", "coffee", "chelsea", "rocket", "camera", "coins", "horse", "hubble_deep_field",
    "immunohistochemistry", "moon", "page", "text", "cat", "retina", "colorwheel", "logo",
)
MATPLOTLIB_PHOTOS = ("grace_hopper.jpg",)


def _to_rgb_float(img: np.ndarray) -> np.ndarray:
    img = np.asarray(img)
    if img.dtype == bool:
        img = img.astype(np.float32)
    elif img.dtype == np.uint8:
        img = img.astype(np.float32) / 255.0
    else:
        img = img.astype(np.float32)
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=2)
    return np.ascontiguousarray(img[..., :3])


@lru_cache(maxsize=1)
def photographs() -> tuple[tuple[str, np.ndarray], ...]:
    """(name, HxWx3 float32 in [0,1]) for every sample photograph that loads offline."""
    import skimage.data

    out = []
    for name in SKIMAGE_PHOTOS:
        try:
            out.append((name, _to_rgb_float(getattr(skimage.data, name)())))
        except Exception:  # a sample that needs a download: skip it
            continue
    try:
        import matplotlib.cbook
        import matplotlib.image

        for name in MATPLOTLIB_PHOTOS:
            out.append((name, _to_rgb_float(matplotlib.image.imread(matplotlib.cbook.get_sample_data(name)))))
    except Exception:
        pass
    return tuple(out)


def crop_params(n: int, seed: int, min_frac: float = 0.15, max_frac: float = 0.8) -> np.ndarray:
    """[n, 5]: photo index, top and left (fractions of the free range), side (fraction of the short edge), flip."""
    rng = np.random.default_rng(seed)
    n_photos = len(photographs())
    return np.stack([
        rng.integers(0, n_photos, n), rng.random(n), rng.random(n),
        min_frac + (max_frac - min_frac) * rng.random(n), rng.integers(0, 2, n),
    ], axis=1)


def render_crops(params: np.ndarray, size: int) -> torch.Tensor:
    """Crops described by ``crop_params`` rows -> float32 [n, 3, size, size] in [0, 1]."""
    photos = photographs()
    out = torch.empty(len(params), 3, size, size)
    for i, (p, top, left, side, flip) in enumerate(params):
        img = photos[int(p)][1]
        h, w = img.shape[:2]
        s = max(8, int(side * min(h, w)))
        y, x = int(top * (h - s)), int(left * (w - s))
        crop = torch.from_numpy(img[y:y + s, x:x + s]).permute(2, 0, 1)[None]
        crop = F.interpolate(crop, size=(size, size), mode="bilinear", antialias=True, align_corners=False)[0]
        out[i] = crop.flip(-1) if flip else crop
    return out.clamp_(0, 1)


def natural_crops(n: int, size: int = 128, seed: int = 0) -> torch.Tensor:
    """n random crops of the offline photographs, float32 [n, 3, size, size] in [0, 1]."""
    return render_crops(crop_params(n, seed), size)
