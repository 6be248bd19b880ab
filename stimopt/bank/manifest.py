"""The bank folder's layout and its JSON files (written atomically: a killed build never leaves half a file).

    BANK/plan.json                 what to build (source, shards, feature layer, k, coresets)
    BANK/shards/items-NNNNN.json   the items of shard NNNNN (names, or tar offsets)
    BANK/shards/NNNNN/             one finished shard: features.npy, kept.npy, skipped.json
    BANK/features.npy              [N, d] float32, bank order = shard order (memory-mapped)
    BANK/offsets.npy               [n_shards + 1] first bank index of each shard
    BANK/features_pca.npy, pca.npz only with pca_dim: the vectors the graph was built on
    BANK/graph.npy                 [N, k] int32 nearest other images, nearest first
    BANK/coresets.npy              [n_coresets, size] int64
    BANK/manifest.json             written last: the bank is complete when it exists
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from stimopt.errors import StimoptError

VERSION = 1
MAX_LISTED_SKIPS = 1000
REQUIRED_KEYS = ("version", "size", "image_size", "features", "graph", "coresets", "skipped", "n_shards", "source_kind",
                 "feature_dim")


def write_json(path: Path, data) -> None:
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1, default=str))
    os.replace(tmp, path)


def read_json(path: Path):
    return json.loads(Path(path).read_text())


def shard_dir(bank: Path, s: int) -> Path:
    return Path(bank) / "shards" / f"{s:05d}"


def items_path(bank: Path, s: int) -> Path:
    return Path(bank) / "shards" / f"items-{s:05d}.json"


def load_manifest(bank: str | Path) -> dict:
    path = Path(bank) / "manifest.json"
    if not path.exists():
        if (Path(bank) / "plan.json").exists():
            raise StimoptError(f"bank {bank} is not finished building; run `stimopt-bank build` again with the same arguments to continue it")
        raise StimoptError(f"{bank} is not an image bank (no manifest.json); build one with `stimopt-bank build SOURCE {bank}`")
    fix = f"remove {path} and run the same `stimopt-bank build` again to rewrite it (finished stages are kept)"
    try:
        manifest = read_json(path)
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise StimoptError(f"bank {bank}: manifest.json cannot be read ({_short(exc)}); {fix}") from None
    if not isinstance(manifest, dict):
        raise StimoptError(f"bank {bank}: manifest.json is not a JSON object; {fix}")
    if manifest.get("version") != VERSION:
        raise StimoptError(f"bank {bank} has format version {manifest.get('version')}, this stimopt reads {VERSION}; rebuild it")
    missing = [key for key in REQUIRED_KEYS if key not in manifest]
    if missing:
        raise StimoptError(f"bank {bank}: manifest.json lacks {', '.join(missing)}; {fix}")
    for key in ("size", "image_size"):
        if isinstance(manifest[key], bool) or not isinstance(manifest[key], int) or manifest[key] < 1:
            raise StimoptError(f"bank {bank}: manifest.json has {key}={manifest[key]!r}, not a positive whole number; {fix}")
    if not isinstance(manifest["graph"], dict) or "k" not in manifest["graph"]:
        raise StimoptError(f"bank {bank}: manifest.json has no graph.k; {fix}")
    return manifest


def _short(exc: Exception) -> str:
    return str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__


def info_text(manifest: dict, path: str | Path) -> str:
    f, g, c, sk = manifest["features"], manifest["graph"], manifest["coresets"], manifest["skipped"]
    lines = [
        f"bank        {path}",
        f"images      {manifest['size']:,} from {manifest['source_kind']} source ({manifest['n_shards']} shards), stored at {manifest['image_size']} px",
        f"features    {f['model']}" + ("" if f["model"] == "pixels" else f" {f['layer']}")
        + f" at {f['input_size']} px -> {manifest['feature_dim']} dims"
        + (f", PCA to {manifest['pca_dim']}" if manifest.get("pca_dim") else "")
        + (f" ({f['weights']} weights)" if f["weights"] != "pretrained" and f["model"] != "pixels" else ""),
    ]
    if manifest.get("note"):
        lines.append(f"note        {manifest['note']}")
    lines += [
        f"graph       k={g['k']} ({g['method']}"
        + (f", nprobe {g['nprobe']}" if g.get("nprobe") else "") + (f", re-ranked x{g['refine']}" if g.get("refine", 1) > 1 else "")
        + f"), recall@10 vs exact = {g['recall_at_10']}"
        + (f" on {g['recall_queries']} queries" if g.get("recall_queries") else ""),
        f"coresets    {c['n']} x {c['size']} ({c.get('method', 'graph')})",
        f"skipped     {sk['count']} unreadable images" + (": " + ", ".join(s[0] for s in sk["items"][:5]) if sk["count"] else ""),
    ]
    if manifest.get("build_s"):
        lines.append(f"build       {manifest['build_s']:.1f} s ({', '.join(f'{k} {v:.1f}' for k, v in manifest.get('stage_s', {}).items())})")
    return "\n".join(lines)
