"""Building a bank in resumable stages: plan -> shards (features) -> merge -> [PCA] -> graph -> coresets -> manifest.

Every stage writes its result atomically and is skipped when that result exists, so running the
same build again continues a killed one. Shards are independent jobs: ``build_bank`` runs them in
this process, or hands them to a Hydra multirun (``launcher="joblib"`` for local processes,
``"submitit_slurm"`` for a SLURM cluster) and merges afterwards; the merged bank is the same.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

from stimopt.bank import manifest as mf
from stimopt.bank.features import FeatureExtractor, FeatureSpec, check_spec
from stimopt.bank.sources import DEFAULT_SHARD_SIZE, Shard, plan_shards, read_items, shard_items
from stimopt.errors import StimoptError

READ_CHUNK = 256  # images decoded at a time inside a shard (bounds memory)


def plan_build(source: str, out: str | Path, *, features: FeatureSpec | None = None, k: int = 100, method: str = "auto",
               nprobe: int | None = None, refine: int | None = None, pca_dim: int | None = None, n_coresets: int | None = None, coreset_size: int | None = None,
               coreset_method: str = "kcenter", image_size: int = 224, shard_size: int = DEFAULT_SHARD_SIZE, seed: int = 0,
               note: str = "") -> dict:
    """Write plan.json and the shards' item lists (once); a second call checks the options match."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise StimoptError(f"bank folder {out} is a file; give a new folder (or the folder of a build to continue)")
    features = features or FeatureSpec()
    check_spec(features)
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise StimoptError(f"graph k must be a whole number >= 1, got {k!r}")
    from stimopt.bank.coresets import METHODS

    if coreset_method not in METHODS:
        raise StimoptError(f"coreset method must be one of {', '.join(METHODS)}, got '{coreset_method}'")
    if nprobe is None:  # a compressed index's recall is capped by the lists it probes (docs/imagebeagle.md)
        nprobe = 64 if method in ("ivfpq", "ivfsq") else 16
    if refine is not None:
        from stimopt.bank.graph import refine_factor

        refine = refine_factor(method, refine)  # one line when it is not a whole number >= 1
    options = {
        "source": str(source), "features": asdict(features), "k": int(k), "method": method, "nprobe": int(nprobe),
        "refine": refine,
        "pca_dim": int(pca_dim) if pca_dim else None, "n_coresets": n_coresets, "coreset_size": coreset_size,
        "coreset_method": coreset_method, "image_size": int(image_size), "shard_size": int(shard_size), "seed": int(seed),
        "note": note,
    }
    plan_file = out / "plan.json"
    if plan_file.exists():
        plan = mf.read_json(plan_file)
        plan["options"].setdefault("coreset_method", "graph")  # banks planned before kcenter coresets existed
        plan["options"].setdefault("refine", None)  # banks planned before re-ranking
        if plan["options"] != json.loads(json.dumps(options)):
            diff = [f"{key}: {plan['options'].get(key)!r} -> {options[key]!r}" for key in options
                    if json.dumps(plan["options"].get(key)) != json.dumps(options[key])]
            raise StimoptError(f"{out} holds a build with other options ({'; '.join(diff)}); use a new folder or the same options")
        return plan
    shards = plan_shards(source, shard_size)
    n_items = sum(len(sh) for sh in shards)
    if k > n_items - 1:  # before any feature is computed (unreadable images can only lower the size)
        raise StimoptError(f"graph k={k} needs more images than the {n_items:,} in {source}; use --k {n_items - 1} or less")
    try:
        (out / "shards").mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StimoptError(f"cannot create the bank folder {out} ({exc.strerror}); give a writable folder") from None
    for s, shard in enumerate(shards):
        mf.write_json(mf.items_path(out, s), shard.to_json())
    plan = {"version": mf.VERSION, "options": options, "source_kind": shards[0].kind, "n_shards": len(shards),
            "n_items": sum(len(sh) for sh in shards)}
    mf.write_json(plan_file, plan)
    return plan


