"""``stimopt-bank``: build banks, describe them, build the demo bank, draw tuning curves.

    stimopt-bank build SOURCE OUT [--model resnet50 --layer layer3 --k 100 ...] [--launcher joblib]
    stimopt-bank info PATH
    stimopt-bank demo
    stimopt-bank tuning RUN_DIR
    stimopt-bank shard -m bank=PATH shard=0,1 hydra/launcher=joblib     (Hydra app: one job per shard)
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from stimopt.errors import StimoptError


def _log(message: str) -> None:
    print(f"stimopt-bank: {message}", file=sys.stderr, flush=True)


def _none_or_int(value: str):
    return None if str(value).lower() in ("none", "null", "") else int(value)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="stimopt-bank", description="Image banks for ImageBeagle: build, inspect, tuning curves.")
    sub = p.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="build (or continue building) a bank from a folder, zip/tar shards or 'demo:N'")
    b.add_argument("source")
    b.add_argument("out")
    b.add_argument("--model", default="resnet50", help="torchvision/timm model, or 'pixels' (default: resnet50, as in the paper)")
    b.add_argument("--layer", default="layer3")
    b.add_argument("--weights", default="pretrained", help="pretrained | random | PATH to a state dict")
    b.add_argument("--input-size", type=int, default=224)
    b.add_argument("--pool-kernel", type=_none_or_int, default=4, help="average-pool kernel (none: adaptive to --pool-grid)")
    b.add_argument("--pool-stride", type=_none_or_int, default=5)
    b.add_argument("--pool-grid", type=int, default=3)
    b.add_argument("--batch-size", type=int, default=64)
    b.add_argument("--pca-dim", type=_none_or_int, default=None, help="reduce features with PCA before the graph")
    b.add_argument("--k", type=int, default=100, help="neighbours per image (paper: ~1,000 on 30M images)")
    b.add_argument("--method", default="auto", choices=["auto", "exact", "ivf", "ivfpq", "ivfsq", "hnsw"],
                   help="graph search: exact, ivf (IVF-Flat), ivfpq (IVF + fast-scan PQ, d/8 bytes per image), ivfsq (IVF-SQ8), hnsw")
    b.add_argument("--nprobe", type=int, default=None,
                   help="IVF lists searched per query (default 16 for ivf, 64 for ivfpq/ivfsq, whose recall the lists cap)")
    b.add_argument("--refine", type=int, default=None,
                   help="ivfpq/ivfsq: re-rank a shortlist of refine x k candidates with exact distances (default 8 / 2; 1: none)")
    b.add_argument("--coresets", type=_none_or_int, default=None, help="number of coresets (default 10)")
    b.add_argument("--coreset-size", type=_none_or_int, default=None, help="images per coreset (default min(10k, N/20))")
    b.add_argument("--coreset-method", default="kcenter", choices=["kcenter", "graph"],
                   help="kcenter: farthest-point greedy on the features (default); graph: the paper's traversal of the kNN graph")
    b.add_argument("--image-size", type=int, default=224, help="size images are decoded to")
    b.add_argument("--shard-size", type=int, default=20_000, help="images per shard for folders and the demo")
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--device", default="cpu")
    b.add_argument("--launcher", default=None, help="run shard jobs as a Hydra multirun: joblib | submitit_slurm | ...")
    b.add_argument("--launcher-override", action="append", default=[], help="extra Hydra override for the shard multirun")
    i = sub.add_parser("info", help="size, feature layer, k, recall, coresets, skipped images")
    i.add_argument("path")
    i.add_argument("--json", action="store_true")
    sub.add_parser("demo", help="build the embedded demo bank (once) and print its path")
    t = sub.add_parser("tuning", help="tuning curve of a finished imagebeagle run (graph path anti-preferred -> preferred)")
    t.add_argument("run_dir")
    t.add_argument("--max-steps", type=int, default=12)
    return p


def build_main(args) -> None:
    from stimopt.bank.build import build_bank
    from stimopt.bank.features import FeatureSpec
    from stimopt.bank.manifest import info_text

    spec = FeatureSpec(model=args.model, layer=args.layer, input_size=args.input_size, pool_kernel=args.pool_kernel,
                       pool_stride=args.pool_stride, pool_grid=args.pool_grid, weights=args.weights, batch_size=args.batch_size,
                       seed=args.seed)
    manifest = build_bank(
        args.source, args.out, features=spec, k=args.k, method=args.method, nprobe=args.nprobe, refine=args.refine, pca_dim=args.pca_dim,
        n_coresets=args.coresets, coreset_size=args.coreset_size, coreset_method=args.coreset_method,
        image_size=args.image_size, shard_size=args.shard_size,
        seed=args.seed, launcher=args.launcher, launcher_overrides=args.launcher_override, device=args.device, log=_log,
    )
    print(info_text(manifest, args.out))


def shard_main(argv: list[str]) -> None:
    """The Hydra app behind the multiruns: one job computes one shard of one stage (features or graph)."""
    import hydra

    import stimopt_conf

    conf = str(Path(stimopt_conf.__file__).parent / "bank")

    def task(cfg) -> None:
        from stimopt.bank.build import compute_graph_shard, compute_shard

        if cfg.stage not in ("features", "graph"):
            raise StimoptError(f"stage must be features or graph, got '{cfg.stage}'")
        t = time.perf_counter()
        if cfg.stage == "features":
            done = compute_shard(cfg.bank, int(cfg.shard), str(cfg.device))
        else:
            done = compute_graph_shard(cfg.bank, int(cfg.shard))
        _log(f"{cfg.stage} shard {cfg.shard}: {'computed' if done else 'already done'} in {time.perf_counter() - t:.1f} s")

    sys.argv = [sys.argv[0], *argv]
    hydra.main(config_path=conf, config_name="shard", version_base="1.3")(task)()


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if argv and argv[0] == "shard":
            return shard_main(argv[1:])
        args = _parser().parse_args(argv)
        if args.command == "build":
            build_main(args)
        elif args.command == "info":
            from stimopt.bank.manifest import info_text, load_manifest

            manifest = load_manifest(args.path)
            print(json.dumps(manifest, indent=1) if args.json else info_text(manifest, args.path))
        elif args.command == "demo":
            from stimopt.bank import demo_bank_path

            print(demo_bank_path(build=True, log=_log))
        elif args.command == "tuning":
            from stimopt.bank.tuning import tuning_main

            tuning_main(args.run_dir, args.max_steps, log=_log)
    except StimoptError as exc:
        print(f"stimopt-bank: error: {exc}", file=sys.stderr)
        sys.exit(2)
    except OSError as exc:  # the file system said no (permissions, a full disk, a file where a folder goes)
        where = f": {exc.filename}" if getattr(exc, "filename", None) else ""
        print(f"stimopt-bank: error: {exc.strerror or exc}{where}; check the path and its permissions and free space", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
