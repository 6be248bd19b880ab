"""optimizer=cmaes (pycma, batch-native) against the nevergrad ParametrizedCMA it replaces.

1. ask/tell cost alone: ms per evaluation at the default's dimension (``--dim``: 1,728 = the 24 x 24
   Fourier code; 432 before), popsize 20, the default's sigma0.
2. The default experiment (``stimopt`` with its defaults: Lite0 blocks.3 centre unit, Fourier code,
   2,000 evaluations, store fsynced every generation) on several units, once per optimizer:
   the best response, and the time outside target + generator as a fraction of the loop and in ms
   per evaluation (less sensitive to the machine's load than the fraction), split into the
   optimizer's ask + tell, the store's per-generation transaction (its commit apart), the wait for
   the WAL's fsync (in a thread) before the next stimuli are shown, and the rest.

    .venv/bin/python benchmarks/cma_overhead.py --units 0,5,10,17,33 --budget 2000

Writes benchmarks/results/cma_overhead.json (every run, the medians, the machine's load).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

OPTIMIZERS = {  # label -> overrides
    "pycma": ["optimizer=cmaes"],
    "pycma-archive": ["optimizer=cmaes"],  # the same, with pycma's hash archive of asked solutions kept (before it was skipped)
    "nevergrad": ["optimizer=nevergrad", "optimizer.name=ParametrizedCMA",
                  "++optimizer.options={popsize:20,diagonal:true}"],
}


def keep_archive(opt) -> None:
    """``optimizer=cmaes`` as it was before it skipped pycma's archive of asked solutions (``sent_solutions``,
    hashed per solution): the same codes, the cost of the archive."""
    import cma

    opt._lean = False
    opt.es.sent_solutions = cma.evolution_strategy.get_CMASolutionDict(True)()


def ask_tell_ms(make, dim: int = 1728, popsize: int = 20, generations: int = 100) -> float:
    import stimopt

    made = make()  # an optimizer, or (optimizer, what to do to it once set up)
    opt, after = made if isinstance(made, tuple) else (made, None)
    opt.setup(stimopt.ContinuousSpace(dim=dim), seed=0, budget=generations * popsize, batch_size=popsize)
    if after is not None:
        after(opt)
    rng = np.random.default_rng(0)
    t = time.perf_counter()
    for _ in range(generations):
        codes = opt.ask(popsize)
        opt.tell(codes, rng.standard_normal(popsize))
    return (time.perf_counter() - t) / (generations * popsize) * 1e3


def default_run(label: str, unit: int, budget: int, extra: tuple = ()) -> dict:
    from stimopt.config import compose
    from stimopt.experiment import build_run

    overrides = [f"budget={budget}", "logger=none", "device=cpu", f"target.unit={unit}", *OPTIMIZERS[label], *extra]
    with tempfile.TemporaryDirectory() as d:
        run = build_run(compose(overrides), Path(d) / "run")
        if label == "pycma-archive":
            keep_archive(run.optimizer)
        spent = {"optimizer_ask_tell_s": 0.0, "optimizer_state_dict_s": 0.0, "store_append_s": 0.0, "store_commit_s": 0.0}
        run.store.db = TimedCommit(run.store.db, spent, "store_commit_s")
        timed(run.optimizer, "ask", spent, "optimizer_ask_tell_s")
        timed(run.optimizer, "tell", spent, "optimizer_ask_tell_s")
        timed(run.optimizer, "state_dict", spent, "optimizer_state_dict_s")
        timed(run.store, "append_generation", spent, "store_append_s")
        spent["store_sync_wait_s"] = 0.0  # waiting for the last commit's fsync (before the target; inside append too)
        timed(run.store, "sync", spent, "store_sync_wait_s")
        p = run.run()
        outside = p.time_total - p.time_generate - p.time_evaluate
        t = time.perf_counter()
        run.store.close()  # after the loop: where SQLite copies the WAL into the database file
        spent["store_close_s"] = time.perf_counter() - t
    spent = {k: v for k, v in spent.items()}
    spent["optimizer_fraction"] = (spent["optimizer_ask_tell_s"] + spent["optimizer_state_dict_s"]) / p.time_total
    spent["store_fraction"] = spent["store_append_s"] / p.time_total
    n = p.n_evaluations
    ms = {"loop": p.time_total, "outside": outside, "optimizer_ask_tell": spent["optimizer_ask_tell_s"],
          "store_append": spent["store_append_s"], "store_commit": spent["store_commit_s"],
          "store_sync_wait": spent["store_sync_wait_s"]}
    return {"optimizer": label, "unit": unit, "best_response": float(p.best_response), "loop_s": p.time_total,
            "outside_s": outside, "outside_fraction": outside / p.time_total, "breakdown": spent, "overrides": overrides,
            "ms_per_eval": {k: v / n * 1e3 for k, v in ms.items()}, "load_avg_after": os.getloadavg(),
            "optimizer_class": run.optimizer.describe()}


class TimedCommit:
    """The store's SQLite connection, with the wall time of each transaction's commit (``with db:``
    exit: where the WAL is written and, with synchronous=FULL, fsynced) added to ``spent[key]``."""

    def __init__(self, db, spent: dict, key: str):
        self._db, self._spent, self._key = db, spent, key

    def __enter__(self):
        return self._db.__enter__()

    def __exit__(self, *exc):
        t = time.perf_counter()
        try:
            return self._db.__exit__(*exc)
        finally:
            self._spent[self._key] += time.perf_counter() - t

    def __getattr__(self, name):
        return getattr(self._db, name)


def timed(obj, name: str, spent: dict, key: str) -> None:
    """Wrap ``obj.name`` so that its wall time adds to ``spent[key]`` (where the outside time goes)."""
    fn = getattr(obj, name)

    def wrapper(*a, **k):
        t = time.perf_counter()
        try:
            return fn(*a, **k)
        finally:
            spent[key] += time.perf_counter() - t

    setattr(obj, name, wrapper)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--units", default="0,5,10,17,33", help="Lite0 blocks.3 channels (10 is the default's)")
    ap.add_argument("--budget", type=int, default=2000)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--dim", type=int, default=1728, help="code dimension of the ask/tell timing (the default's 24 x 24 Fourier code: 1,728)")
    ap.add_argument("--out", default="benchmarks/results/cma_overhead.json")
    ap.add_argument("--only", default="", help="comma-separated labels to run (default: all)")
    ap.add_argument("--extra", default="", help="space-separated overrides added to every run (e.g. generator.gain=4.0)")
    ap.add_argument("--keep", default="", help="labels whose runs already in --out are kept, not rerun (e.g. nevergrad)")
    args = ap.parse_args()

    import torch

    from stimopt_plugins.cma import CMAES
    from stimopt_plugins.nevergrad import NevergradOptimizer

    torch.set_num_threads(args.threads)
    out = {"script": "benchmarks/cma_overhead.py", "budget": args.budget, "threads": args.threads,
           "load_avg_at_start": os.getloadavg(), "cpus": os.cpu_count()}
    from stimopt.config import compose

    sigma0 = float(compose([])["optimizer"]["sigma0"])  # the default's
    out["ask_tell_dim"], out["ask_tell_sigma0"] = args.dim, sigma0
    makers = {"pycma": lambda: CMAES(sigma0=sigma0), "pycma-archive": lambda: (CMAES(sigma0=sigma0), keep_archive),
              "nevergrad": lambda: NevergradOptimizer("ParametrizedCMA", {"popsize": 20, "diagonal": True})}
    labels = [x for x in OPTIMIZERS if x in args.only.split(",")] if args.only else list(OPTIMIZERS)
    # the best of 3 repeats: the one least disturbed by the machine's other load
    out["ask_tell_ms_per_eval"] = {k: min(ask_tell_ms(makers[k], args.dim) for _ in range(3)) for k in labels}
    print(f"ask/tell ms per evaluation ({args.dim} dims, popsize 20):", out["ask_tell_ms_per_eval"], flush=True)
    path = Path(args.out)
    path.parent.mkdir(parents=True, exist_ok=True)
    out["extra_overrides"] = args.extra.split()
    keep = set(filter(None, args.keep.split(",")))
    old = json.loads(path.read_text())["runs"] if keep and path.exists() else []
    runs = out["runs"] = [r for r in old if r["optimizer"] in keep]
    for unit in [int(u) for u in args.units.split(",")]:
        for label in labels:
            if any(r["optimizer"] == label and r["unit"] == unit for r in runs):
                continue
            row = default_run(label, unit, args.budget, tuple(args.extra.split()))
            runs.append(row)
            print(f"blocks.3[{unit}] {label}: best {row['best_response']:.1f}, outside target+generator "
                  f"{100 * row['outside_fraction']:.1f}% of {row['loop_s']:.0f} s", flush=True)
            path.write_text(json.dumps(out, indent=1))
    units = {int(u) for u in args.units.split(",")}
    runs[:] = [r for r in runs if r["unit"] in units]
    out["median"] = {label: {k: float(np.median([r[k] for r in runs if r["optimizer"] == label]))
                             for k in ("best_response", "outside_fraction", "outside_s", "loop_s")}
                             | {k: float(np.median([r["breakdown"][k] for r in runs if r["optimizer"] == label and "breakdown" in r] or [np.nan]))
                                for k in ("optimizer_fraction", "store_fraction")}
                             | {f"{k}_ms_per_eval": float(np.median([r["ms_per_eval"][k] for r in runs if r["optimizer"] == label and "ms_per_eval" in r] or [np.nan]))
                                for k in ("loop", "outside", "optimizer_ask_tell", "store_append", "store_commit", "store_sync_wait")} for label in labels}
    out["load_avg_at_end"] = os.getloadavg()
    path.write_text(json.dumps(out, indent=1))
    print(json.dumps(out["median"], indent=1))
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    sys.exit(main())
