"""Interpretable low-level statistics of images (the seed paper's Fig. 4d-e uses 34; these are
stimopt's own, documented in docs/analyses.md). ``image_statistics(images)`` -> [N, S] for
images float [N, 3, H, W] in [0, 1]; ``STATISTICS`` names the S columns, in order."""
from __future__ import annotations

import io

import numpy as np

HUES = ("red", "yellow", "green", "cyan", "blue", "magenta")
ORIENTATIONS = (0, 45, 90, 135)

STATISTICS = {
    "luminance": "mean luma (Rec. 709 weights), 0..1",
    "rms_contrast": "standard deviation of luma",
    "luminance_skew": "skewness of the luma values",
    "dark_fraction": "fraction of pixels with luma < 0.1",
    "bright_fraction": "fraction of pixels with luma > 0.9",
    "red": "mean red channel", "green": "mean green channel", "blue": "mean blue channel",
    "colourfulness": "Hasler & Suesstrunk colourfulness: sd and mean of the rg / yb opponent channels",
    "saturation": "mean HSV saturation",
    **{f"hue_{h}": f"share of saturation-weighted hue in the {h} sextant" for h in HUES},
    "spectral_slope": "slope of log power vs log spatial frequency (radially averaged luma spectrum; natural images ~ -2)",
    "high_frequency": "share of luma power above a quarter of the sampling frequency",
    **{f"orientation_{o}": f"share of gradient energy at {o} deg (+-22.5), the orientation of the edges" for o in ORIENTATIONS},
    "edge_density": "fraction of pixels with luma gradient magnitude > 0.1",
    "gradient": "mean luma gradient magnitude",
    "entropy": "Shannon entropy (bits) of the 32-bin luma histogram",
    "png_bits_per_pixel": "PNG-compressed size of the 8-bit RGB image, bits per pixel (complexity)",
    "centre_surround": "mean luma of the central quarter minus the rest",
}


def _luma(x: np.ndarray) -> np.ndarray:
    return 0.2126 * x[:, 0] + 0.7152 * x[:, 1] + 0.0722 * x[:, 2]


def _hsv(x: np.ndarray):
    mx, mn = x.max(1), x.min(1)
    delta = mx - mn
    sat = np.where(mx > 1e-8, delta / np.maximum(mx, 1e-8), 0.0)
    r, g, b = x[:, 0], x[:, 1], x[:, 2]
    d = np.maximum(delta, 1e-8)
    hue = np.where(mx == r, ((g - b) / d) % 6, np.where(mx == g, (b - r) / d + 2, (r - g) / d + 4))  # sextants 0..6
    return hue, sat


def _spectrum(y: np.ndarray):
    n, h, w = y.shape
    f = np.fft.fftshift(np.abs(np.fft.fft2(y - y.mean(axis=(1, 2), keepdims=True))) ** 2, axes=(1, 2))
    fy, fx = np.meshgrid(np.arange(h) - h // 2, np.arange(w) - w // 2, indexing="ij")
    radius = np.sqrt(fx ** 2 + fy ** 2).round().astype(int)
    rmax = min(h, w) // 2
    sums = np.stack([np.bincount(radius.ravel(), weights=f[i].ravel(), minlength=radius.max() + 1) for i in range(n)])
    counts = np.bincount(radius.ravel())
    radial = sums[:, 1:rmax] / counts[1:rmax]
    freqs = np.arange(1, rmax)
    lx = np.log(freqs)
    ly = np.log(np.maximum(radial, 1e-20))
    slope = ((lx - lx.mean()) * (ly - ly.mean(1, keepdims=True))).sum(1) / ((lx - lx.mean()) ** 2).sum()
    total = f.sum(axis=(1, 2)) + 1e-20
    high = f[:, radius > rmax / 2].sum(1) / total
    return slope, high


def _png_bits(x: np.ndarray) -> np.ndarray:
    from PIL import Image

    out = []
    for img in (x.transpose(0, 2, 3, 1) * 255).round().clip(0, 255).astype(np.uint8):
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, format="PNG", optimize=False, compress_level=6)
        out.append(8 * buf.tell() / (img.shape[0] * img.shape[1]))
    return np.array(out)


def image_statistics(images) -> np.ndarray:
    """Statistics [N, len(STATISTICS)] of images [N, 3, H, W] in [0, 1] (numpy or torch)."""
    x = np.asarray(images.detach().cpu().numpy() if hasattr(images, "detach") else images, np.float64).clip(0, 1)
    n, _, h, w = x.shape
    y = _luma(x)
    flat = y.reshape(n, -1)
    mean, sd = flat.mean(1), flat.std(1)
    lskew = ((flat - mean[:, None]) ** 3).mean(1) / np.maximum(sd, 1e-8) ** 3
    rg = x[:, 0] - x[:, 1]
    yb = 0.5 * (x[:, 0] + x[:, 1]) - x[:, 2]
    colourful = (np.sqrt(rg.reshape(n, -1).std(1) ** 2 + yb.reshape(n, -1).std(1) ** 2)
                 + 0.3 * np.sqrt(rg.reshape(n, -1).mean(1) ** 2 + yb.reshape(n, -1).mean(1) ** 2))
    hue, sat = _hsv(x)
    sextant = np.floor(hue).astype(int).clip(0, 5).reshape(n, -1)
    weights = sat.reshape(n, -1)
    hue_hist = np.stack([(weights * (sextant == s)).sum(1) for s in range(6)], 1)
    hue_hist = hue_hist / np.maximum(hue_hist.sum(1, keepdims=True), 1e-8)
    slope, high = _spectrum(y)
    gy, gx = np.gradient(y, axis=(1, 2))
    mag = np.sqrt(gx ** 2 + gy ** 2)
    edge_angle = (np.degrees(np.arctan2(gy, gx)) + 90.0) % 180.0  # edges run perpendicular to the gradient
    energy = mag ** 2
    orient = np.stack([(energy * (np.abs(((edge_angle - o + 90) % 180) - 90) < 22.5)).reshape(n, -1).sum(1) for o in ORIENTATIONS], 1)
    orient = orient / np.maximum(orient.sum(1, keepdims=True), 1e-12)
    hist = np.stack([np.histogram(flat[i], bins=32, range=(0, 1))[0] for i in range(n)]) / flat.shape[1]
    entropy = -(np.where(hist > 0, hist * np.log2(np.maximum(hist, 1e-12)), 0)).sum(1)
    c = np.zeros((h, w), bool)
    c[h // 4: h - h // 4, w // 4: w - w // 4] = True
    centre = y[:, c].mean(1) - y[:, ~c].mean(1)
    cols = [mean, sd, lskew, (flat < 0.1).mean(1), (flat > 0.9).mean(1), x[:, 0].reshape(n, -1).mean(1),
            x[:, 1].reshape(n, -1).mean(1), x[:, 2].reshape(n, -1).mean(1), colourful, weights.mean(1), *hue_hist.T, slope, high,
            *orient.T, (mag > 0.1).reshape(n, -1).mean(1), mag.reshape(n, -1).mean(1), entropy, _png_bits(x), centre]
    return np.stack(cols, 1)
