"""Response loaders (tables, trials, NSD-style ROIs, THINGS-EEG-style channels), images, neuron
matching, backbone fallback and target errors."""
from __future__ import annotations

import zipfile

import numpy as np
import pytest
import torch

from stimopt import responses as R
from stimopt.errors import StimoptError
from stimopt_plugins import neural


def test_images_from_folder_zip_and_arrays_agree(tmp_path):
    from PIL import Image

    pixels = np.random.default_rng(0).integers(0, 256, (3, 8, 8, 3), dtype=np.uint8)
    (tmp_path / "imgs").mkdir()
    with zipfile.ZipFile(tmp_path / "imgs.zip", "w") as zf:
        for i, p in enumerate(pixels):
            Image.fromarray(p).save(tmp_path / "imgs" / f"{i:03d}.png")
            zf.write(tmp_path / "imgs" / f"{i:03d}.png", f"sub/{i:03d}.png")
    np.save(tmp_path / "a.npy", pixels)
    np.savez(tmp_path / "a.npz", images=pixels.transpose(0, 3, 1, 2).astype(np.float32) / 255)
    ref = torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 255
    for src in ("imgs", "imgs.zip", "a.npy", "a.npz"):
        x = R.load_images(tmp_path / src)
        assert x.shape == (3, 3, 8, 8)
        torch.testing.assert_close(x, ref, atol=1e-6, rtol=0)
    assert R.load_images(tmp_path / "a.npy", size=4).shape == (3, 3, 4, 4)
    with pytest.raises(StimoptError, match="do not exist"):
        R.load_images(tmp_path / "nope")


def test_tables_average_trials_in_every_format(tmp_path):
    import h5py

    trials = np.array([[1.0, 10.0], [3.0, 30.0], [5.0, 50.0], [np.nan, 70.0]])
    index = np.array([0, 0, 1, 1])
    expected = np.array([[2.0, 20.0], [5.0, 60.0]])  # NaN trials do not count
    np.savez(tmp_path / "t.npz", responses=trials, image_index=index, names=np.array(["v4a", "v4b"]))
    with h5py.File(tmp_path / "t.h5", "w") as f:
        f["responses"] = trials
        f["image_index"] = index
    (tmp_path / "t.csv").write_text("image,v4a,v4b\n0,1,10\n0,3,30\n1,5,50\n1,,70\n")
    np.savez(tmp_path / "rep.npz", responses=np.array([[[1.0, 10.0], [3.0, 30.0]], [[5.0, 50.0], [np.nan, 70.0]]]))
    for name in ("t.npz", "t.h5", "t.csv", "rep.npz"):
        table, names = R.load_table(tmp_path / name)
        np.testing.assert_allclose(table, expected, err_msg=name)
    assert R.load_table(tmp_path / "t.npz")[1] == ["v4a", "v4b"] and R.load_table(tmp_path / "t.csv")[1] == ["v4a", "v4b"]
    with pytest.raises(StimoptError, match="no 'resp' array"):
        R.load_table(tmp_path / "t.npz", key="resp")
    (tmp_path / "bad.csv").write_text("img,a\n0,1\n")
    with pytest.raises(StimoptError, match="header row starting with 'image'"):
        R.load_table(tmp_path / "bad.csv")


def test_nsd_style_rois_are_voxel_means_over_repeats(tmp_path):
    betas = np.array([[1.0, 3.0, 10.0], [3.0, 5.0, 20.0], [0.0, 2.0, 40.0]])  # 3 trials x 3 voxels
    np.savez(tmp_path / "nsd.npz", betas=betas, image_index=np.array([1, 1, 0]),
             roi_FFA=np.array([True, True, False]), roi_V1=np.array([False, False, True]))
    table, names = R.load_nsd(tmp_path / "nsd.npz")
    assert names == ["FFA", "V1"]
    np.testing.assert_allclose(table, [[1.0, 40.0], [3.0, 15.0]])
    assert R.load_nsd(tmp_path / "nsd.npz", rois=["V1"])[0].shape == (2, 1)
    with pytest.raises(StimoptError, match="PPA"):
        R.load_nsd(tmp_path / "nsd.npz", rois=["PPA"])


def test_things_eeg_style_channels_are_window_means(tmp_path):
    times = np.array([0.0, 0.1, 0.15, 0.2, 0.3])
    eeg = np.zeros((2, 2, 2, 5))
    eeg[:, :, 0, 1:4] = 2.0  # channel O1: 2 inside the window
    eeg[1, 0, 1, :] = 4.0  # channel Oz: image 1, first repeat
    np.savez(tmp_path / "eeg.npz", eeg=eeg, times=times, ch_names=np.array(["O1", "Oz"]))
    table, names = R.load_things_eeg(tmp_path / "eeg.npz", window=(0.1, 0.2))
    assert names == ["O1", "Oz"]
    np.testing.assert_allclose(table, [[2.0, 0.0], [2.0, 2.0]])
    with pytest.raises(StimoptError, match="holds no time points"):
        R.load_things_eeg(tmp_path / "eeg.npz", window=(1.0, 2.0))


