"""stimopt-fit: the model contract, the digital twin end to end, checkpoints that become targets."""
from __future__ import annotations

import json
import sys
import textwrap

import numpy as np
import pytest
import torch

import stimopt
from conftest import cli_env, run_cli
from stimopt import plugins
from stimopt.fit import compose_fit, run_fit

TINY = ["model.backbone=resnet18", "model.weights=random", "model.layer=layer2", "model.input_size=32", "data.size=32", "device=cpu"]


def test_fit_config_composes_with_paper_defaults():
    cfg = compose_fit()
    assert cfg.model.backbone == "resnet50" and cfg.model.layer == "layer3"  # the paper's "layer 33"
    assert cfg.model.members == 25 and cfg.model.blocks == 4
    enc = compose_fit(["model=encoder"])
    assert enc.model._target_.endswith("fit_encoder") and len(enc.model.alphas) > 1


def test_another_engineers_model_plugs_in_without_touching_fit(tmp_path):
    """A plugin ships conf/model/NAME.yaml with _target_ -> its own fit(cfg, out_dir) -> dict."""
    pkg = tmp_path / "pkg"
    (pkg / "conf" / "model").mkdir(parents=True)
    (pkg / "third_fit.py").write_text(textwrap.dedent('''
        from stimopt.fit import register_fit

        @register_fit  # only marked functions (or a plugin's own) may be named by _target_
        def fit(cfg, out_dir):
            (out_dir / "model.pt").write_text("weights")
            return {"model": "third", "alpha": cfg.model.alpha, "checkpoint": str(out_dir / "model.pt")}
    '''))
    (pkg / "conf" / "model" / "third.yaml").write_text("_target_: third_fit.fit\nalpha: 3\n")
    sys.path.insert(0, str(pkg))
    class ThirdParty:
        @stimopt.hookimpl
        def register_config_dirs(self, register):
            register(str(pkg / "conf"))

    plugins.register_plugin(ThirdParty(), "third_party_fit")
    try:
        cfg = compose_fit(["model=third", "model.alpha=7"])
        report = run_fit(cfg, tmp_path / "out")
    finally:
        plugins.unregister_plugin("third_party_fit")
        sys.path.remove(str(pkg))
    assert report == {"model": "third", "alpha": 7, "checkpoint": str(tmp_path / "out" / "model.pt")}
    assert json.loads((tmp_path / "out" / "report.json").read_text())["alpha"] == 7


