"""Stimuli for the pages: codes (or bank indices) from the store, turned back into PNG images by
the run's generator (the live one at the end of a run, or one rebuilt from the stored config)."""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np

CHUNK = 16


def rebuild_generator(config: dict):
    """The run's generator, built again from its stored config (on the CPU: a page never competes
    with the run for an accelerator)."""
    from omegaconf import OmegaConf

    from stimopt import plugins
    from stimopt.experiment import build

    plugins.load_plugins()
    return build("generator", OmegaConf.create(config["generator"]), device="cpu")


def render(generator, codes) -> np.ndarray:
    """uint8 images [N, H, W, 3] for flat float codes [N, dim] or bank indices [N]."""
    if not len(codes):
        return np.zeros((0, 1, 1, 3), np.uint8)
    import torch

    first = codes[0]
    codes = np.asarray(codes, dtype=np.int64) if np.ndim(first) == 0 else np.stack(codes).astype(np.float32)
    out = []
    with torch.inference_mode():
        for start in range(0, len(codes), CHUNK):
            imgs = generator.generate(codes[start:start + CHUNK])
            imgs = imgs.detach().float().cpu().numpy() if isinstance(imgs, torch.Tensor) else np.asarray(imgs, np.float32)
            out.append(imgs)
    images = np.concatenate(out).transpose(0, 2, 3, 1)
    if images.shape[-1] == 1:
        images = np.repeat(images, 3, axis=-1)
    return (images.clip(0, 1) * 255 + 0.5).astype(np.uint8)


def png_bytes(image: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


def save_pngs(generator, codes, folder: Path, prefix: str) -> list[str]:
    """Render codes and save them as ``folder/prefix_NN.png``; returns the file names."""
    folder.mkdir(parents=True, exist_ok=True)
    names = []
    for i, image in enumerate(render(generator, codes)):
        name = f"{prefix}_{i:02d}.png"
        (folder / name).write_bytes(png_bytes(image))
        names.append(name)
    return names