def test_fit_reads_table_data_end_to_end(tmp_path):
    """Real files in, not the twin: images .npz + trial-level .csv -> encoder with R^2 per column."""
    from stimopt.fit import compose_fit, run_fit

    torch.manual_seed(0)
    imgs = torch.rand(120, 3, 16, 16)
    y = np.stack([imgs[:, 0].mean((1, 2)).numpy(), imgs[:, 2, :8].mean((1, 2)).numpy()], 1)
    np.savez(tmp_path / "imgs.npz", images=imgs.numpy())
    rows = [f"{i},{a},{b}" for i, (a, b) in enumerate(y)] * 2
    (tmp_path / "resp.csv").write_text("image,red,blue\n" + "\n".join(rows) + "\n")
    cfg = compose_fit(["model=encoder", "model.backbone=resnet18", "model.weights=random", "model.layer=conv1",
                       "model.input_size=16", "model.pool=2", "data.size=16", "device=cpu",
                       f"data.images={tmp_path / 'imgs.npz'}", f"data.responses={tmp_path / 'resp.csv'}"])
    report = run_fit(cfg, tmp_path / "fit")
    assert report["names"] == ["red", "blue"] and report["n_images"] == 120
    assert report["r2_test_median"] > 0.5, report
    target = neural.EncoderTarget(tmp_path / "fit" / "model.pt", roi="blue", device="cpu")
    assert target.evaluate(imgs[:4]).shape == (4,)
    with pytest.raises(StimoptError, match="unknown roi/channel 'FFA'"):
        neural.EncoderTarget(tmp_path / "fit" / "model.pt", roi="FFA", device="cpu")
    with pytest.raises(StimoptError, match="not a v4_ensemble checkpoint"):
        neural.V4EnsembleTarget(tmp_path / "fit" / "model.pt", device="cpu")
    with pytest.raises(StimoptError, match="stimopt-fit model=v4_ensemble"):
        neural.V4EnsembleTarget(tmp_path / "missing.pt", device="cpu")


def test_demo_checkpoint_is_fitted_once_then_reused(tmp_path, monkeypatch):
    """target.checkpoint=demo: the cached demo twin is used as is; when missing, a stimopt-fit
    process makes it, and a failed fit is one line naming the command to run instead."""
    from stimopt.fit import compose_fit

    monkeypatch.setenv("STIMOPT_CACHE", str(tmp_path / "cache"))
    for kind in ("v4_ensemble", "encoder"):  # the demo fits compose (a typo would surface only on first use)
        cfg = compose_fit([*neural.DEMO_FITS[kind], *neural.DEMO_DATA])
        assert cfg.data.twin.n_images == 1200 and cfg.model.input_size == 96
    monkeypatch.setitem(neural.DEMO_FITS, "encoder", ["model=encoder", "model.backbone=resnet18", "model.weights=random",
                                                      "model.layer=conv1", "model.pool=2", "device=cpu"])
    monkeypatch.setattr(neural.checkpoints, "DEMO_DATA", ["model.input_size=16", "data.size=16", "data.twin.n_images=60",
                                              "data.twin.n_neurons=2", "seed=0"])
    stale = tmp_path / "cache" / "fits" / "encoder-demo-v1" / "model.pt"  # an older demo's cache: never reused
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"old one-tailed demo")
    target = neural.EncoderTarget("demo", roi=1, device="cpu")  # fitted now, in a separate process
    path = tmp_path / "cache" / "fits" / f"encoder-demo-v{neural.checkpoints.DEMO_VERSION}-two" / "model.pt"
    assert target.checkpoint == str(path) and path.is_file()
    stamp = path.stat().st_mtime_ns
    again = neural.EncoderTarget("demo", roi=1, device="cpu")  # reused, not refitted
    assert path.stat().st_mtime_ns == stamp and not list(path.parent.parent.glob("*.tmp-*"))
    x = torch.rand(3, 3, 16, 16)
    assert torch.allclose(target.evaluate(x), again.evaluate(x))
    monkeypatch.setitem(neural.DEMO_FITS, "v4_ensemble", ["model=no_such_model"])
    with pytest.raises(StimoptError, match=r"the demo v4_ensemble fit failed .*stimopt-fit model=v4_ensemble"):
        neural.V4EnsembleTarget("demo", device="cpu")