def test_encoder_recovers_the_twin_teacher(tmp_path, one_thread):
    cfg = compose_fit(["model=encoder", *TINY, "model.pool=0", "data.twin.n_images=500", "data.twin.n_neurons=4"])
    report = run_fit(cfg, tmp_path)
    assert report["r2_teacher_median"] >= 0.8, report
    assert report["r2_test_median"] >= 0.75 and len(report["r2_test"]) == 4
    assert len(set(report["alphas"])) >= 1 and report["n_test"] == 50
    # a new session: the same neurons recorded in another order (+ noise) on shared random images
    from stimopt_plugins.neural import EncoderTarget

    imgs = torch.rand(80, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    pred = EncoderTarget(tmp_path / "model.pt", device="cpu").predict_all(imgs).double().numpy()
    order = [2, 0, 3, 1]
    recorded = pred[:, order] + 0.05 * pred.std(0)[order] * np.random.default_rng(0).standard_normal((80, 4))
    np.savez(tmp_path / "session.npz", images=imgs.numpy())
    np.savez(tmp_path / "recorded.npz", responses=recorded)
    match = run_fit(compose_fit([*TINY, "mode=match", f"checkpoint={tmp_path / 'model.pt'}",
                                 f"data.images={tmp_path / 'session.npz'}", f"data.responses={tmp_path / 'recorded.npz'}"]),
                    tmp_path / "match")
    assert {p["model"]: p["recorded"] for p in match["pairs"]} == {m: j for j, m in enumerate(order)}
    assert json.loads((tmp_path / "match" / "report.json").read_text())["pairs"][0]["r2"] > 0.9


def test_v4_ensemble_recovers_the_twin_teacher_and_becomes_a_target(tmp_path, one_thread):
    from stimopt_plugins.neural import V4EnsembleTarget

    cfg = compose_fit(["model=v4_ensemble", *TINY, "model.members=2", "model.width=16", "model.epochs=25",
                       "model.patience=5", "data.twin.n_images=600", "data.twin.n_neurons=4"])
    report = run_fit(cfg, tmp_path)
    assert report["r2_teacher_median"] >= 0.8, report
    assert report["r2_test_median"] >= 0.75, report
    assert len(report["members"]) == 2 and all(m["epochs"] <= 25 for m in report["members"])
    ckpt = torch.load(tmp_path / "model.pt", weights_only=True)
    assert ckpt["config"]["model"]["members"] == 2 and ckpt["names"] == ["twin0", "twin1", "twin2", "twin3"]
    one = V4EnsembleTarget(tmp_path / "model.pt", neuron=2, device="cpu")
    two = V4EnsembleTarget(tmp_path / "model.pt", neuron=["twin2", 0], device="cpu")
    imgs = torch.rand(5, 3, 32, 32)
    a, b = one.evaluate(imgs), two.evaluate(imgs)
    assert a.shape == (5,) and b.shape == (5, 2) and two.n_outputs == 2
    torch.testing.assert_close(a, b[:, 0])
    members = torch.stack([m(one.backbone(imgs)) for m in one.model.members]).mean(0)
    torch.testing.assert_close(a, (members * one.model.std + one.model.mean)[:, 2])  # prediction = ensemble mean


@pytest.mark.slow
def test_fit_and_optimize_from_the_command_line(tmp_path):
    env = cli_env(OMP_NUM_THREADS="1")
    out = tmp_path / "fit"
    proc = run_cli([*TINY, "model=encoder", "data.twin.n_images=300", "data.twin.n_neurons=3", f"out={out}"],
                   cwd=tmp_path, program="stimopt-fit", env=env)
    assert "median held-out R^2" in proc.stdout
    report = json.loads((out / "report.json").read_text())
    assert report["model"] == "encoder" and (out / "model.pt").exists()
    run = tmp_path / "run"
    run_cli(["target=encoder", f"target.checkpoint={out / 'model.pt'}", "target.roi=[0,1]", "objective=contrast",
             "objective.maximize=[0]", "objective.suppress=[1]", "generator=pixels", "generator.size=32",
             "generator.resolution=8", "optimizer=random", "budget=40", "batch_size=20", "logger=none",
             f"hydra.run.dir={run}"], cwd=tmp_path, env=env)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["n_evaluations"] == 40 and summary["target_name"] == "encoder"
    from stimopt.store import RunStore

    store = RunStore(run / "evaluations.sqlite")
    rows = store.db.execute("SELECT response, outputs FROM evaluations").fetchall()
    store.close()
    outs = np.stack([np.frombuffer(o, dtype=np.float32) for _, o in rows])
    np.testing.assert_allclose([r for r, _ in rows], outs[:, 0] - outs[:, 1], rtol=1e-4, atol=1e-4)  # a - b


def test_fit_errors_are_one_line(tmp_path):
    from stimopt.errors import StimoptError

    with pytest.raises(StimoptError, match="data.images given without data.responses"):
        run_fit(compose_fit([*TINY, f"data.images={tmp_path}"]), tmp_path / "o")
    with pytest.raises(StimoptError, match="cannot be imported"):
        run_fit(compose_fit(["model._target_=nowhere.fit"]), tmp_path / "o")
    with pytest.raises(StimoptError, match="mode must be"):
        run_fit(compose_fit(["mode=guess"]), tmp_path / "o")
