"""The loop, the objective, the run store, the bad-response policy and in-process resume."""
from __future__ import annotations

import sqlite3

import numpy as np
import pytest
import torch

import stimopt
from stimopt.engine import Run
from stimopt.objective import Objective
from stimopt.store import RunStore
from stimopt_plugins.image_codes import FourierGenerator
from stimopt_plugins.nevergrad import NevergradOptimizer
from stimopt_plugins.random_search import RandomSearch


class MeanBrightness(stimopt.Target):
    """Mean red minus mean blue: a known, smooth objective."""

    differentiable = True

    def evaluate(self, images):
        return images[:, 0].mean(dim=(1, 2)) - images[:, 2].mean(dim=(1, 2))


class Faulty(stimopt.Target):
    """Returns NaN for stimulus 1 of generation ``bad_generation``, or a wrong shape."""

    def __init__(self, bad_generation=1, mode="nan"):
        self.calls, self.bad_generation, self.mode = 0, bad_generation, mode

    def evaluate(self, images):
        r = images.mean(dim=(1, 2, 3)).clone()
        if self.calls == self.bad_generation:
            if self.mode == "nan":
                r[1] = float("nan")
            else:
                r = r[:-1]
        self.calls += 1
        return r

    def state_dict(self):
        return {"calls": self.calls}

    def load_state_dict(self, state):
        self.calls = state["calls"]


def make_run(tmp_path, target=None, optimizer=None, direction="max", budget=200, batch=20, seed=0, policy="stop", name="run"):
    gen = FourierGenerator(size=16, n_freq=4, device="cpu")
    opt = optimizer or RandomSearch()
    opt.setup(gen.space, seed=seed, budget=budget, batch_size=batch)
    store = RunStore(tmp_path / name / "evaluations.sqlite")
    run = Run(target=target or MeanBrightness(), generator=gen, optimizer=opt, objective=Objective(direction),
              store=store, budget=budget, batch_size=batch, on_bad_response=policy, run_dir=tmp_path / name)
    run.restore()
    return run


def test_loop_records_every_evaluation_and_tracks_best(tmp_path):
    run = make_run(tmp_path, budget=130, batch=20)
    progress = run.run()
    assert progress.n_evaluations == 130  # last batch truncated to 10
    assert run.store.n_evaluations() == 130
    gens = run.store.generations()
    assert [g["n"] for g in gens] == [20] * 6 + [10]
    responses = run.store.responses()
    assert progress.best_response == pytest.approx(responses.max())
    # each stored code reproduces its response
    top = run.store.top(1)[0]
    image = run.generator.generate(top["code"][None])
    assert float(run.target.evaluate(image)[0]) == pytest.approx(top["response"], rel=1e-5)


def test_direction_min_minimizes_and_max_maximizes(tmp_path):
    best = {}
    for direction in ("max", "min"):
        run = make_run(tmp_path, optimizer=NevergradOptimizer("ParametrizedCMA", {"popsize": 20, "diagonal": True}),
                       direction=direction, budget=400, name=direction)
        best[direction] = run.run().best_response
        first = run.store.responses()[:20]
        assert (best[direction] > first.max()) if direction == "max" else (best[direction] < first.min())
    assert best["max"] > 0.3 and best["min"] < -0.3


def test_objective_weights_and_direction():
    obj = Objective("min", weights=[1.0, -1.0])
    response, score = obj(np.array([[3.0, 1.0], [0.0, 2.0]]))
    assert response.tolist() == [2.0, -2.0]
    assert score.tolist() == [-2.0, 2.0]
    with pytest.raises(stimopt.StimoptError, match="2 weights"):
        obj(np.ones((2, 3)))
    with pytest.raises(stimopt.StimoptError, match="direction"):
        Objective("up")


def test_bad_response_stop_saves_stimuli_and_keeps_committed_data(tmp_path):
    run = make_run(tmp_path, target=Faulty(bad_generation=2), budget=100)
    with pytest.raises(stimopt.StimoptError, match=r"NaN/inf for 1 of 20 stimuli in generation 2.*on_bad_response=skip"):
        run.run()
    saved = np.load(tmp_path / "run" / "bad_generation_2.npz")
    assert saved["codes"].shape == (20, 48) and saved["images"].shape == (20, 3, 16, 16)
    assert np.isnan(saved["responses"][1])
    assert RunStore(tmp_path / "run" / "evaluations.sqlite").n_evaluations() == 40


def test_bad_response_skip_records_missing_and_goes_on(tmp_path):
    run = make_run(tmp_path, target=Faulty(bad_generation=1), budget=60, policy="skip")
    run.run()
    responses = run.store.responses()
    assert responses.size == 60 and np.isnan(responses[21]) and np.isfinite(np.delete(responses, 21)).all()
    assert run.store.generations()[1]["n_missing"] == 1


