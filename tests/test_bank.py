"""Image banks: every source kind, corrupt images, the graph against brute force, coresets, resume
of a killed build, and the Hydra multirun build equal to the single-process one."""
from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from stimopt.bank import FeatureSpec, build_bank, load_bank
from stimopt.bank.coresets import build_coresets
from stimopt.bank.graph import build_graph, recall_at
from stimopt.errors import StimoptError
from tests.conftest import BIN, cli_env, run_cli

PIXELS = FeatureSpec(model="pixels", input_size=8)


def _png(rng, size=24) -> tuple[bytes, np.ndarray]:
    arr = rng.integers(0, 256, size=(size, size, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue(), arr


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    """The same 40 images as a nested folder, two zip shards (one corrupt member) and webdataset tars."""
    root = tmp_path_factory.mktemp("sources")
    rng = np.random.default_rng(0)
    images = [_png(rng) for _ in range(40)]
    folder = root / "folder"
    for i, (data, _) in enumerate(images):
        sub = folder / f"class{i % 3}" / "deeper"
        sub.mkdir(parents=True, exist_ok=True)
        (sub / f"img{i:03d}.png").write_bytes(data)
    (folder / "notes.txt").write_text("not an image")
    zips = root / "zips"
    zips.mkdir()
    for z in range(2):
        with zipfile.ZipFile(zips / f"part{z}.zip", "w") as zf:
            for i in range(z * 20, z * 20 + 20):
                zf.writestr(f"img{i:03d}.png", images[i][0])
            if z == 1:
                zf.writestr("broken.png", b"\x89PNG\r\n\x1a\n this is not really a png")
    tars = root / "tars"
    tars.mkdir()
    for t in range(2):
        with tarfile.open(tars / f"shard-{t:06d}.tar", "w") as tf:
            for i in range(t * 20, t * 20 + 20):
                for ext, payload in ((".png", images[i][0]), (".cls", str(i % 3).encode())):
                    info = tarfile.TarInfo(f"{i:06d}{ext}")
                    info.size = len(payload)
                    tf.addfile(info, io.BytesIO(payload))
    return {"root": root, "folder": folder, "zips": zips, "tars": tars, "arrays": [a for _, a in images]}


def _build(source, out, **kw):
    options = dict(features=PIXELS, k=5, image_size=24, shard_size=16)
    options.update(kw)
    return build_bank(str(source), out, **options)


def test_bank_from_a_folder_reads_images_lazily_and_exactly(sources, tmp_path):
    m = _build(sources["folder"], tmp_path / "bank")
    assert m["size"] == 40 and m["n_shards"] == 3 and m["skipped"]["count"] == 0 and m["source_kind"] == "folder"
    bank = load_bank(tmp_path / "bank")
    names = bank.names(range(40))
    assert names[0].startswith("class0/") and names[1].startswith("class0/")
    # bank index -> the very pixels of the file it names
    for i in (0, 17, 39):
        number = int(Path(names[i]).stem[3:])
        expected = torch.from_numpy(sources["arrays"][number]).permute(2, 0, 1).float() / 255
        assert torch.allclose(bank.images([i])[0], expected, atol=1e-6)
    assert bank.images([3, 4], size=12).shape == (2, 3, 12, 12)
    space = bank.space
    assert space.size == 40 and space.graph.shape == (40, 5) and isinstance(space.features, np.memmap)
    assert len(space.coresets) == 10 and space.path == str(bank.path)


def test_zip_shards_skip_and_list_a_corrupt_image(sources, tmp_path, capsys):
    m = _build(sources["zips"], tmp_path / "bank")
    assert m["size"] == 40 and m["n_shards"] == 2 and m["source_kind"] == "zip"
    assert m["skipped"]["count"] == 1
    name, reason = m["skipped"]["items"][0]
    assert name == "part1.zip:broken.png" and reason
    bank = load_bank(tmp_path / "bank")
    assert all("broken" not in n for n in bank.names(range(40)))
    img = bank.images([25])[0]  # part1.zip, 6th member -> img025
    expected = torch.from_numpy(sources["arrays"][25]).permute(2, 0, 1).float() / 255
    assert torch.allclose(img, expected, atol=1e-6)
    from stimopt.bank.cli import main

    main(["info", str(tmp_path / "bank")])
    out = capsys.readouterr().out
    assert "40 from zip source" in out and "1 unreadable images: part1.zip:broken.png" in out
    assert "k=5 (exact)" in out and "coresets    10 x 2 (kcenter)" in out


def test_webdataset_tar_shards_give_the_same_bank_as_the_folder(sources, tmp_path):
    _build(sources["tars"], tmp_path / "tar")
    _build(sources["zips"], tmp_path / "zip")
    tar, zipb = load_bank(tmp_path / "tar"), load_bank(tmp_path / "zip")
    assert tar.size == 40 and tar.manifest["source_kind"] == "tar" and tar.names([0]) == ["shard-000000.tar:000000.png"]
    # same images in the same order -> identical features and graph
    assert np.array_equal(tar.features, zipb.features) and np.array_equal(tar.graph, zipb.graph)
    assert torch.equal(tar.images([5, 33]), zipb.images([5, 33]))


def test_demo_source_and_bad_sources(tmp_path):
    m = _build("demo:64", tmp_path / "demo", shard_size=30)
    assert m["size"] == 64 and m["n_shards"] == 3
    bank = load_bank(tmp_path / "demo")
    imgs = bank.images(np.arange(64))
    assert imgs.shape == (64, 3, 24, 24) and 0 <= imgs.min() and imgs.max() <= 1
    assert imgs.std(dim=(1, 2, 3)).min() > 0.01  # no blank images
    with pytest.raises(StimoptError, match="does not exist"):
        _build(tmp_path / "nowhere", tmp_path / "x")
    with pytest.raises(StimoptError, match="other options"):
        _build("demo:64", tmp_path / "demo", k=7)
    with pytest.raises(StimoptError, match="not an image bank"):
        load_bank(tmp_path)
    with pytest.raises(StimoptError, match="out of range"):
        bank.images([64])


def test_exact_graph_equals_brute_force_and_ivf_reports_its_recall(tmp_path):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(700, 16)).astype(np.float32)
    info = build_graph(x, 12, tmp_path / "g.npy", method="exact")
    g = np.load(tmp_path / "g.npy")
    d = ((x[:, None, :] - x[None, :, :]) ** 2).sum(-1)
    np.fill_diagonal(d, np.inf)
    brute = np.argsort(d, axis=1)[:, :12]
    assert info["method"] == "exact" and info["recall_at_10"] == 1.0
    assert np.array_equal(g, brute)
    info = build_graph(x, 12, tmp_path / "ivf.npy", method="ivf", nprobe=2, recall_queries=300)
    gi = np.load(tmp_path / "ivf.npy")
    assert info["method"] == "ivf" and 0.3 < info["recall_at_10"] <= 1.0
    assert info["recall_at_10"] == round(recall_at(x, gi, 300), 4)
    assert not (gi == np.arange(700)[:, None]).any()  # never itself


def test_graph_blocks_resume_and_can_run_elsewhere(tmp_path):
    """A build stopped after some blocks continues with the missing ones only; blocks handed to
    ``run_blocks`` (a multirun in a bank build) give the same graph as computing them in place."""
    from stimopt.bank.graph import parts_dir, search_blocks

    x = np.random.default_rng(4).normal(size=(900, 12)).astype(np.float32)
    blocks = [(0, 250), (250, 500), (500, 900)]
    whole = build_graph(x, 10, tmp_path / "whole.npy", method="ivf", nprobe=4, blocks=blocks)
    out = tmp_path / "g.npy"
    calls = []

    def stop_after_one(todo):  # a job that dies after its first block
        calls.append(list(todo))
        search_blocks(x, 10, "ivf", parts_dir(out), {todo[0]: blocks[todo[0]]}, nprobe=4)

    with pytest.raises(StimoptError, match=r"graph blocks \[1, 2\] did not finish"):
        build_graph(x, 10, out, method="ivf", nprobe=4, blocks=blocks, run_blocks=stop_after_one)
    assert (parts_dir(out) / "index.faiss").exists() and not out.exists()
    with pytest.raises(StimoptError, match=r"graph blocks \[2\] did not finish"):
        build_graph(x, 10, out, method="ivf", nprobe=4, blocks=blocks, run_blocks=stop_after_one)
    assert calls == [[0, 1, 2], [1, 2]]  # each run asks only for the missing blocks
    info = build_graph(x, 10, out, method="ivf", nprobe=4, blocks=blocks)  # the rest, in this process
    assert not parts_dir(out).exists() and info == whole
    assert np.array_equal(np.load(out), np.load(tmp_path / "whole.npy"))


def test_kcenter_coresets_are_greedy_farthest_points_and_cover_every_cluster():
    rng = np.random.default_rng(3)
    centres = rng.normal(size=(12, 8)) * 20
    x = (centres[rng.integers(0, 12, 600)] + rng.normal(size=(600, 8))).astype(np.float32)
    cores = build_coresets(None, 3, 40, seed=0, features=x)
    assert cores.shape == (3, 40) and len({tuple(c) for c in cores.tolist()}) == 3  # different random starts
    labels = np.argmin(((x[:, None] - centres[None]) ** 2).sum(-1), axis=1)
    for core in cores:
        assert len(set(core.tolist())) == 40
        assert len(set(labels[core[:12]].tolist())) == 12  # the first 12 picks: one per cluster
        for i in range(1, 40):  # each pick is the image farthest from those chosen before it
            d = ((x[:, None] - x[core[:i]][None]) ** 2).sum(-1).min(1)
            assert d[core[i]] >= d.max() * (1 - 1e-4)
    with pytest.raises(StimoptError, match="needs the bank's features"):
        build_coresets(None, 1, 5)


def test_graph_coresets_are_distinct_farthest_neighbour_walks():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(500, 8)).astype(np.float32)
    import faiss

    _, ids = faiss.knn(x, x, 21)
    graph = ids[:, 1:]
    cores = build_coresets(graph, 4, 60, seed=0, method="graph")
    assert cores.shape == (4, 60)
    for core in cores:
        assert len(set(core.tolist())) == 60
        # every next member is, where possible, the farthest saved neighbour not yet taken
        steps = [(a, b) for a, b in zip(core[:-1], core[1:]) if b in graph[a]]
        assert len(steps) > 50
        a, b = steps[0]
        free = [j for j in graph[a] if j not in set(core[: list(core).index(a) + 1].tolist())]
        assert b == free[-1]
    assert not np.array_equal(cores[0], cores[1])


