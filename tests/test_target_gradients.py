"""Fitted targets are differentiable: d(response)/d(image) reaches the pixels for v4_ensemble and
encoder checkpoints (white-box optimizers need it); the engine's inference mode turns it off."""
from __future__ import annotations

import pytest
import torch

from stimopt.fit import compose_fit, run_fit
from stimopt_plugins.neural import EncoderTarget, V4EnsembleTarget

TINY = ["model.backbone=resnet18", "model.weights=random", "model.layer=layer1", "model.input_size=16", "data.size=16",
        "device=cpu", "data.twin.n_images=60", "data.twin.n_neurons=2", "seed=0"]


@pytest.fixture(scope="module")
def fits(tmp_path_factory):
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("fits")
    try:
        run_fit(compose_fit(["model=encoder", *TINY, "model.pool=2"]), out / "encoder")
        run_fit(compose_fit(["model=v4_ensemble", *TINY, "model.members=2", "model.width=8", "model.blocks=1",
                             "model.epochs=2", "model.patience=1"]), out / "v4")
    finally:
        torch.set_num_threads(n)
    return {"encoder": out / "encoder" / "model.pt", "v4_ensemble": out / "v4" / "model.pt"}


@pytest.mark.parametrize("kind", ["encoder", "v4_ensemble"])
def test_response_gradient_reaches_the_image(fits, kind):
    target = (EncoderTarget(fits[kind], roi=1, device="cpu") if kind == "encoder"
              else V4EnsembleTarget(fits[kind], neuron=1, device="cpu"))
    x = torch.rand(3, 3, 16, 16, generator=torch.Generator().manual_seed(0)).requires_grad_(True)
    r = target.evaluate(x)
    assert r.shape == (3,) and r.requires_grad
    (grad,) = torch.autograd.grad(r.sum(), x)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0
    assert (grad.abs().flatten(1).sum(1) > 0).all()  # every image gets its own gradient
    # the gradient is the response's: a small step along it raises the response
    step = 1e-2 * grad / grad.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
    with torch.no_grad():
        assert (target.evaluate(x + step) > target.evaluate(x)).all()
    # the target's own weights stay frozen: gradients go to the images only
    params = list(target.backbone.net.parameters()) + list(getattr(target, "model", torch.nn.Linear(1, 1)).parameters())
    assert all(p.grad is None for p in params)
    with torch.inference_mode():  # the engine's black-box path: no graph at all
        assert not target.evaluate(x.detach()).requires_grad


@pytest.mark.parametrize("kind", ["encoder", "v4_ensemble"])
def test_latent_gradient_runs_on_a_fitted_target_and_raises_its_response(fits, kind, compose, tmp_path):
    """The white-box optimizer through the engine's differentiable handle, on a fitted checkpoint:
    every pass stored and counted, and the response climbs."""
    from stimopt.experiment import build_run

    which = "target.roi=1" if kind == "encoder" else "target.neuron=1"
    cfg = compose([f"target={kind}", f"target.checkpoint={fits[kind]}", which, "optimizer=latent_gradient",
                   "optimizer.kld=none", "optimizer.init=random", "optimizer.steps_per_ask=4", "optimizer.lr=0.05",
                   "generator=pixels", "generator.size=16", "budget=40", "batch_size=4", "logger=none", "device=cpu"])
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        run = build_run(cfg, tmp_path / "run")
        progress = run.run()
    finally:
        torch.set_num_threads(n)
    assert progress.n_evaluations == run.store.n_evaluations() == 40
    rows = run.store.db.execute("select generation, avg(response) from evaluations group by generation order by generation").fetchall()
    run.store.close()
    assert rows[-1][1] > rows[0][1], rows