def test_wrong_shape_is_a_clear_error(tmp_path):
    run = make_run(tmp_path, target=Faulty(bad_generation=0, mode="shape"), budget=40)
    with pytest.raises(stimopt.StimoptError, match=r"shape \(19,\) for 20 stimuli"):
        run.run()


def test_budget_must_be_positive(tmp_path):
    with pytest.raises(stimopt.StimoptError, match="budget must be a positive"):
        make_run(tmp_path, budget=0)


@pytest.mark.parametrize("make_opt", [RandomSearch, lambda: NevergradOptimizer("ParametrizedCMA", {"popsize": 20, "diagonal": True})])
def test_resume_from_checkpoint_equals_uninterrupted(tmp_path, make_opt):
    full = make_run(tmp_path, optimizer=make_opt(), budget=200, name="full")
    full.run()
    # interrupted: 4 generations, then a fresh process-like rebuild that restores from the store
    part = make_run(tmp_path, optimizer=make_opt(), budget=200, name="part")
    for _ in range(4):
        part.step()
    part.store.close()
    resumed = make_run(tmp_path, optimizer=make_opt(), budget=200, name="part")
    assert resumed.progress.n_evaluations == 80
    resumed.run()
    np.testing.assert_array_equal(resumed.store.responses(), full.store.responses())
    np.testing.assert_array_equal(resumed.store.codes(), full.store.codes())


class KilledAfter(MeanBrightness):
    """Dies (like a killed process) at its ``calls``-th evaluation."""

    def __init__(self, calls):
        self.left = calls

    def evaluate(self, images):
        self.left -= 1
        if self.left < 0:
            raise KeyboardInterrupt
        return super().evaluate(images)


def test_white_box_run_resumes_from_its_last_committed_gradient_pass(tmp_path):
    from stimopt_plugins.vislens import LatentGradient

    def opt():
        return LatentGradient(lr=0.05, kld="none", init="random", steps_per_ask=4)

    full = make_run(tmp_path, optimizer=opt(), budget=300, name="full")
    full.run()
    assert [g["n"] for g in full.store.generations()] == [20] * 15  # 3 asks x (4 gradient passes + 1)
    # at a generation boundary: the resumed run equals the uninterrupted one
    part = make_run(tmp_path, optimizer=opt(), budget=300, name="part")
    part.step()
    part.store.close()
    resumed = make_run(tmp_path, optimizer=opt(), budget=300, name="part")
    assert resumed.progress.n_evaluations == 100
    resumed.run()
    np.testing.assert_allclose(resumed.store.responses(), full.store.responses(), rtol=1e-5)
    # killed in the middle of an ask: the committed passes stay counted, the budget still holds
    killed = make_run(tmp_path, target=KilledAfter(7), optimizer=opt(), budget=300, name="killed")
    with pytest.raises(KeyboardInterrupt):
        killed.run()
    killed.store.close()
    again = make_run(tmp_path, optimizer=opt(), budget=300, name="killed")
    assert again.progress.n_evaluations == 140  # one ask (100) + two passes of the second
    again.run()
    assert again.store.n_evaluations() == again.progress.n_evaluations == 300


def test_same_seed_same_result_other_seed_differs(tmp_path):
    a = make_run(tmp_path, seed=3, budget=60, name="a").run().best_response
    b = make_run(tmp_path, seed=3, budget=60, name="b").run().best_response
    c = make_run(tmp_path, seed=4, budget=60, name="c").run().best_response
    assert a == b and a != c


def test_store_is_wal_and_rows_carry_codes(tmp_path):
    run = make_run(tmp_path, budget=40)
    run.run()
    db = sqlite3.connect(tmp_path / "run" / "evaluations.sqlite")
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    gen, pos, code = db.execute("SELECT generation, position, code FROM evaluations WHERE id=25").fetchone()
    assert (gen, pos) == (1, 4) and len(code) == 48 * 4


def test_fourier_generator_is_differentiable_and_checks_code_size():
    gen = FourierGenerator(size=16, n_freq=4, device="cpu")
    z = torch.zeros(2, 48, requires_grad=True)
    img = gen.generate_torch(z)
    assert img.shape == (2, 3, 16, 16) and float(img.detach().min()) >= 0 and float(img.detach().max()) <= 1
    img[:, 0].mean().backward()
    assert z.grad.abs().sum() > 0
    with pytest.raises(stimopt.StimoptError, match=r"codes of shape \[B, 48\]"):
        gen.generate(np.zeros((2, 47), np.float32))