@pytest.mark.slow
def test_twin_is_two_tailed_by_default_and_one_tailed_with_the_option():
    """The digital twin's neurons respond above and below baseline (skewness: two-tailed) unless
    data.twin.tails=one (a ReLU at baseline: half the images at exactly 0, one-tailed up)."""
    from stimopt.analyze.skewness import summarize

    torch.manual_seed(0)
    conv = torch.nn.Sequential(torch.nn.Conv2d(3, 16, 3, stride=2), torch.nn.ReLU()).eval()
    two = R.make_twin(conv, n_images=400, n_neurons=4, size=16, noise=0.0, seed=0)
    one = R.make_twin(conv, n_images=400, n_neurons=4, size=16, noise=0.0, seed=0, tails="one")
    s2, s1 = summarize(two["clean"], two["names"]), summarize(one["clean"], one["names"])
    assert [u["tails"] for u in s2["units"]] == ["two"] * 4, s2
    assert (two["clean"] < 0).mean() > 0.4 and (two["clean"] == 0).mean() < 0.01  # an anti-preferred tail
    assert [(u["tails"], u["side"]) for u in s1["units"]] == [("one", "up")] * 4, s1
    assert abs((one["clean"] == 0).mean() - 0.5) < 0.02 and one["clean"].min() == 0
    with pytest.raises(StimoptError, match="data.twin.tails must be two"):
        R.make_twin(conv, n_images=10, n_neurons=1, size=16, tails="both")


def test_demo_spellings_pick_the_tails(tmp_path, monkeypatch):
    monkeypatch.setenv("STIMOPT_CACHE", str(tmp_path))
    assert neural.checkpoints.demo_spelling("demo") == "two" and neural.checkpoints.demo_spelling("demo:one") == "one"
    assert neural.checkpoints.demo_spelling("model.pt") is None
    with pytest.raises(StimoptError, match="demo:one"):
        neural.checkpoints.demo_spelling("demo:three")
    v = neural.checkpoints.DEMO_VERSION
    for tails in ("two", "one"):  # each variant has its own cache folder
        f = tmp_path / "fits" / f"v4_ensemble-demo-v{v}-{tails}" / "model.pt"
        f.parent.mkdir(parents=True)
        f.write_bytes(tails.encode())
        assert neural.checkpoints.demo_checkpoint("v4_ensemble", tails) == f


def test_greedy_matching_recovers_a_shuffled_session():
    rng = np.random.default_rng(0)
    pred = rng.standard_normal((300, 6))
    perm = np.array([3, 0, 5, 1, 4, 2])
    recorded = 2.0 * pred[:, perm] + 0.3 * rng.standard_normal((300, 6)) + 5  # other units, other scale
    recorded = np.concatenate([recorded, rng.standard_normal((300, 1))], axis=1)  # a new, unmodelled neuron
    recorded[::7, 0] = np.nan
    pairs = neural.match_neurons(pred, recorded)
    assert len(pairs) == 6
    assert {p["model"]: p["recorded"] for p in pairs} == {int(m): j for j, m in enumerate(perm)}
    assert all(p["r2"] > 0.8 for p in pairs)
    assert [p["r2"] for p in pairs] == sorted([p["r2"] for p in pairs], reverse=True)  # greedy order


def test_missing_paper_backbone_falls_back_and_says_so(capsys):
    import os

    import torchvision

    url = torchvision.models.get_model_weights("resnet50").DEFAULT.url
    if os.path.isfile(os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(url))):
        pytest.skip("ResNet-50 weights are present here: no fallback happens")
    bb = neural.Backbone("resnet50", "layer3", "pretrained", 64, "cpu", fallback="efficientnet_lite0", fallback_layer="blocks.4")
    assert bb.model == "efficientnet_lite0" and "resnet50" in bb.note and "resnet50" in capsys.readouterr().err
    assert bb(torch.rand(2, 3, 64, 64)).shape[0] == 2
    with pytest.raises(StimoptError, match="resnet50"):
        neural.Backbone("resnet50", "layer3", "pretrained", 64, "cpu")


def test_split_is_disjoint_and_r2_ignores_missing():
    tr, va, te = neural.split_indices(100, 0.1, 0.2, seed=1)
    assert len(te) == 20 and len(va) == 10 and len(set(tr) | set(va) | set(te)) == 100
    true = np.array([[1.0], [2.0], [np.nan], [3.0]])
    assert neural.r2_score(np.array([[1.0], [2.0], [100.0], [3.0]]), true)[0] == pytest.approx(1.0)
