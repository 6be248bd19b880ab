"""Compressed graph indexes at scale: build time, index size and recall@10 on power-law synthetic data.

    python benchmarks/bank_index_scale.py --n 1000000 --methods ivfpq,ivfsq --tmp /big/tmp

Data: Gaussian vectors whose variance falls as a power law over dimensions (variance of the i-th
principal axis ~ i^-alpha, alpha 1 by default, as reported for CNN and visual-cortex
representations), randomly rotated so no axis is special; unlike clustered blobs there are no
easy clusters for the IVF lists to find. Written as a memory-mapped .npy under --tmp (removed at
the end). For each method: the bank's own graph stage (``prepare_index`` then ``build_graph``:
k=100 neighbours of every vector, blocks of 65,536 queries), recall@10 of the finished graph
against exact search on 1,000 queries, and the recall of the same index at other nprobe values
on those queries. Results (appended per method, so a killed run keeps what finished) go to
benchmarks/results/bank_index_scale.json, with a projection to 30M from the measured rates.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).parent / "results" / "bank_index_scale.json"


def power_law(path: Path, n: int, d: int, alpha: float, seed: int = 0) -> np.ndarray:
    from tqdm import tqdm

    rng = np.random.default_rng(seed)
    rotation, _ = np.linalg.qr(rng.standard_normal((d, d)))
    scale = (np.arange(1, d + 1) ** (-alpha / 2)).astype(np.float32)
    mix = (scale[:, None] * rotation).astype(np.float32)
    x = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(n, d))
    for s in tqdm(range(0, n, 100_000), desc="power-law data", unit="block"):
        m = min(100_000, n - s)
        x[s:s + m] = rng.standard_normal((m, d), dtype=np.float32) @ mix
    x.flush()
    return np.load(path, mmap_mode="r")


def recall_sweep(x, index_file: Path, method: str, k: int, nprobes: list[int], n_queries: int = 1000) -> dict:
    import faiss

    from stimopt.bank.graph import drop_self
    from stimopt.bank.index import exact_knn

    rows = np.sort(np.random.default_rng(0).choice(len(x), size=min(len(x), n_queries), replace=False))
    q = np.ascontiguousarray(x[rows], dtype=np.float32)
    truth = drop_self(exact_knn(q, x, 11), rows, 10)
    index = faiss.read_index(str(index_file))
    out = {}
    for nprobe in nprobes:
        index.nprobe = nprobe
        t = time.perf_counter()
        ids = drop_self(index.search(q, k + 1)[1], rows, k)[:, :10]
        dt = time.perf_counter() - t
        hits = sum(len(np.intersect1d(a, b)) for a, b in zip(truth, ids))
        out[str(nprobe)] = {"recall_at_10": round(hits / truth.size, 4), "ms_per_query": round(1e3 * dt / len(q), 3)}
    return out


def run_method(x, method: str, k: int, nprobe: int, nprobes: list[int], work: Path) -> dict:
    import faiss

    from stimopt.bank.graph import build_graph, parts_dir, prepare_index

    out = work / f"graph-{method}.npy"
    parts = parts_dir(out)
    shutil.rmtree(parts, ignore_errors=True)
    parts.mkdir(parents=True)
    t, c = time.perf_counter(), time.process_time()
    prepare_index(x, method, parts)
    index_s, index_cpu = time.perf_counter() - t, time.process_time() - c
    index_bytes = (parts / "index.faiss").stat().st_size
    sweep = recall_sweep(x, parts / "index.faiss", method, k, nprobes)
    t, c = time.perf_counter(), time.process_time()
    info = build_graph(x, k, out, method=method, nprobe=nprobe, recall_queries=1000)
    graph_s, graph_cpu = time.perf_counter() - t, time.process_time() - c
    out.unlink(missing_ok=True)
    return {"method": method, "index": info.get("index"), "index_bytes": index_bytes,
            "vectors_bytes": int(x.shape[0] * x.shape[1] * 4), "compression": round(x.shape[0] * x.shape[1] * 4 / index_bytes, 1),
            "index_build_s": round(index_s, 1), "index_build_cpu_s": round(index_cpu, 1),
            "graph_search_s": round(graph_s, 1), "graph_search_cpu_s": round(graph_cpu, 1),
            "recall_at_10": info["recall_at_10"], "recall_queries": info["recall_queries"], "nprobe": nprobe,
            "recall_by_nprobe": sweep, "faiss_threads": faiss.omp_get_max_threads(),
            "load_average_after": round(os.getloadavg()[0], 1)}


def projection(r: dict, n: int, target: float = 30e6) -> dict:
    """Index build ~ N (training on a sample of 64 nlist ~ sqrt(N) rows is small next to adding);
    graph search ~ N^1.5 (each query scans nlist centres + nprobe lists of N/nlist, nlist ~ sqrt(N))."""
    f = target / n
    search_cpu_h = r["graph_search_cpu_s"] * f ** 1.5 / 3600
    return {"n": int(target), "index_build_cpu_h": round(r["index_build_cpu_s"] * f / 3600, 2),
            "graph_search_cpu_core_h": round(search_cpu_h, 1),
            "index_bytes": int(r["index_bytes"] * f), "graph_int32_bytes_k100": int(target * 100 * 4)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, nargs="+", default=[1_000_000])
    ap.add_argument("--d", type=int, default=256)
    ap.add_argument("--k", type=int, default=100)
    ap.add_argument("--alpha", type=float, default=1.0)
    ap.add_argument("--methods", default="ivfpq,ivfsq")
    ap.add_argument("--nprobe", type=int, default=16)
    ap.add_argument("--sweep", default="4,16,64")
    ap.add_argument("--tmp", default=None, help="folder for the data (n x d x 4 bytes); default: the system temp folder")
    args = ap.parse_args()
    results = json.loads(RESULTS.read_text()) if RESULTS.exists() else {"runs": []}
    results["data"] = f"Gaussian, variance of axis i ~ i^-{args.alpha}, randomly rotated, d={args.d}"
    results["machine"] = f"{os.cpu_count()} CPU cores shared with other jobs"
    work = Path(tempfile.mkdtemp(dir=args.tmp, prefix="bank_index_scale-"))
    try:
        for n in args.n:
            x = power_law(work / "x.npy", n, args.d, args.alpha)
            for method in args.methods.split(","):
                r = run_method(x, method, args.k, args.nprobe, [int(v) for v in args.sweep.split(",")], work)
                r.update(n=n, d=args.d, k=args.k, projection_30M=projection(r, n))
                print(json.dumps(r), flush=True)
                results["runs"] = [o for o in results["runs"] if (o["n"], o["method"], o["k"]) != (n, method, args.k)] + [r]
                RESULTS.parent.mkdir(exist_ok=True)
                RESULTS.write_text(json.dumps(results, indent=1))
            del x
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
