"""The contracts of issue 12: the engine is the only door to the target (every image a target scores
is a stored row counted against the budget, under every registered optimizer, white-box ones
included), and one objective owns the direction (a white-box optimizer climbs exactly what the
engine scores)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import stimopt
from stimopt import plugins
from stimopt.engine import Run
from stimopt.errors import StimoptError
from stimopt.objective import Objective
from stimopt.store import RunStore
from stimopt_plugins.vislens import Landscape, LatentSpace

DIM, SIZE = 6, 8


pytestmark = pytest.mark.usefixtures("one_thread")


class CountingTarget(stimopt.Target):
    """Two outputs (mean red, mean blue), in torch; counts every image it is shown."""

    differentiable = True
    n_outputs = 2

    def __init__(self):
        self.count = 0

    def evaluate(self, images):
        self.count += len(images)
        return torch.stack([images[:, 0].mean((1, 2)), images[:, 2].mean((1, 2))], 1)


class Decoder(stimopt.Generator):
    """codes [B, DIM] -> sigmoid(codes @ W) as [B, 3, 8, 8] images; differentiable."""

    def __init__(self, space):
        self._space = space
        self.w = torch.randn(DIM, 3 * SIZE * SIZE, generator=torch.Generator().manual_seed(0)) / DIM ** 0.5

    @property
    def space(self):
        return self._space

    def generate_torch(self, z):
        return torch.sigmoid(z.float() @ self.w).view(-1, 3, SIZE, SIZE)

    def generate(self, codes):
        return self.generate_torch(torch.as_tensor(np.asarray(codes), dtype=torch.float32))


class TinyBank(stimopt.Generator):
    """A bank of 300 random images with features, an exact kNN graph and one coreset."""

    space_type = stimopt.BankSpace

    def __init__(self, n: int = 300):
        rng = np.random.default_rng(0)
        feats = rng.standard_normal((n, 16)).astype(np.float32)
        d = ((feats[:, None] - feats[None]) ** 2).sum(-1)
        np.fill_diagonal(d, np.inf)
        self._space = stimopt.BankSpace(size=n, features=feats, graph=np.argsort(d, 1)[:, :8].astype(np.int32),
                                        coresets=(rng.permutation(n)[:60],))
        self.images = torch.rand(n, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))

    @property
    def space(self):
        return self._space

    def generate(self, codes):
        return self.images[torch.as_tensor(np.asarray(codes), dtype=torch.long)]


def candidate_generators():
    """One generator per kind of code space an optimizer may accept (the first that fits is used)."""
    rng = np.random.default_rng(0)
    refs = rng.standard_normal((4, DIM)).astype(np.float32)
    latent = Landscape(code="latent", prior="activation", reference_codes=refs, mu_pos=np.full(DIM, 0.5, np.float32),
                       mu_neg=np.full(DIM, -0.5, np.float32), mask=np.array([1, 1, 1, 0, 0, 0], np.float32))
    w = rng.standard_normal(DIM)
    clip = Landscape(code="clip", prior="activation", reference_codes=refs, brainactiv_w=w / np.linalg.norm(w))
    return [Decoder(stimopt.ContinuousSpace(dim=DIM)), TinyBank(), Decoder(LatentSpace(dim=DIM, landscape=latent)),
            Decoder(LatentSpace(dim=DIM, landscape=clip))]


def make_run(tmp_path, target, generator, optimizer, budget, batch, objective=None):
    optimizer.setup(generator.space, seed=0, budget=budget, batch_size=batch)
    return Run(target=target, generator=generator, optimizer=optimizer, objective=objective or Objective("max"),
               store=RunStore(tmp_path / "evaluations.sqlite", synchronous="NORMAL"), budget=budget, batch_size=batch,
               run_dir=tmp_path)


def fitted_optimizer(cls, budget, batch):
    """(optimizer, generator): the class with its defaults, on the first candidate generator it can search."""
    for generator in candidate_generators():
        if not isinstance(generator.space, cls.accepts):
            continue
        optimizer = cls()
        try:
            optimizer.setup(generator.space, seed=0, budget=budget, batch_size=batch)
        except StimoptError:
            continue  # e.g. prior_shift on CLIP codes, latent_gradient kld=activation without a landscape
        return cls(), generator
    raise AssertionError(f"no test generator fits {cls.__name__}; add one to candidate_generators()")


def registered_optimizers():
    plugins.load_plugins()
    return sorted(plugins.registry()["optimizer"].items())


def test_the_registry_holds_builtin_white_box_and_third_party_optimizers():
    names = dict(registered_optimizers())
    assert {"latent_gradient", "prior_shift", "hillclimb", "walk", "surrogate", "ga", "random"} <= set(names)


@pytest.mark.parametrize("name, entry", registered_optimizers(), ids=[n for n, _ in registered_optimizers()])
def test_every_image_a_target_scores_is_a_stored_row_within_budget(tmp_path, name, entry):
    budget, batch = 110, 20  # the last generation is truncated to 10
    optimizer, generator = fitted_optimizer(entry[0], budget, batch)
    target = CountingTarget()
    run = make_run(tmp_path, target, generator, optimizer, budget, batch)
    progress = run.run()
    rows = run.store.n_evaluations()
    assert target.count == rows == progress.n_evaluations <= budget
    assert rows == budget and sum(g["n"] for g in run.store.generations()) == rows
    scores = run.store.scores()
    assert progress.best_score == pytest.approx(np.nanmax(scores))  # best so far saw every row
    if optimizer.white_box:  # its gradient passes went through the engine: stored, flagged, counted
        passes = run.store.db.execute("SELECT COUNT(*) FROM evaluations WHERE info LIKE '%gradient_pass%'").fetchone()[0]
        assert passes >= batch and passes < rows
    run.store.close()


def test_a_white_box_pass_beyond_the_budget_is_refused(tmp_path):
    from stimopt_plugins.vislens import LatentGradient

    gen = Decoder(stimopt.ContinuousSpace(dim=DIM))
    opt = LatentGradient(kld="none", init="random")
    run = make_run(tmp_path, CountingTarget(), gen, opt, budget=10, batch=5)
    assert opt.objective.remaining == 10
    with pytest.raises(StimoptError, match="exceed the budget"):
        opt.objective(torch.zeros(11, DIM))
    run.run()
    assert run.store.n_evaluations() == 10 and run.target.count == 10


def contrast_run(tmp_path, generator, direction):
    from stimopt_plugins.vislens import LatentGradient

    target = CountingTarget()
    objective = Objective(direction, maximize=[0], suppress=[1])  # drive red, silence blue
    opt = LatentGradient(lr=0.1, kld="none", init="random", steps_per_ask=10)
    run = make_run(tmp_path / direction, target, generator, opt, budget=2 * 11 * 8, batch=8, objective=objective)
    run.run()
    rows = run.store.db.execute("SELECT outputs FROM evaluations ORDER BY id").fetchall()
    out = np.stack([np.frombuffer(r[0], dtype=np.float32) for r in rows])
    run.store.close()
    assert target.count == len(out) == 176
    return out[:8], out[-8:]


@pytest.mark.parametrize("kind", ["fourier", "pixels"])
def test_latent_gradient_climbs_the_contrast_the_engine_scores_in_both_directions(tmp_path, kind):
    from stimopt_plugins.image_codes import FourierGenerator, PixelGenerator

    gen = FourierGenerator(size=16, n_freq=4, device="cpu") if kind == "fourier" else PixelGenerator(size=16, device="cpu")
    first, last = contrast_run(tmp_path, gen, "max")
    assert (last[:, 0] - last[:, 1]).mean() > (first[:, 0] - first[:, 1]).mean() + 0.05  # the contrast rises...
    assert last[:, 1].mean() < first[:, 1].mean() - 0.02  # ...and the suppressed output falls
    first, last = contrast_run(tmp_path, gen, "min")
    assert (last[:, 0] - last[:, 1]).mean() < (first[:, 0] - first[:, 1]).mean() - 0.05  # min: the contrast falls
    assert last[:, 1].mean() > first[:, 1].mean() + 0.02


def test_objective_is_one_torch_implementation_for_arrays_and_gradients():
    obj = Objective("min", maximize=[0], suppress=[1], suppress_weight=0.5)
    r = torch.tensor([[1.0, 2.0], [3.0, 0.0]], requires_grad=True)
    response, score = obj(r)
    np.testing.assert_allclose(score.detach().numpy(), obj(r.detach().numpy())[1])  # same numbers on both paths
    score.sum().backward()
    np.testing.assert_allclose(r.grad.numpy(), [[-1.0, 0.5], [-1.0, 0.5]])  # direction applied once, in the gradient too
    assert not hasattr(obj, "sign")  # nothing outside reads a sign to apply it again


def test_white_box_optimizers_are_refused_for_targets_that_cannot_be_differentiated(compose, tmp_path):
    from stimopt.experiment import build_run

    for overrides, why in ([["target=rig"], "target 'rig' cannot be differentiated"], [["noise=poisson"], "samples its responses"]):
        cfg = compose(["optimizer=latent_gradient", "generator=fourier", "logger=none", *overrides])
        with pytest.raises(StimoptError) as exc:
            build_run(cfg, tmp_path / "run")
        msg = str(exc.value)
        assert "\n" not in msg and why in msg
        assert "cmaes" in msg and "latent_gradient" not in msg.split("fit")[1]  # names what fits, not itself
        assert not (tmp_path / "run").exists()  # refused before anything was built or shown


def test_latent_gradient_composes_and_runs_on_pixels_from_the_config(compose, tmp_path):
    from conftest import TINY_TARGET
    from stimopt.experiment import build_run

    cfg = compose(["optimizer=latent_gradient", "optimizer.kld=none", "optimizer.init=random", "optimizer.steps_per_ask=3",
                   "generator=pixels", "generator.size=32", "budget=16", "batch_size=4", "logger=none", "device=cpu", *TINY_TARGET])
    run = build_run(cfg, tmp_path / "run")
    progress = run.run()
    assert progress.n_evaluations == run.store.n_evaluations() == 16  # 3 gradient passes + 1 ask of 4
    assert run.optimizer.report()["adam_steps"] == 3
    run.store.close()
