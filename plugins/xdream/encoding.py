"""XDream's "opt" initialization: codes whose generated images reproduce chosen images, and the
``python -m stimopt_plugins.xdream encode IMAGES_DIR OUT.npy [overrides]`` command."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from stimopt.errors import StimoptError


def encode(generator, images, steps: int = 200, lr: float = 0.05, batch: int = 20, seed: int = 0) -> np.ndarray:
    """Codes whose generated images match ``images`` ([B,3,H,W] in [0,1]) in pixel MSE, by Adam.

    Works for any generator with a differentiable ``generate_torch`` (deepsim, fourier, pixels).
    """
    if not hasattr(generator, "generate_torch"):
        raise StimoptError(f"generator {generator.describe()} is not differentiable (no generate_torch); it cannot encode images")
    imgs = torch.as_tensor(images, dtype=torch.float32)
    if imgs.ndim != 4 or imgs.shape[1] != 3:
        raise StimoptError(f"encode takes images [B, 3, H, W] in [0, 1], got {list(imgs.shape)}")
    space = generator.space
    dev = getattr(generator, "device", torch.device("cpu"))
    gen = torch.Generator().manual_seed(seed)
    out = []
    with torch.inference_mode(False), torch.enable_grad():
        for start in range(0, len(imgs), batch):
            target = imgs[start:start + batch].to(dev).clone()  # a normal tensor even if made in inference mode
            z0 = space.init_mean + 0.1 * space.init_std * torch.randn(len(target), space.dim, generator=gen)
            if hasattr(generator, "codes_from_images"):  # raw pixels: the image is its own code (XDream's encode)
                z0 = generator.codes_from_images(target).cpu()
            z = z0.to(dev).requires_grad_(True)
            opt = torch.optim.Adam([z], lr=lr)
            for _ in range(int(steps)):
                x = generator.generate_torch(z)
                goal = target if target.shape[-2:] == x.shape[-2:] else F.interpolate(
                    target, size=x.shape[-2:], mode="bilinear", antialias=True, align_corners=False)
                loss = F.mse_loss(x, goal)
                opt.zero_grad()
                loss.backward()
                opt.step()
                if space.low is not None or space.high is not None:
                    with torch.no_grad():
                        z.clamp_(space.low, space.high)
            out.append(z.detach().cpu().numpy())
    return np.concatenate(out).astype(np.float32)


def read_images(folder: str, size: int) -> torch.Tensor:
    """Every image file in ``folder`` as [B, 3, size, size] float32 in [0, 1] (centre-cropped square)."""
    from PIL import Image

    root = Path(folder).expanduser()
    if not root.is_dir():
        raise StimoptError(f"image folder {root} does not exist")
    files = sorted(p for p in root.iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"))
    if not files:
        raise StimoptError(f"no images (.png/.jpg/...) in {folder}")
    out = []
    for f in files:
        im = Image.open(f).convert("RGB")
        side = min(im.size)
        left, top = (im.width - side) // 2, (im.height - side) // 2
        im = im.crop((left, top, left + side, top + side)).resize((size, size), Image.BILINEAR)
        out.append(torch.from_numpy(np.asarray(im, dtype=np.float32) / 255.0).permute(2, 0, 1))
    return torch.stack(out)


def main(argv: list[str] | None = None) -> int:
    """``python -m stimopt_plugins.xdream encode IMAGES_DIR OUT.npy [generator overrides...]``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) < 3 or argv[0] != "encode":
        print("usage: python -m stimopt_plugins.xdream encode IMAGES_DIR OUT.npy [generator=deepsim generator.layer=fc6 "
              "... encode.steps=200 encode.lr=0.05]", file=sys.stderr)
        return 2
    from omegaconf import OmegaConf

    from stimopt import plugins
    from stimopt.config import compose
    from stimopt.experiment import build

    folder, out = argv[1], argv[2]
    enc = {a.split("=", 1)[0][len("encode."):]: float(a.split("=", 1)[1]) for a in argv[3:] if a.startswith("encode.")}
    cfg = compose([a for a in argv[3:] if not a.startswith("encode.")])
    try:
        plugins.load_plugins()
        generator = build("generator", cfg.generator, device=cfg.device)
        size = int(OmegaConf.select(cfg, "generator.size") or 128)
        codes = encode(generator, read_images(folder, size), steps=int(enc.get("steps", 200)), lr=enc.get("lr", 0.05))
    except StimoptError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    np.save(out, codes)
    print(f"wrote {len(codes)} codes of {codes.shape[1]} dims for {generator.describe()} to {out}")
    return 0
