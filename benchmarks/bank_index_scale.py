"""Compressed graph indexes at scale: build time, index size and recall@10 on power-law synthetic data.

    python benchmarks/bank_index_scale.py --n 1000000 --methods ivfpq,ivfsq --tmp /big/tmp

Data: Gaussian vectors whose variance falls as a power law over dimensions (variance of the i-th
principal axis ~ i^-alpha, alpha 1 by default, as reported for CNN and visual-cortex
representations), randomly rotated so no axis is special; unlike clustered blobs there are no
easy clusters for the IVF lists to find. Written as a memory-mapped .npy under --tmp (removed at
the end). Exact neighbours of 1,000 sampled queries (the bank streamed in blocks) once per N; for
each method: the bank's own ``prepare_index`` (timed: build time, index size), recall@10 (of k=100)
and ms/query of the bank's own search (``refined_search``: the index's shortlist of refine x
(k + 1), re-ranked exactly on the memory-mapped rows) for each nprobe x refine, and the graph jobs'
own ``search_blocks`` at the chosen --nprobe/--refine timed on --graph-rows query rows (the rate
times N gives the whole graph's CPU time). Results (appended per method, so a killed run keeps
what finished) go to benchmarks/results/bank_index_scale.json, with a projection to 30M from the
measured rates.
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


def vmhwm_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return round(int(line.split()[1]) / 1024, 1)
    return float("nan")


def sample_truth(x, n_queries: int = 1000):
    """1,000 sampled rows and their exact 10 nearest other rows (the bank streamed in blocks)."""
    from stimopt.bank.graph import drop_self
    from stimopt.bank.index import exact_knn

    rows = np.sort(np.random.default_rng(0).choice(len(x), size=min(len(x), n_queries), replace=False))
    t = time.perf_counter()
    truth = drop_self(exact_knn(np.ascontiguousarray(x[rows], dtype=np.float32), x, 11), rows, 10)
    return rows, truth, time.perf_counter() - t


def recall_sweep(x, index_file: Path, k: int, rows, truth, nprobes: list[int], refines: list[int]) -> dict:
    """recall@10 (of the k=100 neighbours' first 10) and ms per query for each nprobe x refine, on
    the sampled queries, with the bank's own search (``refined_search``: shortlist + exact re-rank)."""
    import faiss
    from tqdm import tqdm

    from stimopt.bank.graph import drop_self
    from stimopt.bank.index import refined_search

    q = np.ascontiguousarray(x[rows], dtype=np.float32)
    index = faiss.read_index(str(index_file))
    ivf = faiss.extract_index_ivf(index)
    out = {}
    for nprobe, refine in tqdm([(a, b) for a in nprobes for b in refines], desc="nprobe x refine sweep", leave=False):
        ivf.nprobe = nprobe
        t = time.perf_counter()
        ids = drop_self(refined_search(index, x, q, k + 1, refine), rows, k)[:, :10]
        dt = time.perf_counter() - t
        hits = sum(len(np.intersect1d(a, b)) for a, b in zip(truth, ids))
        out[f"nprobe={nprobe},refine={refine}"] = {"nprobe": nprobe, "refine": refine, "recall_at_10": round(hits / truth.size, 4),
                                                  "ms_per_query": round(1e3 * dt / len(q), 3)}
    return out


def run_method(x, method: str, k: int, nprobe: int, refine: int, nprobes: list[int], refines: list[int], rows, truth,
               work: Path, graph_rows: int) -> dict:
    """Build the bank's index (``prepare_index``), sweep nprobe x refine on the sample, then time the
    graph jobs' own search (``search_blocks``) at the chosen setting on ``graph_rows`` query rows."""
    import faiss

    from stimopt.bank.graph import parts_dir, prepare_index, search_blocks

    out = work / f"graph-{method}.npy"
    parts = parts_dir(out)
    shutil.rmtree(parts, ignore_errors=True)
    parts.mkdir(parents=True)
    t, c = time.perf_counter(), time.process_time()
    prepare_index(x, method, parts, refine=refine)
    index_s, index_cpu = time.perf_counter() - t, time.process_time() - c
    index_bytes = (parts / "index.faiss").stat().st_size
    sweep = recall_sweep(x, parts / "index.faiss", k, rows, truth, nprobes, refines)
    n = len(x)
    m = min(n, graph_rows)
    blocks = {b: (s, min(s + 4096, m)) for b, s in enumerate(range(0, m, 4096))}
    t, c = time.perf_counter(), time.process_time()
    search_blocks(x, k, method, parts, blocks, nprobe)  # refine: as prepared
    graph_s, graph_cpu = time.perf_counter() - t, time.process_time() - c
    index_name = (parts / "index.txt").read_text()
    shutil.rmtree(parts, ignore_errors=True)
    chosen = sweep.get(f"nprobe={nprobe},refine={refine}", {})
    return {"method": method, "index": index_name,
            "index_bytes": index_bytes,
            "vectors_bytes": int(x.shape[0] * x.shape[1] * 4), "compression": round(x.shape[0] * x.shape[1] * 4 / index_bytes, 1),
            "index_build_s": round(index_s, 1), "index_build_cpu_s": round(index_cpu, 1),
            "graph_search_rows": m, "graph_search_s": round(graph_s, 1), "graph_search_cpu_s": round(graph_cpu, 1),
            "graph_search_cpu_s_all_n": round(graph_cpu * n / m, 1),
            "nprobe": nprobe, "refine": refine, "recall_at_10": chosen.get("recall_at_10"), "recall_queries": len(rows),
            "recall_by_setting": sweep, "faiss_threads": faiss.omp_get_max_threads(), "peak_rss_mb": vmhwm_mb(),
            "load_average_after": round(os.getloadavg()[0], 1)}


def projection(r: dict, n: int, target: float = 30e6) -> dict:
    """From the measured 1M rates. Training the lists (k-means on 40 nlist rows, nlist ~ 4 sqrt(N))
    costs ~ N; adding assigns each vector to nlist centres, ~ N^1.5 (the measured share of training in
    the build is ``train_share_of_build``; without it everything scales as N^1.5, an upper bound);
    graph search ~ N^1.5 (each query scans nlist centres + nprobe lists of N/nlist rows; the
    re-ranking's shortlist is fixed per query). Same nprobe: at larger N a list is a smaller part
    of the bank, so the recall at the same nprobe drops (not modelled)."""
    f = target / n
    share = r.get("train_share_of_build")
    cpu = r["index_build_cpu_s"]
    build = cpu * f ** 1.5 if share is None else cpu * share * f + cpu * (1 - share) * f ** 1.5
    return {"n": int(target), "measured": False, "index_build_cpu_core_h": round(build / 3600, 2),
            "index_build_cpu_core_h_upper_bound_all_N1.5": round(cpu * f ** 1.5 / 3600, 2),
            "graph_search_cpu_core_h": round(r["graph_search_cpu_s_all_n"] * f ** 1.5 / 3600, 1),
            "index_bytes": int(r["index_bytes"] * f), "graph_int32_bytes_k100": int(target * 100 * 4)}


def reproject() -> None:
    """Recompute the projections (5M and 30M) of the stored runs of this script."""
    results = json.loads(RESULTS.read_text())
    for r in results["runs"]:
        if r.get("graph_search_cpu_s_all_n") is not None:
            r["projection_5M"] = projection(r, r["n"], 5e6)
            r["projection_30M"] = projection(r, r["n"], 30e6)
    RESULTS.write_text(json.dumps(results, indent=1))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, nargs="+", default=[1_000_000])
    ap.add_argument("--d", type=int, default=256)
    ap.add_argument("--k", type=int, default=100)
    ap.add_argument("--alpha", type=float, default=1.0)
    ap.add_argument("--methods", default="ivfpq,ivfsq")
    ap.add_argument("--nprobe", type=int, default=64, help="the setting whose graph search is timed")
    ap.add_argument("--refine", default="ivfpq=8,ivfsq=2", help="method=factor: the setting whose graph search is timed")
    ap.add_argument("--sweep-nprobe", default="16,32,64,128")
    ap.add_argument("--sweep-refine", default="1,2,4,8")
    ap.add_argument("--graph-rows", type=int, default=20_000, help="query rows whose graph search is timed (rate x N)")
    ap.add_argument("--tmp", default=None, help="folder for the data (n x d x 4 bytes); default: the system temp folder")
    ap.add_argument("--reproject", action="store_true", help="only recompute the stored runs' projections")
    args = ap.parse_args()
    if args.reproject:
        return reproject()
    import faiss

    faiss.omp_set_num_threads(min(2, faiss.omp_get_max_threads()))
    refine = {m: int(v) for m, v in (kv.split("=") for kv in args.refine.split(","))}
    results = json.loads(RESULTS.read_text()) if RESULTS.exists() else {"runs": []}
    for old in results["runs"]:
        old.setdefault("label", "first run: IVF4000,PQ32x8, no re-ranking, full graph search of all N")
    results["data"] = f"Gaussian, variance of axis i ~ i^-{args.alpha}, randomly rotated, d={args.d}"
    results["machine"] = f"{os.cpu_count()} CPU cores shared with other jobs"
    label = "re-ranked shortlist (refine), graph search timed on a slice"
    work = Path(tempfile.mkdtemp(dir=args.tmp, prefix="bank_index_scale-"))
    try:
        for n in args.n:
            x = power_law(work / "x.npy", n, args.d, args.alpha)
            rows, truth, truth_s = sample_truth(x)
            for method in args.methods.split(","):
                r = run_method(x, method, args.k, args.nprobe, refine.get(method, 1), [int(v) for v in args.sweep_nprobe.split(",")],
                               [int(v) for v in args.sweep_refine.split(",")], rows, truth, work, args.graph_rows)
                r.update(n=n, d=args.d, k=args.k, label=label, exact_truth_s=round(truth_s, 1), projection_30M=projection(r, n))
                print(json.dumps(r), flush=True)
                key = (n, method, args.k, label)
                results["runs"] = [o for o in results["runs"] if (o["n"], o["method"], o["k"], o.get("label")) != key] + [r]
                RESULTS.parent.mkdir(exist_ok=True)
                RESULTS.write_text(json.dumps(results, indent=1))
            del x
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
