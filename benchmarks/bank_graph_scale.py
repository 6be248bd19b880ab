"""Scale of ImageBeagle's machinery on synthetic data.

    python benchmarks/bank_graph_scale.py graph --n 1000000 --d 256 --k 100   # kNN graph build, recall@10, 30M projection
    python benchmarks/bank_graph_scale.py walk --n 1000000                     # walking a 1M-image bank: memory, engine time

``graph``: clustered vectors (1,000 Gaussian clusters), the bank's own ``build_graph`` (IVF-Flat,
nlist ~ 4 sqrt(N), nprobe 16), recall@10 against exact search on 1,000 queries; throughput is
turned into a projection for 30M images (cost grows as N^1.5 with nlist ~ sqrt(N)).
``walk``: a memory-mapped 1M x k graph (random edges unless --graph PATH) and 10 coresets of 10k;
the real engine loop (run store in SQLite, checkpoint every generation) with the walk optimizer,
a generator that makes 8x8 images from indices and a trivial target, so what is timed is the
engine + optimizer + store. Resident memory is the process's peak (VmHWM), with the baseline
after imports.
"""
from __future__ import annotations

import argparse
import os
import resource
import tempfile
import time
from pathlib import Path

import numpy as np


def rss_mb() -> float:
    """Peak resident memory of this process (VmHWM; unlike ru_maxrss it is not inherited over fork/exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def clustered(n: int, d: int, seed: int = 0, n_clusters: int = 1000) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_clusters, d)).astype(np.float32) * 4
    out = np.empty((n, d), np.float32)
    for s in range(0, n, 100_000):
        m = min(100_000, n - s)
        out[s:s + m] = centres[rng.integers(0, n_clusters, m)] + rng.standard_normal((m, d), dtype=np.float32)
    return out


def graph_bench(args) -> None:
    import faiss

    from stimopt.bank.graph import build_graph

    print(f"faiss {faiss.__version__}, {faiss.omp_get_max_threads()} threads; machine load average {os.getloadavg()[0]:.1f}")
    x = clustered(args.n, args.d)
    out = Path(args.out or tempfile.mkdtemp()) / "graph.npy"
    out.parent.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    cpu = time.process_time()
    info = build_graph(x, args.k, out, method=args.method, nprobe=args.nprobe, recall_queries=1000)
    wall, cpu = time.perf_counter() - t, time.process_time() - cpu
    print(f"{args.n:,} x {args.d}, k={args.k}, {info['method']} nprobe={info['nprobe']}: "
          f"{wall:.0f} s wall, {cpu:.0f} s CPU, recall@10 = {info['recall_at_10']:.3f}")
    scale = (30e6 / args.n) ** 1.5
    print(f"projection to 30M x {args.k} (cost ~ N^1.5): {wall * scale / 3600:.0f} h wall on this machine's 2 cores; "
          f"{cpu * scale / 3600:.0f} CPU-core hours (e.g. {cpu * scale / 3600 / 64:.1f} h on 64 cores, "
          f"as SLURM shard jobs each searching its own queries against a shared index)")
    print(f"graph written to {out}")


class IndexImages:
    """Generator stand-in: 8x8 images whose colour encodes the index (cheap, deterministic)."""

    def __init__(self, space):
        import stimopt

        self.space = space
        self.space_type = stimopt.BankSpace

    def generate(self, codes):
        import torch

        c = torch.as_tensor(np.asarray(codes), dtype=torch.float32)
        v = ((c * 0.6180339887) % 1.0).view(-1, 1, 1, 1)
        return v.expand(-1, 3, 8, 8)

    def describe(self):
        return "index-images"


class MeanTarget:
    n_outputs = 1

    def evaluate(self, images):
        return images.mean(dim=(1, 2, 3))

    def state_dict(self):
        return {}

    def load_state_dict(self, state):
        pass

    def describe(self):
        return "mean"

    def close(self):
        pass


def make_random_graph(path: Path, n: int, k: int) -> None:
    g = np.lib.format.open_memmap(path, mode="w+", dtype=np.int32, shape=(n, k))
    rng = np.random.default_rng(0)
    for s in range(0, n, 100_000):
        m = min(100_000, n - s)
        g[s:s + m] = rng.integers(0, n, size=(m, k), dtype=np.int32)
    g.flush()


def walk_bench(args) -> None:
    import stimopt
    from stimopt.bank.coresets import build_coresets
    from stimopt.engine import Run
    from stimopt.objective import Objective
    from stimopt.store import RunStore
    from stimopt_plugins.imagebeagle import Walk

    base = rss_mb()
    folder = Path(args.out or tempfile.mkdtemp())
    folder.mkdir(parents=True, exist_ok=True)
    if args.graph:
        graph = np.load(args.graph, mmap_mode="r")
    else:
        path = folder / "graph.npy"
        if not path.exists():  # make the bank, then measure the walk in a fresh process
            make_random_graph(path, args.n, args.k)
            import subprocess
            import sys

            subprocess.run([sys.executable, *sys.argv[:1], "walk", "--graph", str(path), "--out", str(folder),
                            "--budget", str(args.budget)], check=True)
            return
        graph = np.load(path, mmap_mode="r")
    feats_path = folder / "features.npy"
    if not feats_path.exists():
        np.lib.format.open_memmap(feats_path, mode="w+", dtype=np.float32, shape=(len(graph), 256))
    feats = np.load(feats_path, mmap_mode="r")
    (folder / "evaluations.sqlite").unlink(missing_ok=True)
    cores_path = folder / "coresets.npy"
    if not cores_path.exists():  # part of the bank build, as in a real bank (it touches the whole graph)
        import subprocess
        import sys

        subprocess.run([sys.executable, "-c", "import sys, numpy as np; from stimopt.bank.coresets import build_coresets; "
                        "np.save(sys.argv[2], build_coresets(np.load(sys.argv[1], mmap_mode='r'), 10, 10_000, method='graph'))",
                        str(args.graph or folder / "graph.npy"), str(cores_path)], check=True)
    cores = np.load(cores_path, mmap_mode="r")
    cores = tuple(cores[i] for i in range(len(cores)))
    print(f"bank: {len(graph):,} images, graph {graph.shape} int32 and coresets {len(cores)} x {len(cores[0]):,} memory-mapped")
    space = stimopt.BankSpace(size=len(graph), features=feats, graph=graph, coresets=cores, path=str(folder))
    rss_before = rss_mb()
    opt = Walk()
    opt.setup(space, seed=0, budget=args.budget, batch_size=20)
    store = RunStore(folder / "evaluations.sqlite")
    run = Run(target=MeanTarget(), generator=IndexImages(space), optimizer=opt, objective=Objective("max"), store=store,
              budget=args.budget, batch_size=20, run_dir=folder)
    run.run()
    p = run.progress
    engine = p.time_total - p.time_evaluate - p.time_generate
    state = len(__import__("pickle").dumps(opt.state_dict()))
    print(f"walked {p.n_evaluations:,} evaluations in {p.generation} generations (checkpoint every generation)")
    print(f"engine time per evaluation, excluding target and generator: {1e3 * engine / p.n_evaluations:.3f} ms "
          f"(optimizer + SQLite store + checkpoint); generator {1e3 * p.time_generate / p.n_evaluations:.3f} ms")
    print(f"peak resident memory: {rss_mb():.0f} MB (after imports {base:.0f} MB, before the walk {rss_before:.0f} MB); "
          f"optimizer checkpoint {state / 1e3:.0f} kB")
    store.close()


def main() -> None:
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    g = sub.add_parser("graph")
    g.add_argument("--n", type=int, default=1_000_000)
    g.add_argument("--d", type=int, default=256)
    g.add_argument("--k", type=int, default=100)
    g.add_argument("--method", default="ivf")
    g.add_argument("--nprobe", type=int, default=16)
    g.add_argument("--out", default=None)
    w = sub.add_parser("walk")
    w.add_argument("--n", type=int, default=1_000_000)
    w.add_argument("--k", type=int, default=100)
    w.add_argument("--budget", type=int, default=10_000)
    w.add_argument("--graph", default=None, help="an existing graph.npy (default: random edges)")
    w.add_argument("--out", default=None)
    args = p.parse_args()
    graph_bench(args) if args.cmd == "graph" else walk_bench(args)


if __name__ == "__main__":
    main()
