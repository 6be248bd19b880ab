"""stimopt-fit model=encoder model.readout=...: the seed paper's six mappings (Fig. 2a, A.1.2).

Planted neurons with known answers: a neuron that is exactly a 1x1-mixing + LayerNorm + ReLU
readout of two-tailed features is fit best by that mapping (v); responses unrelated to the images
give a large permutation p; a fitted readout becomes a target that predicts what the fit did.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from stimopt.errors import StimoptError
from stimopt.fit import compose_fit, run_fit
from stimopt_plugins.neural.data import split_indices
from stimopt_plugins.neural.encoder import MAPPINGS, Readout, compare_readouts, permutation_test

OPTS = {"pool": 0, "alphas": [0.01, 0.1, 1.0, 10.0, 100.0, 1000.0], "permutations": 200, "epochs": 150, "patience": 15,
        "lr": 3e-3, "quantiles": [0.3, 0.5, 0.7]}
TINY = ["model.backbone=resnet18", "model.weights=random", "model.layer=layer2", "model.input_size=32", "data.size=32",
        "device=cpu"]


def planted_mixing(n=1200, c=12, hw=2, k=3, seed=0):
    """Gaussian (two-tailed, pre-ReLU-like) feature maps and neurons that are a mix_relu readout of them."""
    f = torch.randn(n, c, hw, hw, generator=torch.Generator().manual_seed(seed))
    torch.manual_seed(seed + 1)
    teacher = Readout("mix_relu", c, c * hw * hw, k, 0)
    with torch.no_grad():
        teacher.mix.weight.copy_(torch.randn(c, c, 1, 1) / c**0.5)
        teacher.mix.bias.copy_(0.5 * torch.randn(c))
        teacher.linear.weight.copy_(torch.randn(k, c * hw * hw))
        y = teacher(f).double().numpy()
    return f, y + 0.1 * y.std(0) * np.random.default_rng(seed).standard_normal(y.shape)


@pytest.mark.slow
def test_a_planted_mixing_relu_neuron_is_fit_best_by_mapping_v(one_thread):
    f, y = planted_mixing()
    split = split_indices(len(y), 0.15, 0.15, 0)
    _, rows = compare_readouts(f, y, split, OmegaConf.create(OPTS), seed=0)
    r2 = {k: r["r2_test_median"] for k, r in rows.items()}
    assert set(r2) == set(MAPPINGS)
    assert max(r2, key=r2.get) == "mix_relu", r2
    assert r2["mix_relu"] > 0.9 and r2["mix_relu"] > r2["mix_linear"] + 0.05 and r2["mix_relu"] > r2["relu"] + 0.1, r2
    assert all(r["p_median"] < 0.01 for r in rows.values())  # every mapping predicts something real
    assert rows["quantile"]["quantile"] in OPTS["quantiles"] and len(rows["linear"]["alphas"]) == 3


def test_shuffled_responses_give_a_large_permutation_p(one_thread):
    """Under the null the p-value is uniform: over 9 shuffles its median is far from small."""
    f, y = planted_mixing(n=600)
    split = split_indices(len(y), 0.15, 0.15, 0)
    ps, r2s = [], []
    for s in range(9):
        shuffled = y[np.random.default_rng(s).permutation(len(y))]  # responses no longer belong to their images
        _, rows = compare_readouts(f, shuffled, split, OmegaConf.create(OPTS), seed=s, mappings=["linear" if s % 2 else "relu"])
        (r,) = rows.values()
        ps.append(r["p_median"])
        r2s.append(r["r2_test_median"])
    assert np.median(ps) > 0.15 and max(r2s) < 0.05, (ps, r2s)
    _, real = compare_readouts(f, y, split, OmegaConf.create(OPTS), seed=0, mappings=["linear"])
    assert real["linear"]["p_median"] == pytest.approx(1 / 201)  # the smallest p 200 permutations can give


def test_permutation_test_counts_the_shuffles():
    rng = np.random.default_rng(0)
    true = rng.standard_normal((50, 2))
    perfect = permutation_test(true, true, 99)
    assert perfect["p_median"] == pytest.approx(0.01) and np.allclose(perfect["p"], 0.01)
    noise = permutation_test(rng.standard_normal((50, 2)), true, 99)
    assert noise["p_median"] > 0.05
    assert permutation_test(true, true, 0)["p_median"] is None


@pytest.mark.slow
def test_compare_from_stimopt_fit_writes_the_table_and_each_readout_is_a_target(tmp_path, one_thread):
    from stimopt_plugins.neural import EncoderTarget

    cfg = compose_fit(["model=encoder", *TINY, "model.readout=compare", "model.compare=[relu,quantile,mix_relu]",
                       "model.epochs=15", "model.permutations=50", "data.twin.n_images=300", "data.twin.n_neurons=2"])
    report = run_fit(cfg, tmp_path)
    table = json.loads((tmp_path / "readouts.json").read_text())["readouts"]
    assert [r["readout"] for r in table] == ["relu", "quantile", "mix_relu"] and [r["label"] for r in table] == ["ii", "iii", "v"]
    assert (tmp_path / "readouts.png").stat().st_size > 0
    assert (tmp_path / "readouts.csv").read_text().splitlines()[0].startswith("label,readout,r2_test_median")
    best = max(table, key=lambda r: r["r2_test_median"])
    assert report["readout"] == best["readout"] and "best" in report["summary"]
    imgs = torch.rand(6, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    for r in table:  # every mapping's checkpoint is a target; it reads the checkpoint's own readout
        t = EncoderTarget(r["checkpoint"], roi=1, device="cpu")
        assert t.readout.kind == r["readout"] and t.evaluate(imgs).shape == (6,)
    main = EncoderTarget(tmp_path / "model.pt", device="cpu")
    assert main.readout.kind == best["readout"]
    torch.testing.assert_close(main.predict_all(imgs), EncoderTarget(best["checkpoint"], device="cpu").predict_all(imgs))
    imgs.requires_grad_(True)  # differentiable for the white-box optimizers
    (grad,) = torch.autograd.grad(EncoderTarget(tmp_path / "model_mix_relu.pt", roi=0, device="cpu").evaluate(imgs).sum(), imgs)
    assert grad.abs().sum() > 0


def test_one_mapping_fit_and_target_agree(tmp_path, one_thread):
    from stimopt_plugins.neural import EncoderTarget
    from stimopt_plugins.neural.backbone import backbone_from_spec

    report = run_fit(compose_fit(["model=encoder", *TINY, "model.readout=quantile", "model.permutations=0",
                                  "data.twin.n_images=200", "data.twin.n_neurons=2"]), tmp_path)
    assert report["readout"] == "quantile" and "readout iii quantile" in report["summary"] and len(report["p"]) == 2
    assert "no permutation test" in report["summary"] and report["p_median"] is None  # permutations=0 skips it
    assert not (tmp_path / "readouts.json").exists()
    t = EncoderTarget(tmp_path / "model.pt", device="cpu")
    imgs = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    feats = backbone_from_spec(report["backbone"], "cpu")(imgs)
    thr = t.readout.threshold.view(1, -1, 1, 1)
    x = torch.nn.functional.adaptive_avg_pool2d(torch.relu(feats - thr), 2).flatten(1)  # the mapping, by hand
    expected = ((x - t.readout.x_mean) / t.readout.x_std) @ t.readout.linear.weight.T + t.readout.linear.bias
    torch.testing.assert_close(t.predict_all(imgs), expected, rtol=1e-4, atol=1e-4)


def test_bad_readout_options_are_one_line(tmp_path):
    with pytest.raises(StimoptError, match="model.readout=guess is not a mapping; choose one of linear, relu"):
        run_fit(compose_fit(["model=encoder", *TINY, "model.readout=guess"]), tmp_path)
    f, y = planted_mixing(n=100)
    split = split_indices(100, 0.2, 0.2, 0)
    with pytest.raises(StimoptError, match=r"unknown readout\(s\) \['nope'\]"):
        compare_readouts(f, y, split, OmegaConf.create(OPTS), mappings=["nope"])
    with pytest.raises(StimoptError, match="strictly between 0 and 1"):
        compare_readouts(f, y, split, OmegaConf.create({**OPTS, "quantiles": [1.5]}), mappings=["quantile"])
    with pytest.raises(StimoptError, match=r"feature map \[N, C, H, W\]"):
        compare_readouts(f.flatten(1), y, split, OmegaConf.create(OPTS))


def test_a_checkpoint_from_before_readouts_is_read_as_its_ridge():
    """Encoder checkpoints written before model.readout existed hold x_mean, x_std, w, b only."""
    g = torch.Generator().manual_seed(0)
    feats = torch.randn(5, 4, 3, 3, generator=g)
    x_mean, x_std, w, b = torch.randn(16, generator=g), torch.rand(16, generator=g) + 0.5, torch.randn(16, 2, generator=g), torch.randn(2)
    r = Readout.from_checkpoint({"pool": 2, "x_mean": x_mean, "x_std": x_std, "w": w, "b": b})
    x = torch.nn.functional.adaptive_avg_pool2d(feats, 2).flatten(1)
    assert r.kind == "linear"
    torch.testing.assert_close(r(feats), ((x - x_mean) / x_std) @ w + b)
