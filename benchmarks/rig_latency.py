"""Rig critical path: stimopt's time per generation from the last answer of generation g to the
manifest of generation g+1 on disk (what the animal waits for between blocks), with the whole
loop in the way: inbox parse, objective, optimizer tell, the store's commit (checkpoint included),
ask, generate, publish (uint8, request id, PNG files, manifest, rename).

A lab process (not stimopt) plays the rig: it waits for each manifest (polling every 0.5 ms),
"presents" for ``--present-s``, appends every trial line and a done line in one write and stamps
the time (CLOCK_MONOTONIC, shared by both processes), then stamps the moment the next manifest
appears. critical = manifest seen - answers written; the poll of the lab adds <= 0.5 ms. stimopt's own
view (``log.jsonl`` ``critical_s`` / ``critical_cpu_s``: from reading the last answer to the
manifest renamed into place, wall and this process's CPU time) is reported beside it: on a
contended machine the CPU time is the figure that says what stimopt costs, the wall time what the
rig waits.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/rig_latency.py            # 40 images of 224 px
    .venv/bin/python benchmarks/rig_latency.py --quick                     # a smoke run

Configurations: the default optimizer (cmaes, whose ask needs g's answers: nothing can be
prepared ahead), and random search with ``lookahead=1`` (its ask does not depend on the answers:
generation g+1 is asked, generated and encoded while the rig presents g). Results:
benchmarks/results/rig_latency.json.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def lab(rig: str, n_generations: int, present_s: float, out, repeats: int) -> None:
    """The rig's side, in its own process: stamps (answered, next manifest seen) per generation."""
    rig = Path(rig)
    rng = np.random.default_rng(0)
    stamps = []
    answered = None
    for g in range(n_generations):
        manifest = rig / "outbox" / f"gen_{g:06d}" / "manifest.json"
        deadline = time.monotonic() + 120
        while not manifest.exists():
            if time.monotonic() > deadline:
                out.put({"error": f"no manifest for generation {g}"})
                return
            time.sleep(0.0005)
        seen = time.monotonic()
        if answered is not None:
            stamps.append(seen - answered)
        m = json.loads(manifest.read_text())
        time.sleep(present_s)
        lines = [json.dumps({"generation": g, "index": i, "repeat": r, "counts": [int(rng.poisson(5))]})
                 for r in range(repeats) for i in range(len(m["images"]))]
        with open(rig / m["inbox"], "a") as f:
            f.write("\n".join(lines) + "\n" + json.dumps({"generation": g, "done": True}) + "\n")
        answered = time.monotonic()
    out.put({"critical_s": stamps})


def bench(optimizer: str, lookahead: int, n: int, size: int, generations: int, present_s: float, poll_s: float,
          synchronous: str, image_format: str) -> dict:
    import torch

    torch.set_num_threads(1)
    from stimopt.engine import Run
    from stimopt.interleave import Interleave
    from stimopt.objective import Objective
    from stimopt.store import RunStore
    from stimopt_plugins.cma import CMAES
    from stimopt_plugins.image_codes import FourierGenerator
    from stimopt_plugins.random_search import RandomSearch
    from stimopt_plugins.rig import RigTarget

    tmp = Path(tempfile.mkdtemp(prefix="rig_latency_"))
    rig = tmp / "rig"
    target = RigTarget(rig, timeout_s=60, poll_s=poll_s, image_format=image_format)
    gen = FourierGenerator(size=size, device="cpu")
    opt = CMAES() if optimizer == "cmaes" else RandomSearch()
    if lookahead:
        opt.asks_ahead = True  # true of random search: its ask never reads what it was told
    opt.setup(gen.space, seed=0, budget=n * generations, batch_size=n)
    store = RunStore(tmp / "run" / "evaluations.sqlite", synchronous=synchronous)
    run = Run(target=target, generator=gen, optimizer=opt, objective=Objective("max"), store=store,
              budget=n * generations, batch_size=n, on_bad_response="skip", run_dir=tmp / "run",
              interleave=Interleave(), lookahead=lookahead)
    q = mp.get_context("spawn").Queue()
    p = mp.get_context("spawn").Process(target=lab, args=(str(rig), generations, present_s, q, 1))
    p.start()
    t0 = time.perf_counter()
    run.run()
    wall = time.perf_counter() - t0
    got = q.get(timeout=60)
    p.join(10)
    store.close()
    target.close()
    log = [json.loads(x) for x in (rig / "log.jsonl").read_text().splitlines()]
    own = np.array([[e["critical_s"], e["critical_cpu_s"]] for e in log[2:] if e.get("critical_s") is not None]) * 1e3
    shutil.rmtree(tmp, ignore_errors=True)
    if "error" in got:
        raise SystemExit(got["error"])
    c = np.asarray(got["critical_s"][1:]) * 1e3  # the first gap includes torch's first-call warm-up
    return {"optimizer": optimizer, "lookahead": lookahead, "n_images": n, "size": size, "generations": generations,
            "present_s": present_s, "poll_s": poll_s, "store_synchronous": synchronous, "image_format": image_format,
            "critical_ms_median": round(float(np.median(c)), 2), "critical_ms_p90": round(float(np.percentile(c, 90)), 2),
            "critical_ms_max": round(float(c.max()), 2),
            "stimopt_wall_ms_median": round(float(np.median(own[:, 0])), 2),
            "stimopt_wall_ms_p90": round(float(np.percentile(own[:, 0], 90)), 2),
            "stimopt_cpu_ms_median": round(float(np.median(own[:, 1])), 2),
            "stimopt_cpu_ms_p90": round(float(np.percentile(own[:, 1], 90)), 2), "wall_s": round(wall, 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--generations", type=int, default=25)
    ap.add_argument("--present-s", type=float, default=0.3)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "rig_latency.json"))
    a = ap.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    gens = 5 if a.quick else a.generations
    configs = [  # (optimizer, lookahead, poll_s, synchronous, format)
        ("cmaes", 0, 0.02, "FULL", "png"),
        ("cmaes", 0, 0.002, "FULL", "png"),
        ("cmaes", 0, 0.002, "NORMAL", "npy"),
        ("random", 0, 0.002, "FULL", "png"),
        ("random", 1, 0.002, "FULL", "png"),
    ]
    load = os.getloadavg()
    rows = []
    for opt, la, poll, sync, fmt in configs:
        r = bench(opt, la, 40, 224, gens, a.present_s, poll, sync, fmt)
        print(json.dumps(r), flush=True)
        rows.append(r)
    result = {"what": "stimopt's critical path per rig generation: last answer of g -> manifest of g+1 seen by the lab",
              "target_ms": 50, "rows": rows, "loadavg_before": load, "loadavg_after": os.getloadavg(),
              "cpu_count": os.cpu_count(), "python": sys.version.split()[0]}
    if not a.quick:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "rows"}))


if __name__ == "__main__":
    main()
