"""optimizer=mei: gradient MEIs through the engine's differentiable objective.

A planted unit (a tiny conv filter read at the image centre, defined here) is raised with
direction=max and lowered with direction=min by the same code; every image the target sees is a
stored evaluation (the count matches the budget and the target's own count), and the MEI refuses
what it cannot work with in one line.
"""
from __future__ import annotations

import json
import sqlite3

import numpy as np
import pytest
import torch

import stimopt
from stimopt.errors import StimoptError

SIZE = 16


class PlantedUnit(stimopt.Target):
    """One conv filter (a fixed random 5x5 colour pattern) read at the image centre; counts what it scores."""

    differentiable = True

    def __init__(self):
        g = torch.Generator().manual_seed(1)
        self.conv = torch.nn.Conv2d(3, 1, 5, padding=2, bias=False)
        with torch.no_grad():
            self.conv.weight.copy_(torch.randn(1, 3, 5, 5, generator=g))
        self.conv.weight.requires_grad_(False)
        self.n_seen = 0

    def evaluate(self, images):
        self.n_seen += len(images)
        out = self.conv(images.float() - 0.5)
        return out[:, 0, SIZE // 2, SIZE // 2]


def run_mei(direction: str, budget: int, batch: int, tmp_path, **options):
    from stimopt.engine import Run
    from stimopt.objective import Objective
    from stimopt.store import RunStore
    from stimopt_plugins.image_codes import PixelGenerator
    from stimopt_plugins.mei import MEI

    target, gen = PlantedUnit(), PixelGenerator(size=SIZE, resolution=SIZE, device="cpu")
    opt = MEI(**{"steps_per_ask": 9, "jitter": 1.0, "rotate": 5.0, "scale": 0.05, "lr": 0.1, **options})
    opt.setup(gen.space, seed=0, budget=budget, batch_size=batch)
    store = RunStore(tmp_path / f"{direction}.sqlite")
    run = Run(target=target, generator=gen, optimizer=opt, objective=Objective(direction), store=store,
              budget=budget, batch_size=batch, run_dir=tmp_path)
    run.run()
    return run, target, opt


@pytest.mark.parametrize("direction", ["max", "min"])
def test_mei_moves_a_planted_unit_in_the_asked_direction_and_records_every_evaluation(tmp_path, direction):
    torch.set_num_threads(1)
    budget, batch = 3 * (9 + 1) * 2, 2  # 3 asks: 9 gradient passes + the clean images, 2 images each
    run, target, opt = run_mei(direction, budget, batch, tmp_path)
    store = run.store
    resp = store.responses()
    # every image the target scored is a stored evaluation, and the run spent exactly its budget
    assert store.n_evaluations() == budget == len(resp) == target.n_seen == run.progress.n_evaluations
    db = sqlite3.connect(store.path)
    infos = [json.loads(r[0]) if r[0] else {} for r in db.execute("SELECT info FROM evaluations ORDER BY id")]
    assert sum(bool(i.get("gradient_pass")) for i in infos) == opt.n_steps * batch == 27 * batch
    # the recorded codes are the images the target saw: re-scoring them reproduces the stored responses
    with torch.no_grad():
        again = target.evaluate(run.generator.generate(store.codes())).numpy()
    assert np.allclose(again, resp, atol=1e-4)
    clean = [g for g in store.generations() if g["n"] == batch]
    first, last = resp[:batch].mean(), resp[-batch:].mean()  # the first pass (near-grey start) and the final MEIs
    scores = store.scores()
    assert np.allclose(scores, resp if direction == "max" else -resp)  # direction applied once, by the objective
    if direction == "max":
        assert last > first + 1.0 and last > 0
    else:
        assert last < first - 1.0 and last < 0
    assert len(clean) == 30


def test_mei_diversity_term_spreads_the_batch(tmp_path):
    from stimopt_plugins.mei.transforms import similarity

    torch.set_num_threads(1)
    sims = {}
    for w in (0.0, 2.0):
        run, _, opt = run_mei("max", 2 * (9 + 1) * 4, 4, tmp_path / str(w), diversity=w)
        with torch.no_grad():
            sims[w] = float(similarity(opt._images()))
    assert sims[2.0] < sims[0.0] - 0.1


def test_mei_constraints_and_gradient_blur():
    from stimopt_plugins.mei.transforms import blur_gradient, constrain

    x = torch.rand(3, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0))
    y = constrain(x, norm=2.0, contrast=0.05)
    assert (y.flatten(1).std(dim=1, unbiased=False) <= 0.05 + 1e-5).all()
    assert ((y - 0.5).flatten(1).norm(dim=1) <= 2.0 + 1e-5).all()
    assert torch.equal(constrain(x, None, None), x)
    z = x.clone().requires_grad_(True)
    impulse = torch.zeros_like(x)
    impulse[:, :, SIZE // 2, SIZE // 2] = 1.0
    (blur_gradient(z * 1.0, 1.5) * impulse).sum().backward()
    g = z.grad[0, 0]
    assert g[SIZE // 2, SIZE // 2] < 1.0 and g[SIZE // 2, SIZE // 2 + 2] > 0  # the impulse's gradient is spread


@pytest.mark.slow
def test_mei_refuses_what_it_cannot_use(tmp_path):
    from stimopt.config import compose
    from stimopt.experiment import build_run
    from stimopt_plugins.mei import MEI

    tiny = ["logger=none", "device=cpu", "target.model=resnet18", "target.weights=random", "target.layer=layer1",
            "target.input_size=16", "generator.size=16", "budget=10", "batch_size=2"]
    run = build_run(compose([*tiny, "generator.n_freq=8", "optimizer=mei"]), tmp_path / "fourier")  # the default generator: fourier
    assert run.optimizer.mode == "codes"  # the generator is the parametrization there
    run = build_run(compose([*tiny, "experiment=mei"]), tmp_path / "pixels")
    assert run.optimizer.mode == "image" and run.optimizer.resolution == 16
    with pytest.raises(StimoptError, match="cannot be differentiated") as e:
        build_run(compose(["logger=none", "device=cpu", "experiment=mei", "target=rig", "budget=10"]), tmp_path / "rig")
    assert "\n" not in str(e.value)
    with pytest.raises(StimoptError, match="noise") as e:
        build_run(compose([*tiny, "experiment=mei", "noise=poisson"]), tmp_path / "noise")
    assert "\n" not in str(e.value)
    for bad in ({"param": "wavelet"}, {"lr": 0}, {"scale": 1.5}, {"contrast": -1}):
        with pytest.raises(StimoptError, match=f"optimizer.{next(iter(bad))}"):
            MEI(**bad)


def test_mei_resumes_where_it_stopped(tmp_path):
    from stimopt_plugins.image_codes import PixelGenerator
    from stimopt_plugins.mei import MEI

    torch.set_num_threads(1)
    run, _, opt = run_mei("max", 20, 2, tmp_path)
    twin = MEI(steps_per_ask=9, jitter=1.0, rotate=5.0, scale=0.05, lr=0.1)
    twin.setup(PixelGenerator(size=SIZE, resolution=SIZE, device="cpu").space, seed=0, budget=20, batch_size=2)
    twin.bind(run.optimizer.objective)  # the engine binds before it restores
    _, state = run.store.checkpoint()
    twin.load_state_dict(state["optimizer"])
    assert twin.n_steps == opt.n_steps
    assert torch.equal(twin.param.tensor.detach(), opt.param.tensor.detach())
    assert torch.equal(twin.rng.get_state(), opt.rng.get_state())
