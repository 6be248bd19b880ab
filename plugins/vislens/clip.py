"""CLIP image embeddings with open_clip, batched and cached (Vis-Lens works in CLIP space).

``model``: any open_clip model name (default ViT-H-14, as in the paper). ``pretrained``: an
open_clip pretrained tag (default laion2b_s32b_b79k, the encoder the SD1.5 IP-Adapter was trained
with) looked up in the Hugging Face cache only, or a path to a local checkpoint file. Nothing is
downloaded: missing weights are one StimoptError line saying which file goes where.
Embeddings are the projected image features *before* L2 normalization (what the IP-Adapter
consumes); callers normalize where a method asks for it (BrainACTIV).
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from stimopt.errors import StimoptError

DEFAULT_MODEL = "ViT-H-14"
DEFAULT_PRETRAINED = "laion2b_s32b_b79k"


def _weights_file(model: str, pretrained: str) -> str:
    """A local file for (model, pretrained): the path itself, or the HF-cache copy of the tag."""
    if os.path.isfile(pretrained):
        return pretrained
    import open_clip

    if model not in open_clip.list_models():
        raise StimoptError(f"unknown open_clip model '{model}'; e.g. {', '.join(open_clip.list_models()[:6])}, ...")
    cfg = open_clip.get_pretrained_cfg(model, pretrained)
    if not cfg:
        tags = ", ".join(open_clip.list_pretrained_tags_by_model(model)) or "none"
        raise StimoptError(f"'{pretrained}' is neither a file nor an open_clip pretrained tag of {model} (tags: {tags})")
    hub = cfg.get("hf_hub", "").rstrip("/")
    if hub:
        from huggingface_hub import constants, try_to_load_from_cache

        for fname in ("open_clip_model.safetensors", "open_clip_pytorch_model.bin"):
            found = try_to_load_from_cache(hub, fname)
            if isinstance(found, str):
                return found
        raise StimoptError(
            f"CLIP weights {model}/{pretrained} are not on this machine: put {hub}/open_clip_pytorch_model.bin "
            f"in the Hugging Face cache ({constants.HF_HUB_CACHE}) or pass clip.pretrained=PATH to the file"
        )
    raise StimoptError(
        f"CLIP weights {model}/{pretrained} are not on this machine: download {cfg.get('url')} and pass clip.pretrained=PATH to it"
    )


class ClipEmbedder:
    """Batched open_clip image encoder: images [B,3,H,W] in [0,1] -> embeddings [B, D]."""

    def __init__(self, model: str = DEFAULT_MODEL, pretrained: str = DEFAULT_PRETRAINED, device="cpu", batch_size: int = 32):
        import open_clip

        path = _weights_file(model, str(pretrained))
        try:
            net = open_clip.create_model(model, pretrained=path, device=device)
        except Exception as exc:
            raise StimoptError(f"CLIP weights {path} do not load into open_clip model {model}: {str(exc).splitlines()[0]}") from None
        self.net = net.eval()
        for p in self.net.parameters():
            p.requires_grad_(False)
        self.name, self.pretrained, self.device, self.batch_size = model, str(pretrained), torch.device(device), int(batch_size)
        size = self.net.visual.image_size
        self.size = size if isinstance(size, int) else size[0]
        mean = getattr(self.net.visual, "image_mean", None) or open_clip.OPENAI_DATASET_MEAN
        std = getattr(self.net.visual, "image_std", None) or open_clip.OPENAI_DATASET_STD
        self.mean = torch.tensor(mean, device=self.device).view(1, 3, 1, 1)
        self.std = torch.tensor(std, device=self.device).view(1, 3, 1, 1)

    @property
    def key(self) -> str:
        tag = os.path.basename(self.pretrained) if os.path.isfile(self.pretrained) else self.pretrained
        return f"{self.name}-{tag}".replace("/", "_")

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        out = []
        for i in range(0, len(images), self.batch_size):
            x = images[i:i + self.batch_size].to(self.device, torch.float32)
            x = F.interpolate(x, size=(self.size, self.size), mode="bicubic", antialias=True, align_corners=False).clamp(0, 1)
            out.append(self.net.encode_image((x - self.mean) / self.std).float().cpu())
        return torch.cat(out)


def cached_embeddings(embedder: ClipEmbedder, images: torch.Tensor, cache_dir: str | Path | None, tag: str) -> torch.Tensor:
    """Embeddings of ``images``, read from / written to ``cache_dir/clip_<model>_<tag>_<hash>.npy``.

    The hash covers the images' bytes, so a changed bank never reuses stale embeddings.
    """
    if cache_dir is None:
        return embedder(images)
    digest = hashlib.sha1(images[:, :, ::8, ::8].contiguous().numpy().tobytes()).hexdigest()[:12]
    path = Path(cache_dir) / f"clip_{embedder.key}_{tag}_{len(images)}_{digest}.npy"
    if path.is_file():
        return torch.from_numpy(np.load(path))
    emb = embedder(images)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npy")
    np.save(tmp, emb.numpy())
    os.replace(tmp, path)
    return emb
