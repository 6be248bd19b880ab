"""A 10M-image bank on one machine: the walk's engine time per evaluation and the surrogate's
whole-bank scan per generation, with the features memory-mapped and the graph stored as int32.

    python benchmarks/bank_10m.py --n 10000000 --tmp /big/tmp      # ~15 GB written there, removed at the end

Bank files (synthetic; images are rendered from the index by a generator, as in
bank_graph_scale.py): features.npy [N, 256] float32 (10 GB at 10M) with a power-law spectrum
(variance of the j-th principal axis ~ 1/j, axes randomly rotated): 16 blocks of 65,536 such rows
are drawn once and chunk c is (block[c % 16] + block[c // 16] rolled by c) / sqrt 2, which has the
same spectrum and makes every row distinct without a 10M x 256 x 256 rotation; graph.npy [N, k]
int32 (k=100: 4 GB; neighbours i + a fixed random offset table, cheap to write, random-access
like a real graph), coresets.npy 10 x 10,000 random rows. Each measurement runs in a fresh
process so its peak resident memory (VmHWM; RssAnon = private memory, RssFile = mapped file
pages) is its own.

The surrogate (linear neuron on the features, n_init=200, batches of 20) scans the bank's compact
copy (8-bit codes of 64 PCA axes, built once and cached in the bank folder: ``cache_s``), then
re-scores the best 0.1% per posterior draw on the full features. After the timed generations and
the memory reading, each generation is replayed from its saved state with the full-precision scan
of all 10 GB (``optimizer.scan_dims=0``): ``overlap`` = shared picks / 20.
Results: benchmarks/results/bank_10m.json.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).parent / "results" / "bank_10m.json"


def memory() -> dict:
    status = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)
    return {key: round(int(status[key].split()[0]) / 1024) for key in ("VmHWM", "VmRSS", "RssAnon", "RssFile")}


def make_bank(folder: Path, n: int, d: int, k: int) -> dict:
    from tqdm import tqdm

    rng = np.random.default_rng(0)
    t = time.perf_counter()
    step = 65536
    rot, _ = np.linalg.qr(rng.standard_normal((d, d)))
    scale = np.arange(1, d + 1) ** -0.5
    blocks = [((rng.standard_normal((step, d)) * scale) @ rot.T).astype(np.float32) for _ in range(16)]
    f = np.lib.format.open_memmap(folder / "features.npy", mode="w+", dtype=np.float32, shape=(n, d))
    g = np.lib.format.open_memmap(folder / "graph.npy", mode="w+", dtype=np.int32, shape=(n, k))
    table = rng.integers(1, n, size=(4096, k), dtype=np.int64)
    for s in tqdm(range(0, n, step), desc="10M bank files", unit="block"):
        m = min(step, n - s)
        c = s // step
        f[s:s + m] = ((blocks[c % 16] + np.roll(blocks[(c // 16) % 16], c, axis=0)) * np.float32(0.5 ** 0.5))[:m]
        rows = np.arange(s, s + m, dtype=np.int64)
        g[s:s + m] = (rows[:, None] + table[rows % 4096]) % n
        if (s // step) % 16 == 15:  # write out as we go: the page cache need not hold the whole bank
            f.flush()
            g.flush()
    f.flush()
    g.flush()
    del f, g
    np.save(folder / "coresets.npy", rng.choice(n, size=(10, 10_000), replace=False).astype(np.int64))
    return {"make_s": round(time.perf_counter() - t, 1)}


def space(folder: Path):
    import stimopt

    feats = np.load(folder / "features.npy", mmap_mode="r")
    graph = np.load(folder / "graph.npy", mmap_mode="r")
    cores = np.load(folder / "coresets.npy")
    return stimopt.BankSpace(size=len(graph), features=feats, graph=graph, coresets=tuple(cores), path=str(folder))


def walk(folder: Path, budget: int) -> dict:
    sys.path.insert(0, str(Path(__file__).parent))
    from bank_graph_scale import IndexImages, MeanTarget

    from stimopt.engine import Run
    from stimopt.objective import Objective
    from stimopt.store import RunStore
    from stimopt_plugins.imagebeagle import Walk

    base = memory()
    sp = space(folder)
    opt = Walk()
    opt.setup(sp, seed=0, budget=budget, batch_size=20)
    store = RunStore(folder / "evaluations.sqlite")
    run = Run(target=MeanTarget(), generator=IndexImages(sp), optimizer=opt, objective=Objective("max"), store=store,
              budget=budget, batch_size=20, run_dir=folder)
    run.run()
    p = run.progress
    engine = p.time_total - p.time_evaluate - p.time_generate
    store.close()
    return {"evaluations": p.n_evaluations, "generations": p.generation,
            "engine_ms_per_evaluation": round(1e3 * engine / p.n_evaluations, 3),
            "generator_ms_per_evaluation": round(1e3 * p.time_generate / p.n_evaluations, 3),
            "memory_mb_after_imports": base, "memory_mb": memory()}


def surrogate(folder: Path, generations: int) -> dict:
    import copy

    from stimopt_plugins.surrogate import SurrogateSearch

    base = memory()
    sp = space(folder)
    feats = sp.features
    w = np.random.default_rng(1).standard_normal(feats.shape[1])
    t = time.perf_counter()
    opt = SurrogateSearch(n_init=200, blas_threads=1)
    opt.setup(sp, seed=0, budget=sp.size, batch_size=20)
    setup_s = round(time.perf_counter() - t, 1)
    t = time.perf_counter()
    SurrogateSearch(n_init=200, blas_threads=1).setup(sp, seed=0, budget=sp.size, batch_size=20)
    cached_setup_s = round(time.perf_counter() - t, 1)

    def tell(codes):
        order = np.argsort(codes)
        resp = np.empty(len(codes))
        resp[order] = np.asarray(feats[codes[order]]) @ w
        opt.tell(codes, resp)

    tell(opt.ask(200))
    wall, cpu, states, picks = [], [], [], []
    for _ in range(generations):
        states.append(copy.deepcopy(opt.state_dict()))
        t, c = time.perf_counter(), time.process_time()
        codes = opt.ask(20)
        wall.append(round(time.perf_counter() - t, 2))
        cpu.append(round(time.process_time() - c, 2))
        picks.append(codes.copy())
        tell(codes)
    mem = memory()
    # Replay each generation from its saved state with the full-precision scan of all features.
    overlap, exact_wall = [], []
    ref = SurrogateSearch(n_init=200, blas_threads=1, scan_dims=0)
    ref.setup(sp, seed=0, budget=sp.size, batch_size=20)
    for state, mine in zip(states, picks):
        ref.load_state_dict(copy.deepcopy(state))
        t = time.perf_counter()
        full = ref.ask(20)
        exact_wall.append(round(time.perf_counter() - t, 2))
        overlap.append(len(set(full.tolist()) & set(mine.tolist())) / 20)
    return {"generations": generations, "batch": 20, "blas_threads": 1, "scan": {"dims": opt.scan_dims, "share": opt.scan_share},
            "setup_with_cache_build_s": setup_s, "setup_cached_s": cached_setup_s,
            "compact_bytes": int(opt.compact.codes.nbytes), "wall_s_per_generation": wall, "cpu_s_per_generation": cpu,
            "overlap_with_full_scan": overlap, "full_scan_wall_s_per_generation": exact_wall,
            "memory_mb_after_imports": base, "memory_mb": mem}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=10_000_000)
    ap.add_argument("--d", type=int, default=256)
    ap.add_argument("--k", type=int, default=100)
    ap.add_argument("--budget", type=int, default=4000)
    ap.add_argument("--generations", type=int, default=3)
    ap.add_argument("--tmp", default=None)
    ap.add_argument("--stage", default=None, help=argparse.SUPPRESS)  # walk | surrogate (a child process)
    ap.add_argument("--folder", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.stage:
        out = walk(Path(args.folder), args.budget) if args.stage == "walk" else surrogate(Path(args.folder), args.generations)
        print("RESULT " + json.dumps(out), flush=True)
        return
    folder = Path(tempfile.mkdtemp(dir=args.tmp, prefix="bank_10m-"))
    result = {"n": args.n, "d": args.d, "k": args.k, "features_bytes": args.n * args.d * 4, "graph_bytes": args.n * args.k * 4,
              "machine": f"{os.cpu_count()} CPU cores shared with other jobs"}
    try:
        result.update(make_bank(folder, args.n, args.d, args.k))
        for stage in ("walk", "surrogate"):
            proc = subprocess.run([sys.executable, __file__, "--stage", stage, "--folder", str(folder), "--budget",
                                   str(args.budget), "--generations", str(args.generations)], capture_output=True, text=True)
            lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
            result[stage] = json.loads(lines[-1][7:]) if lines else {"error": proc.stderr.strip().splitlines()[-1:]}
            result[stage]["load_average"] = round(os.getloadavg()[0], 1)
            print(stage, json.dumps(result[stage]), flush=True)
            RESULTS.write_text(json.dumps(result, indent=1))
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
