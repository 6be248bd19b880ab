"""Issue 14 part 5: the GPU figures, one prepared script (runs on a CPU too, to check it).

1. The default experiment (``stimopt`` with its defaults, Lite0 blocks.3 centre unit, Fourier
   code) at batch 20 / 100 / 500: images per second through the engine, and the fraction of the loop
   outside target + generator.
2. Bank feature extraction: images per second of :class:`stimopt.bank.features.FeatureExtractor`
   (EfficientNet-Lite0 blocks.5 at 224 px, pretrained; ResNet-50 layer3 at 224 px, the paper's
   default, with random weights since its pretrained weights are not shipped: the same cost).
3. A 1M x 256 kNN graph (k = 100): stimopt's ``build_graph`` (faiss on the CPU's cores), faiss on
   the GPU when the installed faiss has GPU support, and an exact search in torch on the device.
4. ``optimizer=mei``: Adam steps per second (batch 1 and 20, 128 px, Lite0 blocks.3).

    .venv/bin/python benchmarks/gpu_figures.py                  # on a GPU machine: device=auto picks it
    .venv/bin/python benchmarks/gpu_figures.py --quick --device cpu   # a smoke run of every section

Writes benchmarks/results/gpu_figures.json (``--quick``: gpu_figures_quick.json) with the device
named; a section that fails records its one-line error and the others still run.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np


def sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def default_experiment(device: str, batch: int, budget: int) -> dict:
    from stimopt.config import compose
    from stimopt.experiment import build_run

    overrides = [f"budget={budget}", f"batch_size={batch}", "logger=none", f"device={device}"]
    with tempfile.TemporaryDirectory() as d:
        run = build_run(compose(overrides), Path(d) / "run")
        p = run.run()
        run.store.close()
    outside = p.time_total - p.time_generate - p.time_evaluate
    return {"batch": batch, "evaluations": int(p.n_evaluations), "loop_s": round(p.time_total, 3),
            "images_per_s": p.n_evaluations / p.time_total, "target_images_per_s": p.n_evaluations / p.time_evaluate,
            "outside_fraction": outside / p.time_total, "outside_ms_per_eval": outside / p.n_evaluations * 1e3,
            "best_response": float(p.best_response), "overrides": overrides}


def feature_extraction(device: str, n: int) -> list[dict]:
    import torch

    from stimopt.bank.features import FeatureExtractor, FeatureSpec

    out = []
    specs = [FeatureSpec(model="efficientnet_lite0", layer="blocks.5", input_size=224, batch_size=64),
             FeatureSpec(model="resnet50", layer="layer3", input_size=224, weights="random", batch_size=64)]
    images = torch.rand(n, 3, 128, 128, generator=torch.Generator().manual_seed(0))
    for spec in specs:
        ex = FeatureExtractor(spec, device=device)
        ex(images[: spec.batch_size])  # warm-up (cuDNN autotuning, lazy init)
        sync(device)
        t = time.perf_counter()
        feats = ex(images)
        sync(device)
        wall = time.perf_counter() - t
        out.append({"model": spec.model, "layer": spec.layer, "input_size": spec.input_size, "weights": spec.weights,
                    "images": n, "dim": int(feats.shape[1]), "images_per_s": n / wall})
    return out


def knn_graph(device: str, n: int, d: int, k: int) -> dict:
    import faiss
    import torch

    from stimopt.bank.graph import build_graph

    rng = np.random.default_rng(0)  # clustered vectors, as benchmarks/bank_graph_scale.py
    centres = rng.normal(size=(1000, d)).astype(np.float32) * 4
    x = centres[rng.integers(0, 1000, n)] + rng.standard_normal((n, d), dtype=np.float32)
    res = {"n": n, "d": d, "k": k, "faiss": faiss.__version__, "faiss_threads": faiss.omp_get_max_threads()}
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        info = build_graph(x, k, Path(tmp) / "graph.npy", recall_queries=1000)
        res["stimopt_build_graph"] = {"wall_s": time.perf_counter() - t, "method": info["method"],
                                      "recall_at_10": info["recall_at_10"]}
    gpus = faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0
    if gpus > 0:
        index = faiss.index_cpu_to_all_gpus(faiss.IndexFlatL2(d))
        t = time.perf_counter()
        index.add(x)
        index.search(x, k + 1)
        res["faiss_gpu_exact"] = {"wall_s": time.perf_counter() - t, "gpus": gpus}
    else:
        res["faiss_gpu_exact"] = "the installed faiss has no GPU support (faiss-gpu is a separate build)"
    if device.startswith("cuda"):  # exact kNN in torch on the device: blocks of queries against all rows
        xt = torch.from_numpy(x).to(device)
        sq = (xt * xt).sum(1)
        t = time.perf_counter()
        for s in range(0, n, 2048):  # 2,048 x 1M distances: 8 GB of float32 at a time
            q = xt[s:s + 2048]
            dist = sq[s:s + 2048, None] - 2 * q @ xt.T + sq[None]
            dist.topk(k + 1, dim=1, largest=False)
        sync(device)
        res["torch_exact_on_device"] = {"wall_s": time.perf_counter() - t}
    return res


def mei_steps(device: str, batch: int, steps: int) -> dict:
    from stimopt.config import compose
    from stimopt.experiment import build_run

    overrides = ["logger=none", f"device={device}", "experiment=mei", f"batch_size={batch}",
                 f"budget={batch * (steps + 1)}", f"optimizer.steps_per_ask={steps}"]
    with tempfile.TemporaryDirectory() as d:
        run = build_run(compose(overrides), Path(d) / "run")
        t = time.perf_counter()
        while run.progress.n_evaluations < run.budget:
            run.step()
        sync(device)
        wall = time.perf_counter() - t
        n_steps = run.optimizer.n_steps
        run.store.close()
    return {"batch": batch, "steps": int(n_steps), "wall_s": wall, "steps_per_s": n_steps / wall,
            "image_steps_per_s": n_steps * batch / wall, "overrides": overrides}


def section(name: str, fn, results: dict, out: Path) -> None:
    t = time.perf_counter()
    try:
        results[name] = fn()
    except Exception as exc:  # one section's failure (a missing package, memory) must not sink the others
        results[name] = {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"}
    print(f"[{time.perf_counter() - t:6.0f}s] {name}: {json.dumps(results[name])[:300]}", flush=True)
    out.write_text(json.dumps(results, indent=1))  # after every section: a cut-off run keeps what it measured


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="auto", help="auto (cuda when present) | cuda | cpu")
    ap.add_argument("--quick", action="store_true", help="small sizes: check every section in a minute or two")
    ap.add_argument("--graph-n", type=int, default=1_000_000, help="rows of the kNN graph section (256 dims, k = 100)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    import torch

    from stimopt.device import resolve_device

    device = str(resolve_device(args.device))
    out = Path(args.out or f"benchmarks/results/gpu_figures{'_quick' if args.quick else ''}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    name = torch.cuda.get_device_name(0) if device.startswith("cuda") else f"CPU ({os.cpu_count()} cores, {platform.processor() or platform.machine()})"
    results = {"script": "benchmarks/gpu_figures.py", "device": device, "device_name": name, "quick": args.quick,
               "torch": torch.__version__, "cpus": os.cpu_count(), "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    print(f"device: {device} ({name})", flush=True)
    q = args.quick
    for batch in (20, 100, 500):
        budget = batch * (3 if q else 20)
        section(f"default_experiment_batch{batch}", lambda b=batch, n=budget: default_experiment(device, b, n), results, out)
    section("bank_feature_extraction", lambda: feature_extraction(device, 128 if q else 4096), results, out)
    section("knn_graph", lambda: knn_graph(device, 20_000 if q else args.graph_n, 256, 100), results, out)
    for batch in (1, 20):
        section(f"mei_batch{batch}", lambda b=batch: mei_steps(device, b, 8 if q else 256), results, out)
    results["finished"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    out.write_text(json.dumps(results, indent=1))
    print(f"written to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
