"""Image banks: sources, features, kNN graphs and coresets (ImageBeagle).

API (stable; the walk and the surrogate optimizers build on it)::

    from stimopt.bank import load_bank, build_bank, demo_bank_path

    bank = load_bank(path)          # a folder made by `stimopt-bank build SOURCE PATH`
    bank.size                       # number of images N
    bank.features                   # [N, d] float32, memory-mapped (the layer the graph used)
    bank.graph                      # [N, k] int32, memory-mapped: nearest other images, nearest first
    bank.coresets                   # tuple of int64 index arrays (approximate farthest-point walks)
    bank.images(indices)            # torch float32 [B, 3, H, W] in [0, 1], decoded lazily
    bank.space                      # stimopt.BankSpace(size, features, graph, coresets, path, extras)
    bank.manifest                   # dict: source, feature layer, k, recall@10, coresets, skipped images

    build_bank(source, out, features=FeatureSpec(...), k=100, ...)   # resumable, see build.py
    demo_bank_path(build=True)      # the embedded demo bank (built and cached on first use)

Sources: a folder of images (recursive), a .zip / .tar file or a folder of zip / webdataset tar
shards, or ``demo`` / ``demo:N``. Command line: ``stimopt-bank build|info|demo|tuning``.
"""
from stimopt.bank.bank import Bank, load_bank
from stimopt.bank.build import build_bank
from stimopt.bank.features import FeatureSpec


def demo_bank_path(build: bool = True, log=None) -> str:
    from stimopt.bank.demo import demo_bank_path as _path

    return _path(build=build, log=log)


__all__ = ["Bank", "FeatureSpec", "build_bank", "demo_bank_path", "load_bank"]
