"""Time one surrogate generation (refit + whole-bank argmax) on a large memory-mapped bank.

    python benchmarks/surrogate_scan.py --size 1000000 --dim 256 --generations 5

Writes random float32 features to a temporary .npy (size x dim x 4 bytes; 1 GB for 1M x 256),
opens it memory-mapped as a BankSpace, shows 200 images, then times ask() (model refit from the
shown images, posterior draws, one chunked pass of matrix products over the whole bank) for a
batch of 20. The first pass pays the page cache; later passes read from memory.
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time

import numpy as np

import stimopt
from stimopt_plugins.surrogate import SurrogateSearch


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=256)
    ap.add_argument("--batch", type=int, default=20)
    ap.add_argument("--generations", type=int, default=5)
    ap.add_argument("--acquisition", default="thompson")
    ap.add_argument("--blas-threads", type=int, default=1, help="optimizer.blas_threads (0: library default)")
    ap.add_argument("--chunk-size", type=int, default=65536)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "features.npy")
        f = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(args.size, args.dim))
        rng = np.random.default_rng(0)
        step = 100_000
        for s in range(0, args.size, step):
            f[s:s + step] = rng.standard_normal((min(step, args.size - s), args.dim), dtype=np.float32)
        f.flush()
        del f
        feats = np.load(path, mmap_mode="r")
        w = rng.standard_normal(args.dim)
        space = stimopt.BankSpace(size=args.size, features=feats)
        opt = SurrogateSearch(n_init=200, acquisition=args.acquisition, chunk_size=args.chunk_size,
                              blas_threads=args.blas_threads)
        opt.setup(space, seed=0, budget=args.size, batch_size=args.batch)
        codes = opt.ask(200)
        opt.tell(codes, np.asarray(feats[np.sort(codes)] @ w)[np.argsort(np.argsort(codes))])
        times, cpu = [], []
        for g in range(args.generations):
            t, c = time.perf_counter(), time.process_time()
            codes = opt.ask(args.batch)
            times.append(time.perf_counter() - t)
            cpu.append(time.process_time() - c)
            order = np.argsort(codes)
            resp = np.empty(len(codes))
            resp[order] = np.asarray(feats[codes[order]]) @ w
            opt.tell(codes, resp)
        t = time.perf_counter()
        opt.report()
        t_report = time.perf_counter() - t
        print(f"bank {args.size} x {args.dim} float32 (memory-mapped), batch {args.batch}, {args.acquisition}, "
              f"blas threads {args.blas_threads or 'default'}, cpus {os.cpu_count()}")
        print("wall seconds per generation (ask: refit + whole-bank scan):", " ".join(f"{x:.3f}" for x in times))
        print("CPU seconds per generation (all threads):            ", " ".join(f"{x:.3f}" for x in cpu))
        print(f"load average while measured: {os.getloadavg()[0]:.1f} (wall time is inflated when it exceeds the core count)")
        print(f"first (cold page cache) {times[0]:.3f} s; median of the rest {np.median(times[1:]):.3f} s; "
              f"report() {t_report:.3f} s")


if __name__ == "__main__":
    main()
