"""Tuning curves along the kNN graph (seed paper, Fig. 6d).

The shortest path in the graph from a run's lowest-scoring image to its best-scoring one: a
sequence of perceptually neighbouring natural images; the target's response to each, drawn as
a strip of images over the response curve (``tuning.png``) and a table (``tuning.csv``).
"""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np

from stimopt.api import BankSpace
from stimopt.bank.bank import load_bank
from stimopt.errors import StimoptError
from stimopt.objective import Objective


def graph_path(graph: np.ndarray, src: int, dst: int, max_depth: int = 64) -> list[int] | None:
    """Shortest path src -> dst through kNN relations: breadth-first from both ends along the graph's
    edges (batched per level), meeting in the middle, so the path's second half follows edges
    backwards (an outlier that is nobody's neighbour is still reached). None if the two searches
    do not meet within ``max_depth`` steps in all."""
    n = len(graph)
    src, dst = int(src), int(dst)
    if src == dst:
        return [src]
    parents = [np.full(n, -1, dtype=np.int64), np.full(n, -1, dtype=np.int64)]
    parents[0][src], parents[1][dst] = src, dst
    frontiers = [np.array([src], dtype=np.int64), np.array([dst], dtype=np.int64)]
    for depth in range(max_depth):
        side = depth % 2
        parent, frontier = parents[side], np.sort(frontiers[side])
        nbrs = np.asarray(graph[frontier])  # sorted rows: sequential reads of a memmap
        rows = np.repeat(frontier, nbrs.shape[1])
        nbrs = nbrs.reshape(-1).astype(np.int64)
        ok = (nbrs >= 0) & (parent[np.clip(nbrs, 0, n - 1)] == -1)
        nbrs, first = np.unique(nbrs[ok], return_index=True)
        parent[nbrs] = rows[ok][first]
        met = nbrs[parents[1 - side][nbrs] != -1]
        if len(met):
            return _join(parents, int(met[0]), src, dst)
        if not len(nbrs):
            return None
        frontiers[side] = nbrs
    return None


def _join(parents, middle: int, src: int, dst: int) -> list[int]:
    head, tail = [middle], [middle]
    while head[-1] != src:
        head.append(int(parents[0][head[-1]]))
    while tail[-1] != dst:
        tail.append(int(parents[1][tail[-1]]))
    return head[::-1] + tail[1:]


def noiseless_target(node):
    """The run's target without its noise wrapper (tuning curves show the true responses)."""
    from stimopt.experiment import build

    return build("target", node, device="cpu")  # the noise group wraps it only in a run


def tuning_curve(run_dir: str | Path, max_steps: int = 12, log=None) -> dict:
    """Evaluate the run's target along the graph path from its worst to its best image; write
    tuning.png and tuning.csv into the run directory. Returns the table."""
    import torch
    from omegaconf import OmegaConf

    from stimopt import plugins
    from stimopt.experiment import build, seed_everything
    from stimopt.store import RunStore

    run_dir = Path(run_dir)
    db = run_dir / "evaluations.sqlite"
    if not db.exists():
        raise StimoptError(f"{run_dir} holds no run (no evaluations.sqlite)")
    store = RunStore(db)
    cfg = OmegaConf.create(store.meta("config"))
    codes, scores = store.codes(), store.scores()
    store.close()
    plugins.load_plugins()
    seed_everything(int(cfg.seed))  # as build_run does, so randomly initialized targets are the run's
    generator = build("generator", cfg.generator, device="cpu")
    space = generator.space
    if not isinstance(space, BankSpace) or space.graph is None or space.path is None:
        raise StimoptError(f"tuning curves need a run over a bank with a kNN graph; {run_dir} used generator {generator.describe()}")
    ok = np.isfinite(scores)
    if ok.sum() < 2:
        raise StimoptError(f"{run_dir} has fewer than 2 scored images")
    codes, scores = np.asarray(codes).reshape(len(codes), -1)[:, 0].astype(np.int64)[ok], scores[ok]
    worst, best = int(codes[np.argmin(scores)]), int(codes[np.argmax(scores)])  # stored scores: the direction is applied
    path = graph_path(space.graph, worst, best)
    if path is None:
        raise StimoptError("the run's worst and best images are not connected in the bank's graph within 64 steps")
    if len(path) > max_steps:  # keep both ends, subsample the middle evenly
        path = [path[int(round(t))] for t in np.linspace(0, len(path) - 1, max_steps)]
    target = noiseless_target(cfg.target)
    objective = Objective(cfg.direction, **OmegaConf.to_container(cfg.get("objective") or {}, resolve=True))  # the run's read-out
    with torch.inference_mode():
        images = generator.generate(np.array(path))
        raw = target.evaluate(images)
    resp = objective.combine(raw.detach().double().cpu().numpy() if isinstance(raw, torch.Tensor) else np.asarray(raw, np.float64))
    target.close()
    names = load_bank(space.path).names(path)
    rows = [{"step": s, "index": i, "name": nm, "response": float(r)} for s, (i, nm, r) in enumerate(zip(path, names, resp))]
    with open(run_dir / "tuning.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["step", "index", "name", "response"])
        w.writeheader()
        w.writerows(rows)
    _plot(images.permute(0, 2, 3, 1).numpy(), resp, run_dir / "tuning.png", cfg.direction)
    (run_dir / "tuning.json").write_text(json.dumps(rows, indent=1))
    return {"rows": rows, "png": str(run_dir / "tuning.png"), "csv": str(run_dir / "tuning.csv")}


def _plot(images: np.ndarray, responses: np.ndarray, path: Path, direction: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(images)
    fig = plt.figure(figsize=(max(6.0, 1.4 * n), max(6.0, 1.4 * n) / n + 2.2))
    for s in range(n):
        ax = fig.add_axes([s / n, 0.5, 1 / n * 0.95, 0.48])
        ax.imshow(images[s].clip(0, 1))
        ax.axis("off")
    ax = fig.add_axes([0.5 / n, 0.14, 1 - 1 / n, 0.3])
    ax.plot(np.arange(n), responses, "o-", color="tab:orange")
    ax.set_xlim(-0.5, n - 0.5)
    ax.set_xticks(range(n))
    ax.set_xlabel(f"graph step: run's worst -> best image ({direction})", fontsize=8)
    ax.set_ylabel("response")
    fig.savefig(path, dpi=80)
    plt.close(fig)


def tuning_main(run_dir: str, max_steps: int = 12, log=None) -> None:
    result = tuning_curve(run_dir, max_steps, log)
    print("step  index      response  name")
    for r in result["rows"]:
        print(f"{r['step']:>4}  {r['index']:>8}  {r['response']:>10.4g}  {r['name']}")
    print(f"wrote {result['png']} and {result['csv']}")