def _build_cmd(source, out, *extra):
    return [str(BIN / "stimopt-bank"), "build", str(source), str(out), "--model", "pixels", "--input-size", "8",
            "--image-size", "32", "--k", "8", "--shard-size", "50", *extra]


@pytest.mark.slow
def test_killed_build_continues_where_it_stopped(tmp_path):
    out = tmp_path / "bank"
    proc = subprocess.Popen(_build_cmd("demo:600", out), env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 240
    while not (out / "shards" / "00001").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (out / "manifest.json").exists(), "the build finished before it could be killed"
    done = sorted(p.name for p in (out / "shards").iterdir() if p.is_dir() and p.name.isdigit())
    assert 1 <= len(done) < 12
    stamps = {d: (out / "shards" / d / "features.npy").stat().st_mtime_ns for d in done}
    # what a kill during a shard's write leaves, for a shard done and one not done (whatever the timing was)
    pending = next(f"{s:05d}" for s in range(12) if f"{s:05d}" not in done)
    for name in (done[0], pending):
        (out / "shards" / f"{name}.tmp-999999").mkdir(exist_ok=True)
        np.save(out / "shards" / f"{name}.tmp-999999" / "features.npy", np.zeros(3))
    with pytest.raises(StimoptError, match="not finished building"):
        load_bank(out)
    run_cli(_build_cmd("demo:600", out)[1:], cwd=tmp_path, program="stimopt-bank")
    # finished shards were kept, not recomputed; the result equals an uninterrupted build
    assert all((out / "shards" / d / "features.npy").stat().st_mtime_ns == t for d, t in stamps.items())
    build_bank("demo:600", tmp_path / "clean", features=FeatureSpec(model="pixels", input_size=8), k=8, image_size=32,
               shard_size=50)  # the same options, uninterrupted
    a, b = load_bank(out), load_bank(tmp_path / "clean")
    assert a.size == b.size == 600
    assert np.array_equal(a.features, b.features) and np.array_equal(a.graph, b.graph)
    assert np.array_equal(np.load(a.path / "coresets.npy"), np.load(b.path / "coresets.npy"))
    assert not list((out / "shards").glob("*.tmp-*"))


@pytest.mark.slow
@pytest.mark.parametrize("launcher, override", [("joblib", "hydra.launcher.n_jobs=2"),
                                                ("submitit_local", "hydra.launcher.timeout_min=10")])
def test_multirun_build_equals_single_process_build(tmp_path, sources, launcher, override):
    """joblib: local processes; submitit_local: the submitit launcher that submitit_slurm uses, with
    its local executor (no cluster here), so the jobs go through submitit's pickling and job folders."""
    common = ["build", str(sources["zips"]), "--model", "pixels", "--input-size", "8", "--image-size", "24", "--k", "6"]
    from stimopt.bank.cli import main

    main([*common, str(tmp_path / "single")])  # in this process
    proc = run_cli([*common, str(tmp_path / "multi"), "--launcher", launcher, "--launcher-override", override],
                   cwd=tmp_path, program="stimopt-bank")
    assert "40 from zip source (2 shards)" in proc.stdout
    for stage in ("features", "graph"):  # one Hydra job per shard, for each stage
        jobs = sorted((tmp_path / "multi" / "hydra" / stage).glob("*/.hydra/overrides.yaml"))
        assert len(jobs) == 2 and f"stage={stage}" in jobs[0].read_text()
    a, b = load_bank(tmp_path / "single"), load_bank(tmp_path / "multi")
    for name in ("features.npy", "graph.npy", "coresets.npy", "offsets.npy"):
        assert np.array_equal(np.load(a.path / name), np.load(b.path / name)), name
    assert a.manifest["skipped"] == b.manifest["skipped"]


def test_pca_build_searches_the_graph_and_coresets_in_the_reduced_space(tmp_path):
    build_bank("demo:300", tmp_path / "b", features=FeatureSpec(model="pixels", input_size=8), k=6, image_size=24,
               shard_size=100, pca_dim=16)
    bank = load_bank(tmp_path / "b")
    reduced = np.load(tmp_path / "b" / "features_pca.npy")
    assert reduced.shape == (300, 16) and bank.features.shape == (300, 192)
    d = ((reduced[:, None, :] - reduced[None, :, :]) ** 2).sum(-1)
    np.fill_diagonal(d, np.inf)
    assert np.mean(np.asarray(bank.graph) == np.argsort(d, axis=1)[:, :6]) > 0.99  # ties aside, exact in PCA space
    far = ((reduced - reduced[bank.coresets[0][0]]) ** 2).sum(-1)
    assert bank.coresets[0][1] == np.argmax(far)  # the second pick: farthest from the first, in PCA space
