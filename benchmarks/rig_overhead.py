"""Rig round-trip overhead: stimopt's own time per generation with ``target=rig``, excluding the
rig's time (presentation, recording, its latency).

Mode 1 (default): the inbox answers are already on disk when the generation is published, so a
generation's wall time IS stimopt's work: hash the images, write them (PNG or one .npy) and the
manifest atomically, read and parse the inbox lines, average repeats, append the log line.
Mode 2 (``--sim``): against a real ``stimopt-rig-sim`` process; stimopt's share is the target's
``own_s`` (wall time minus the time spent sleeping between inbox polls).

    .venv/bin/python benchmarks/rig_overhead.py            # target: < 50 ms per generation of 40 images
    .venv/bin/python benchmarks/rig_overhead.py --sim
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from stimopt_plugins.rig import RigTarget, gen_name


def prefill(rig: Path, g: int, n: int, repeats: int, channels: int, rng) -> None:
    lines = [json.dumps({"generation": g, "index": i, "repeat": r, "counts": rng.poisson(5, channels).tolist()})
             for r in range(repeats) for i in range(n)]
    (rig / "inbox" / f"{gen_name(g)}.jsonl").write_text("\n".join(lines) + "\n" + json.dumps({"generation": g, "done": True}) + "\n")


def bench_prefilled(size, fmt, repeats, channels, level=0, n=40, generations=15) -> tuple[float, float]:
    rig = Path(tempfile.mkdtemp(prefix="rig_bench_"))
    target = RigTarget(rig, timeout_s=5, presentations=repeats, n_channels=channels, image_format=fmt,
                       png_compress_level=level)
    rng = np.random.default_rng(0)
    times, cpu = [], []
    for g in range(generations):
        images = torch.rand(n, 3, size, size)
        prefill(rig, g, n, repeats, channels, rng)
        t0, c0 = time.perf_counter(), time.process_time()
        target.evaluate(images)
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
        assert not target.last["timed_out"] and target.last["missing"] == 0 and target.last["malformed"] == 0
    shutil.rmtree(rig)
    return float(np.median(times[2:])), float(np.median(cpu[2:]))  # the first generations pay one-time imports


def bench_sim(n=40, size=128, generations=12) -> tuple[float, float]:
    rig = Path(tempfile.mkdtemp(prefix="rig_sim_bench_"))
    bin_dir = Path(sys.executable).parent
    sim = subprocess.Popen([str(bin_dir / "stimopt-rig-sim"), str(rig), "--input-size", "32", "--idle-exit", "60"],
                           stderr=subprocess.DEVNULL)
    try:
        target = RigTarget(rig, timeout_s=60, poll_s=0.005)
        own, total, cpu = [], [], []
        for _ in range(generations):
            target.evaluate(torch.rand(n, 3, size, size))
            own.append(target.last["own_s"])
            total.append(target.last["total_s"])
            cpu.append(target.last["own_cpu_s"])
    finally:
        (rig / "STOP").touch()
        sim.wait(30)
        shutil.rmtree(rig)
    return float(np.median(own[2:])), float(np.median(total[2:])), float(np.median(cpu[2:]))


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--sim", action="store_true")
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    print("stimopt's own time per generation of 40 images (median of 13 generations; inbox already answered)")
    print("(wall: elapsed time, inflated when the machine is shared; CPU: this process's CPU time)")
    print("format: png0 = PNG stored (compress_level 0, the default), png1 = zlib level 1")
    print(f"{'image px':>8s} {'format':>6s} {'repeats':>7s} {'channels':>8s} {'wall ms':>8s} {'CPU ms':>7s} {'CPU < 50 ms':>11s}")
    for size, fmt, level, repeats, channels in [(64, "png", 0, 1, 1), (128, "png", 0, 1, 1), (128, "png", 1, 1, 1),
                                                (128, "png", 0, 5, 96), (224, "png", 0, 1, 1), (128, "npy", 0, 1, 1),
                                                (224, "npy", 0, 5, 96)]:
        wall, cpu = (1000 * v for v in bench_prefilled(size, fmt, repeats, channels, level))
        name = f"{fmt}{level}" if fmt == "png" else fmt
        print(f"{size:8d} {name:>6s} {repeats:7d} {channels:8d} {wall:8.1f} {cpu:7.1f} {'yes' if cpu < 50 else 'NO':>11s}")
    if a.sim:
        own, total, cpu = bench_sim()
        print(f"against stimopt-rig-sim (128 px png, 1 repeat): stimopt's own {1000 * own:.1f} ms wall "
              f"({1000 * cpu:.1f} ms CPU), whole round trip {1000 * total:.1f} ms per generation (medians)")


if __name__ == "__main__":
    main()
