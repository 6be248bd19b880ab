"""Images for the rig: float tensors to uint8 pixels, their request id, PNG (or .npy) files."""
from __future__ import annotations

import hashlib
import struct
import zlib
from pathlib import Path

import numpy as np
import torch


def images_to_uint8(images) -> np.ndarray:
    """[B,3,H,W] float in [0,1] -> [B,H,W,3] uint8 (one batched op)."""
    x = torch.as_tensor(images).detach().to("cpu", torch.float32)
    u8 = torch.mul(x, 255.0).add_(0.5).clamp_(0.0, 255.0).to(torch.uint8)  # round half up, one copy
    return np.ascontiguousarray(u8.numpy().transpose(0, 2, 3, 1))


def request_id(pixels: np.ndarray) -> str:
    h = hashlib.sha1(str(pixels.shape).encode())
    h.update(pixels.tobytes())
    return h.hexdigest()[:16]


def encode_pngs(pixels: np.ndarray, level: int = 0) -> list[bytes]:
    """[B,H,W,3] uint8 -> PNG files (8-bit RGB, filter 0), the row filtering done for the batch at once."""
    b, h, w, _ = pixels.shape
    rows = np.zeros((b, h, 1 + 3 * w), np.uint8)  # each scanline: filter byte 0, then RGB
    rows[:, :, 1:] = pixels.reshape(b, h, 3 * w)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    head = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
    tail = chunk(b"IEND", b"")
    return [head + chunk(b"IDAT", zlib.compress(r.tobytes(), level)) + tail for r in rows]


def write_images(folder: Path, pixels: np.ndarray, image_format: str, png_compress_level: int = 0,
                 encoded: list[bytes] = (), written: int = 0) -> list[str]:
    """The generation's image files; ``encoded``: PNG files of the first images, already made, the
    first ``written`` of them already in ``folder`` (prepare)."""
    if image_format == "npy":
        np.save(folder / "images.npy", pixels)
        return [f"images.npy#{i}" for i in range(len(pixels))]
    names = [f"img_{i:04d}.png" for i in range(len(pixels))]
    pngs = list(encoded) + encode_pngs(pixels[len(encoded):], png_compress_level)
    for name, data in list(zip(names, pngs))[written:]:  # one file per image is the protocol
        (folder / name).write_bytes(data)
    return names
