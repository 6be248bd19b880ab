"""stimopt-analyze skewness: planted units with known tails, the CNN pre/post-ReLU path, the app."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import stimopt
from stimopt.analyze.app import Context, run_analysis
from stimopt.analyze.common import ArraySource
from stimopt.analyze.skewness import classify
from stimopt.errors import StimoptError


def random_images(n=400, size=8, seed=0):
    return np.random.default_rng(seed).random((n, 3, size, size)).astype(np.float32)


class Planted(stimopt.Target):
    """Output 0: a fixed random projection of the pixels (Gaussian: two-tailed); output 1: the same
    projection rectified at its 70th percentile (one-tailed, up); output 2: minus output 1 (one-tailed, down)."""

    n_outputs = 3

    def __init__(self, size=8):
        self.w = torch.as_tensor(np.random.default_rng(1).normal(size=3 * size * size), dtype=torch.float32)

    def evaluate(self, images):
        z = images.flatten(1) @ self.w
        z = (z - z.mean()) / z.std()  # per batch: batch_size covers all images below
        r = torch.relu(z - 0.52)
        return torch.stack([z, r, -r], dim=1)

    def describe(self):
        return "planted"


def ctx_for(target, source, tmp_path, units=None, **options):
    return Context(options={"n": None, "relu": "both", "threshold": 1.0, **options}, source=source,
                   make_target=lambda **kw: target, out=tmp_path, units=units, batch_size=10_000)


def test_classify_rule():
    assert classify(0.1) == ("two", "both")
    assert classify(2.0) == ("one", "up")
    assert classify(-1.5) == ("one", "down")
    assert classify(float("nan"))[0] == "none"


def test_planted_two_and_one_tailed_units(tmp_path):
    done = run_analysis("skewness", ctx_for(Planted(), ArraySource(random_images()), tmp_path))
    units = json.loads((tmp_path / "skewness.json").read_text())["units"]
    assert [u["tails"] for u in units] == ["two", "one", "one"]
    assert abs(units[0]["kappa"]) < 0.5 and units[1]["kappa"] > 1.0 and units[2]["side"] == "down"
    assert (tmp_path / "skewness.csv").exists() and (tmp_path / "skewness.png").exists()
    assert "skewness" in (tmp_path / "report.md").read_text() and "median kappa" in done["line"]


def test_units_select_outputs_of_a_multi_output_target(tmp_path):
    run_analysis("skewness", ctx_for(Planted(), ArraySource(random_images()), tmp_path, units=[1]))
    out = json.loads((tmp_path / "skewness.json").read_text())
    assert [u["unit"] for u in out["units"]] == ["1"] and out["units"][0]["tails"] == "one"
    with pytest.raises(StimoptError, match="out of range"):
        run_analysis("skewness", ctx_for(Planted(), ArraySource(random_images()), tmp_path, units=[7]))


def test_cnn_layer_pre_and_post_relu(tmp_path, tiny_cnn):
    from stimopt_plugins.cnn import CNNUnit

    built = []

    def make(**kw):
        built.append(kw)
        return CNNUnit(model=tiny_cnn, layer="conv2", unit=0, input_size=16, device="cpu", **kw)

    ctx = Context(options={"n": None, "relu": "both"}, source=ArraySource(random_images(300, 16)), make_target=make,
                  out=tmp_path, units="all", batch_size=128, target_keys={"relu": False})
    run_analysis("skewness", ctx)
    out = json.loads((tmp_path / "skewness.json").read_text())
    assert built == [{"relu": False}] and out["read"] == "pre_relu" and len(out["units"]) == 8
    assert out["post_relu"]["median_kappa"] > out["median_kappa"]
    # the channel read from one pass equals the target's own response for each unit
    imgs = ctx.source.images(np.arange(5))
    from stimopt.analyze.common import UnitReader

    reader = UnitReader(make(relu=False), [3])
    np.testing.assert_allclose(reader(imgs)[:, 0], make(relu=False).__class__(model=tiny_cnn, layer="conv2", unit=3, input_size=16,
                                                                               device="cpu").evaluate(imgs).numpy(), rtol=1e-5)


def test_nan_responses_are_one_line(tmp_path):
    class Bad(Planted):
        def evaluate(self, images):
            r = super().evaluate(images)
            r[3, 0] = float("nan")
            return r

    with pytest.raises(StimoptError, match="NaN"):
        run_analysis("skewness", ctx_for(Bad(), ArraySource(random_images()), tmp_path))


def test_app_end_to_end(tmp_path):
    from conftest import ROOT, TINY_TARGET, run_cli

    out = tmp_path / "an"
    proc = run_cli(["skewness", *TINY_TARGET, "units=[0,1,2]", "skewness.n=40", "batch_size=20", f"out={out}", "device=cpu"],
                   cwd=ROOT, program="stimopt-analyze")
    data = json.loads((out / "skewness.json").read_text())
    assert len(data["units"]) == 3 and {"kappa", "tails"} <= set(data["units"][0]) and "median_kappa" in data
    assert "median kappa" in proc.stdout
    bad = run_cli(["skewnes", f"out={out}"], cwd=ROOT, program="stimopt-analyze", check=False)
    assert bad.returncode == 2 and "unknown analysis 'skewnes'" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1


def test_name_from_argv():
    from stimopt.analyze.app import _name_from_argv

    assert _name_from_argv(["screen", "screen.k=5"]) == ["screen.k=5", "analysis=screen"]
    assert _name_from_argv(["--cfg", "job", "skewness", "units=all"]) == ["--cfg", "job", "units=all", "analysis=skewness"]
    assert _name_from_argv(["-m", "skewness", "target.layer=blocks.1,blocks.2"])[-1] == "analysis=skewness"
    assert _name_from_argv(["units=all"]) == ["units=all"]