def load_shard(bank: Path, s: int) -> Shard:
    return Shard.from_json(mf.read_json(mf.items_path(bank, s)))


def compute_shard(bank: str | Path, s: int, device: str = "cpu", extractor: FeatureExtractor | None = None) -> bool:
    """Features of shard ``s`` into ``shards/NNNNN/`` (atomically). False when it was already done."""
    bank = Path(bank)
    plan = mf.read_json(bank / "plan.json")
    if not 0 <= s < plan["n_shards"]:
        raise StimoptError(f"shard {s} does not exist: {bank} has shards 0..{plan['n_shards'] - 1}")
    final = mf.shard_dir(bank, s)
    if final.exists():
        return False
    opts = plan["options"]
    extractor = extractor or FeatureExtractor(FeatureSpec(**opts["features"]), device)
    shard = load_shard(bank, s)
    items = shard_items(shard)
    feats, kept, skipped = [], [], []
    for c in range(0, len(items), READ_CHUNK):
        images, ok, bad = read_items(shard, items[c:c + READ_CHUNK], opts["image_size"])
        feats.append(extractor(images))
        kept += [c + i for i in ok]
        skipped += bad
    tmp = final.with_name(f"{final.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    np.save(tmp / "features.npy", np.concatenate(feats).astype(np.float32))
    np.save(tmp / "kept.npy", np.asarray(kept, dtype=np.int64))
    mf.write_json(tmp / "skipped.json", skipped)
    os.replace(tmp, final)
    remove_orphans(final)
    return True


def remove_orphans(final: Path) -> None:
    """Delete the half-written ``NNNNN.tmp-PID`` folders a killed job left for a shard that is now done."""
    for orphan in final.parent.glob(f"{final.name}.tmp-*"):
        shutil.rmtree(orphan, ignore_errors=True)


def run_shards_multirun(bank: Path, n_shards: int, launcher: str, overrides: list[str] | None = None,
                        stage: str = "features", todo: list[int] | None = None) -> None:
    """One Hydra multirun job per unfinished shard of a stage (features, graph), through ``hydra/launcher=<launcher>``."""
    from stimopt.bank.graph import part_path, parts_dir

    done = (lambda s: mf.shard_dir(bank, s).exists()) if stage == "features" else (
        lambda s: part_path(parts_dir(bank / "graph.npy"), s).exists())
    todo = [s for s in (range(n_shards) if todo is None else todo) if not done(s)]
    if not todo:
        return
    cmd = [sys.executable, "-m", "stimopt.bank.cli", "shard", "-m", f"bank={bank.resolve()}", f"stage={stage}",
           f"shard={','.join(map(str, todo))}", f"hydra/launcher={launcher}", *(overrides or [])]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        raise StimoptError(f"the {launcher} multirun of {stage} shard jobs failed: {' | '.join(tail)}")
    missing = [s for s in todo if not done(s)]
    if missing:
        raise StimoptError(f"{stage} shard jobs {missing} did not finish; run the build again to continue")


def merge(bank: Path, plan: dict) -> tuple[np.ndarray, np.ndarray]:
    """Concatenate shard features in shard order -> features.npy, offsets.npy (skipped when done)."""
    n_shards = plan["n_shards"]
    missing = [s for s in range(n_shards) if not mf.shard_dir(bank, s).exists()]
    if missing:
        raise StimoptError(f"cannot merge {bank}: shards {missing[:10]} are not computed yet")
    if (bank / "offsets.npy").exists():
        return np.load(bank / "features.npy", mmap_mode="r"), np.load(bank / "offsets.npy")
    counts = [len(np.load(mf.shard_dir(bank, s) / "kept.npy")) for s in range(n_shards)]
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    if offsets[-1] < 2:
        raise StimoptError(f"bank {bank} has {offsets[-1]} readable images; a bank needs at least 2")
    d = np.load(mf.shard_dir(bank, 0) / "features.npy", mmap_mode="r").shape[1]
    feats = np.lib.format.open_memmap(bank / "features.npy", mode="w+", dtype=np.float32, shape=(int(offsets[-1]), d))
    for s in range(n_shards):
        feats[offsets[s]:offsets[s + 1]] = np.load(mf.shard_dir(bank, s) / "features.npy", mmap_mode="r")
    feats.flush()
    del feats
    np.save(bank / "offsets.npy.tmp.npy", offsets)
    os.replace(bank / "offsets.npy.tmp.npy", bank / "offsets.npy")
    return np.load(bank / "features.npy", mmap_mode="r"), offsets


def apply_pca(bank: Path, feats: np.ndarray, dim: int, seed: int) -> np.ndarray:
    import faiss

    out = bank / "features_pca.npy"
    if (bank / "pca.npz").exists() and out.exists():
        return np.load(out, mmap_mode="r")
    n, d = feats.shape
    if not 1 <= dim <= d:
        raise StimoptError(f"pca_dim must be in 1..{d} (the feature dimension), got {dim}")
    sample = np.sort(np.random.default_rng(seed).choice(n, size=min(n, 100_000), replace=False))
    pca = faiss.PCAMatrix(d, dim)
    pca.train(np.ascontiguousarray(feats[sample], dtype=np.float32))
    res = np.lib.format.open_memmap(out, mode="w+", dtype=np.float32, shape=(n, dim))
    for s in range(0, n, 65536):
        res[s:s + 65536] = pca.apply(np.ascontiguousarray(feats[s:s + 65536], dtype=np.float32))
    res.flush()
    np.savez(bank / "pca.npz", A=faiss.vector_to_array(pca.A).reshape(dim, d), b=faiss.vector_to_array(pca.b))
    return np.load(out, mmap_mode="r")


def graph_vectors(bank: Path, plan: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The merged features, the vectors the graph is built on (the features, or their PCA) and the shard offsets."""
    feats, offsets = merge(bank, plan)
    opts = plan["options"]
    return feats, (apply_pca(bank, feats, opts["pca_dim"], opts["seed"]) if opts["pca_dim"] else feats), offsets


def compute_graph_shard(bank: str | Path, s: int) -> bool:
    """Graph stage, one job: the neighbours of shard ``s``'s images (False when already done)."""
    from stimopt.bank.graph import choose_method, parts_dir, search_blocks

    bank = Path(bank)
    plan = mf.read_json(bank / "plan.json")
    if not 0 <= s < plan["n_shards"]:
        raise StimoptError(f"shard {s} does not exist: {bank} has shards 0..{plan['n_shards'] - 1}")
    opts = plan["options"]
    _, vectors, offsets = graph_vectors(bank, plan)
    method = choose_method(*vectors.shape, opts["method"])
    parts = parts_dir(bank / "graph.npy")
    if method != "exact" and not (parts / "index.faiss").exists():
        raise StimoptError(f"graph job for shard {s}: {parts / 'index.faiss'} is missing; run `stimopt-bank build` to prepare it")
    block = {s: (int(offsets[s]), int(offsets[s + 1]))}
    return search_blocks(vectors, opts["k"], method, parts, block, opts["nprobe"]) > 0


def finish(bank: str | Path, log=None, launcher: str | None = None, launcher_overrides: list[str] | None = None) -> dict:
    """Merge, PCA, graph, coresets and manifest (each stage skipped when already done). The graph is
    searched shard by shard (one block of query rows per feature shard), as multirun jobs with a launcher."""
    from stimopt.bank.coresets import build_coresets
    from stimopt.bank.graph import build_graph

    bank = Path(bank)
    plan = mf.read_json(bank / "plan.json")
    opts = plan["options"]
    times = {}
    t = time.perf_counter()
    feats, vectors, offsets = graph_vectors(bank, plan)  # every shard is done from here on
    for s in range(plan["n_shards"]):
        remove_orphans(mf.shard_dir(bank, s))
    times["merge" if not opts["pca_dim"] else "merge_pca"] = time.perf_counter() - t
    graph_info_file = bank / "graph.json"
    t = time.perf_counter()
    if graph_info_file.exists():
        graph_info = mf.read_json(graph_info_file)
    else:
        if log:
            log(f"kNN graph of {len(vectors):,} x {vectors.shape[1]} (k={opts['k']}), {plan['n_shards']} blocks")
        blocks = [(int(offsets[s]), int(offsets[s + 1])) for s in range(plan["n_shards"])]
        run_blocks = None
        if launcher:
            def run_blocks(todo):
                run_shards_multirun(bank, plan["n_shards"], launcher, launcher_overrides, stage="graph", todo=todo)
        graph_info = build_graph(np.asarray(vectors), opts["k"], bank / "graph.npy", opts["method"], opts["nprobe"],
                                 seed=opts["seed"], blocks=blocks, run_blocks=run_blocks, refine=opts.get("refine"))
        mf.write_json(graph_info_file, graph_info)
    times["graph"] = time.perf_counter() - t
    graph = np.load(bank / "graph.npy", mmap_mode="r")
    t = time.perf_counter()
    if not (bank / "coresets.npy").exists():
        cores = build_coresets(graph, opts["n_coresets"], opts["coreset_size"], seed=opts["seed"], features=vectors,
                               method=opts.get("coreset_method", "graph"))
        np.save(bank / "coresets.tmp.npy", cores)
        os.replace(bank / "coresets.tmp.npy", bank / "coresets.npy")
    cores = np.load(bank / "coresets.npy", mmap_mode="r")
    times["coresets"] = time.perf_counter() - t
    skipped = []
    for s in range(plan["n_shards"]):
        skipped += mf.read_json(mf.shard_dir(bank, s) / "skipped.json")
    manifest = {
        "version": mf.VERSION, "size": int(offsets[-1]), "source": opts["source"], "source_kind": plan["source_kind"],
        "n_shards": plan["n_shards"], "image_size": opts["image_size"], "features": opts["features"],
        "feature_dim": int(feats.shape[1]), "pca_dim": opts["pca_dim"], "graph": graph_info,
        "coresets": {"n": int(cores.shape[0]), "size": int(cores.shape[1]), "method": opts.get("coreset_method", "graph")},
        "skipped": {"count": len(skipped), "items": skipped[:mf.MAX_LISTED_SKIPS]}, "note": opts.get("note", ""),
        "stage_s": {k: round(v, 2) for k, v in times.items()},
    }
    mf.write_json(bank / "manifest.json", manifest)
    return manifest


def build_bank(source: str, out: str | Path, *, launcher: str | None = None, launcher_overrides: list[str] | None = None,
               device: str = "cpu", log=None, **options) -> dict:
    """Build (or continue building) a bank from ``source`` into ``out``; returns the manifest."""
    out = Path(out)
    t0 = time.perf_counter()
    if (out / "manifest.json").exists():
        plan_build(source, out, **options)  # same options, or a clear error
        return mf.load_manifest(out)
    plan = plan_build(source, out, **options)
    t = time.perf_counter()
    if launcher:
        run_shards_multirun(out, plan["n_shards"], launcher, launcher_overrides)
    else:
        extractor = None
        for s in range(plan["n_shards"]):
            if mf.shard_dir(out, s).exists():
                continue
            extractor = extractor or FeatureExtractor(FeatureSpec(**plan["options"]["features"]), device)
            if log:
                log(f"shard {s + 1}/{plan['n_shards']}")
            compute_shard(out, s, device, extractor)
    shards_s = time.perf_counter() - t
    manifest = finish(out, log, launcher, launcher_overrides)
    manifest["stage_s"] = {"shards": round(shards_s, 2), **manifest["stage_s"]}
    manifest["build_s"] = round(time.perf_counter() - t0, 2)
    mf.write_json(out / "manifest.json", manifest)
    return manifest
