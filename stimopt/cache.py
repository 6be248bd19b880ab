"""The cache folder: demo banks, demo fits and noise calibrations live here (``STIMOPT_CACHE`` moves it)."""
from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    return Path(os.environ.get("STIMOPT_CACHE") or Path.home() / ".cache" / "stimopt")
