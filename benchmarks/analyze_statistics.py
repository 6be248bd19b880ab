"""Preferred vs anti-preferred images on interpretable statistics and on backbone embeddings
(seed paper, Fig. 4d-e and Fig. 5a): the difference-of-means classifier's held-out accuracy on both.

The 16 EfficientNet-Lite0 ``blocks.3`` units of benchmarks/analyze_screen.py (its screen file,
benchmarks/results/analyze_screen/screen.npz), top / bottom ``--k`` images per unit; embeddings
computed with ``statistics.embeddings=backbone`` (the demo bank's feature spec: Lite0 blocks.3 at
128 px, 2x2 average pool -> 1,280 dims, i.e. the same network the units come from) and, as a
second embedding, Lite0 ``blocks.6`` (320 channels, global average, a later layer).

    .venv/bin/python benchmarks/analyze_statistics.py

Runs ``stimopt-analyze statistics`` in-process; outputs under benchmarks/results/analyze_statistics/<name>/
and the summary benchmarks/results/analyze_statistics.json.
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

RESULTS = Path(os.path.relpath(Path(__file__).parent / "results"))  # relative: no machine paths in the results


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--screen", default=str(RESULTS / "analyze_screen" / "screen.npz"))
    p.add_argument("--units", default="[0,5,10,15,20,25,30,35,40,45,50,55,60,65,70,75]")
    p.add_argument("--k", type=int, default=30)
    a = p.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    torch.set_num_threads(1)
    from stimopt.analyze.app import compose_analyze, context_from_config, run_analysis

    runs = {
        "lite0_blocks3": [],  # statistics.backbone's default (the demo bank's spec)
        "lite0_blocks6": ["statistics.backbone.layer=blocks.6", "statistics.backbone.pool_kernel=null",
                          "statistics.backbone.pool_stride=null", "+statistics.backbone.pool_grid=1"],
    }
    summary = {"model": "efficientnet_lite0 (offline ImageNet weights)", "layer": "blocks.3", "units": a.units,
               "screen": a.screen, "k": a.k, "embeddings": {}}
    for name, extra in runs.items():
        out = RESULTS / "analyze_statistics" / name
        cfg = compose_analyze(["analysis=statistics", "target.layer=blocks.3", f"units={a.units}", "device=cpu",
                               f"statistics.screen={a.screen}", f"statistics.k={a.k}", "statistics.embeddings=backbone",
                               f"out={out}", *extra])
        t0 = time.time()
        pl = run_analysis("statistics", context_from_config(cfg, out))["payload"]
        summary["median_accuracy_statistics"] = pl["median_accuracy"]
        summary["embeddings"][name] = {
            "embeddings": pl["embeddings"], "dim": pl["embedding_dim"], "median_accuracy": pl["median_accuracy_embeddings"],
            "min_accuracy": min(u["accuracy_embeddings"] for u in pl["units"]),
            "units_embeddings_beat_statistics": sum(u["accuracy_embeddings"] > u["accuracy"] for u in pl["units"]),
            "seconds": round(time.time() - t0, 1), "results": str(out / "statistics.json")}
        summary["loadavg"] = list(os.getloadavg())
        (RESULTS / "analyze_statistics.json").write_text(json.dumps(summary, indent=1) + "\n")
        print(name, json.dumps(summary["embeddings"][name]), "statistics", round(pl["median_accuracy"], 3), flush=True)


if __name__ == "__main__":
    main()
