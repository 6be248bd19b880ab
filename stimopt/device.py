"""Device choice: ``auto`` picks CUDA when present, else the CPU; an unavailable device is one line."""
from __future__ import annotations

import torch

from stimopt.errors import StimoptError


def resolve_device(device: str | torch.device | None) -> torch.device:
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        raise StimoptError(f"device={device} asked for, but no CUDA GPU is available; use device=auto or device=cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError):
        raise StimoptError(f"device={device} is not a device torch knows; use auto, cpu, cuda or cuda:N") from None
    if resolved.type not in ("cpu", "cuda", "mps"):
        raise StimoptError(f"device={device} is not supported; use auto, cpu, cuda or cuda:N")
    return resolved
