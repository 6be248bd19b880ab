"""optimizer=cmaes: pycma's batched ask/tell, seeded, NaN-safe, bounded, resumed by replay (no pickle)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import stimopt
from stimopt import state as state_io
from stimopt.engine import Run
from stimopt.objective import Objective
from stimopt.store import RunStore
from stimopt_plugins.cma import CMAES
from stimopt_plugins.image_codes import FourierGenerator


def sphere(codes):
    return -((np.asarray(codes, np.float64) - 0.7) ** 2).sum(axis=1)


def drive(opt, space, gens=30, batch=20, seed=0, nan_every=0, score=sphere):
    opt.setup(space, seed=seed, budget=gens * batch, batch_size=batch)
    asked, best = [], []
    for g in range(gens):
        codes = opt.ask(batch)
        s = score(codes)
        if nan_every:
            s[g % nan_every::nan_every] = np.nan
        opt.tell(codes, s)
        asked.append(codes)
        best.append(np.nanmax(s) if np.isfinite(s).any() else -np.inf)
    return np.concatenate(asked), np.array(best)


def test_cmaes_config_builds_the_pycma_optimizer(compose):
    from stimopt.experiment import build

    cfg = compose(["optimizer=cmaes"])
    opt = build("optimizer", cfg.optimizer)
    assert isinstance(opt, CMAES) and opt.diagonal and opt.bounds == "clip"
    from stimopt import plugins

    plugins.load_plugins()
    assert plugins.lookup("optimizer", "cmaes") is CMAES
    opt.setup(stimopt.ContinuousSpace(dim=8), seed=0, budget=40, batch_size=20)
    assert "pycma" in opt.describe() and "diagonal" in opt.describe()


def test_improves_and_is_deterministic_per_seed_whatever_numpy_global_state():
    space = stimopt.ContinuousSpace(dim=16)
    codes, best = drive(CMAES(), space)
    assert best[-1] > 0.2 * best[0] and best[-1] > -1.0  # from ~ -24 to near the optimum
    np.random.seed(123)  # pycma draws from its own seeded generator, not numpy's global one
    np.random.standard_normal(1000)
    again, _ = drive(CMAES(), space)
    other, _ = drive(CMAES(), space, seed=1)
    assert np.array_equal(codes, again) and not np.array_equal(codes, other)


def test_missing_scores_get_the_worst_finite_score_and_pycma_never_sees_nan():
    space = stimopt.ContinuousSpace(dim=16)
    opt = CMAES()
    told = []
    opt.setup(space, seed=0, budget=400, batch_size=20)
    real_tell = opt.es.tell
    opt.es.tell = lambda X, f, **kw: (told.append(np.array(f)), real_tell(X, f, **kw))
    codes = opt.ask(20)
    s = sphere(codes)
    s[[2, 7]] = np.nan
    opt.tell(codes, s)
    assert np.isfinite(told[0]).all() and told[0][2] == told[0][7] == -np.nanmin(s)
    opt.tell(opt.ask(20), np.full(20, np.nan))  # nothing scored: nothing told, the run goes on
    assert len(told) == 1 and opt.report()["untold_generations"] == 1
    _, best = drive(CMAES(), space, nan_every=3)  # a third of every generation missing
    assert np.isfinite(best).all() and best[-1] > 0.2 * best[0]


@pytest.mark.parametrize("bounds", ["clip", "transform"])
def test_bounded_space_codes_stay_in_the_box(bounds):
    space = stimopt.ContinuousSpace(dim=32, low=0.0, high=1.0, init_mean=0.5, init_std=0.2)
    w = np.linspace(-1, 1, 32)
    codes, best = drive(CMAES(bounds=bounds), space, score=lambda c: np.asarray(c, np.float64) @ w)
    assert codes.min() >= 0 and codes.max() <= 1
    assert best[-1] > 0.7 * (w[w > 0]).sum()  # the optimum sits on the box's corner


def test_bad_options_are_one_line_errors():
    with pytest.raises(stimopt.StimoptError, match="bounds must be one of"):
        CMAES(bounds="reflect")
    with pytest.raises(stimopt.StimoptError, match="no option"):
        CMAES(options={"nosuch": 1}).setup(stimopt.ContinuousSpace(dim=4), seed=0, budget=40, batch_size=20)
    opt = CMAES()
    opt.setup(stimopt.ContinuousSpace(dim=4), seed=0, budget=40, batch_size=10)
    with pytest.raises(stimopt.StimoptError, match="population is 10"):
        opt.ask(20)


def test_state_dict_is_plain_arrays_and_continues_exactly():
    space = stimopt.ContinuousSpace(dim=16)
    a = CMAES()
    a.setup(space, seed=3, budget=400, batch_size=20)
    for g in range(5):
        c = a.ask(20)
        s = sphere(c)
        s[g] = np.nan
        a.tell(c, s)
    blob = state_io.dumps(a.state_dict())  # refuses anything but plain values and arrays
    b = CMAES()
    b.setup(space, seed=3, budget=400, batch_size=20)
    b.load_state_dict(state_io.loads(blob))
    for _ in range(3):
        ca, cb = a.ask(20), b.ask(20)
        assert np.array_equal(ca, cb)
        a.tell(ca, sphere(ca))
        b.tell(cb, sphere(cb))
    tampered = state_io.loads(blob)
    tampered["crcs"][1] += 1
    c = CMAES()
    c.setup(space, seed=3, budget=400, batch_size=20)
    with pytest.raises(stimopt.StimoptError, match="did not reproduce generation 1"):
        c.load_state_dict(tampered)


class RedMinusBlue(stimopt.Target):
    def evaluate(self, images):
        return images[:, 0].mean(dim=(1, 2)) - images[:, 2].mean(dim=(1, 2))


def make_run(tmp_path, name, budget=200, batch=20, seed=0, generator=None, optimizer=None):
    """An engine run on the planted red-minus-blue unit (default: 4 x 4 Fourier code, default cmaes), restored from
    its run dir if one is there."""
    gen = generator or FourierGenerator(size=16, n_freq=4, device="cpu")
    opt = optimizer or CMAES()
    opt.setup(gen.space, seed=seed, budget=budget, batch_size=batch)
    store = RunStore(tmp_path / name / "evaluations.sqlite")
    run = Run(target=RedMinusBlue(), generator=gen, optimizer=opt, objective=Objective("max"), store=store,
              budget=budget, batch_size=batch, on_bad_response="stop", run_dir=tmp_path / name)
    run.restore()
    return run


def test_run_killed_after_generation_k_and_resumed_equals_uninterrupted(tmp_path):
    full = make_run(tmp_path, "full", budget=210)  # the last batch is short (10)
    full.run()
    part = make_run(tmp_path, "part", budget=210)
    for _ in range(4):
        part.step()
    part.store.close()  # killed here; a new process rebuilds everything and restores from the store
    resumed = make_run(tmp_path, "part", budget=210)
    assert resumed.progress.n_evaluations == 80
    resumed.run()
    np.testing.assert_array_equal(resumed.store.codes(), full.store.codes())
    np.testing.assert_array_equal(resumed.store.responses(), full.store.responses())
    first = full.store.responses()[:20]
    assert full.progress.best_response > first.max()
    with torch.inference_mode():
        assert float(RedMinusBlue().evaluate(full.generator.generate(full.store.top(1)[0]["code"][None]))[0]) > 0.3


def test_same_runs_as_nevergrads_diagonal_cma_for_the_same_seed():
    """The previous optimizer=cmaes (nevergrad ParametrizedCMA, diagonal) asks the same codes: one
    algorithm, one random stream, only the wrapper's per-candidate overhead is gone."""
    from stimopt_plugins.nevergrad import NevergradOptimizer

    space = stimopt.ContinuousSpace(dim=24)
    a, b = CMAES(), NevergradOptimizer("ParametrizedCMA", {"popsize": 20, "diagonal": True})
    for opt in (a, b):
        opt.setup(space, seed=5, budget=200, batch_size=20)
    for _ in range(5):
        ca, cb = a.ask(20), b.ask(20)
        np.testing.assert_allclose(ca, cb, rtol=0, atol=1e-6)
        a.tell(ca, sphere(ca))
        b.tell(cb, sphere(cb))


@pytest.mark.parametrize("kw", [{"sampler": "vd"}, {"adapt_sigma": "csa"}])
def test_sampler_and_step_size_rule_are_seeded_and_resume_exactly(kw):
    space = stimopt.ContinuousSpace(dim=40)
    codes, best = drive(CMAES(**kw), space, gens=15)
    np.random.seed(7)  # pycma's restricted samplers draw from the run's generator too, not numpy's global one
    again, _ = drive(CMAES(**kw), space, gens=15)
    assert np.array_equal(codes, again) and best[-1] > best[0]
    a = CMAES(**kw)
    a.setup(space, seed=2, budget=400, batch_size=20)
    for _ in range(4):
        c = a.ask(20)
        a.tell(c, sphere(c))
    b = CMAES(**kw)
    b.setup(space, seed=2, budget=400, batch_size=20)
    b.load_state_dict(state_io.loads(state_io.dumps(a.state_dict())))
    assert np.array_equal(a.ask(20), b.ask(20))
    name = {"vd": "GaussVDSampler"}.get(kw.get("sampler"), "CMAAdaptSigmaCSA")
    assert name in (type(a.es.sm).__name__, type(a.es.adapt_sigma).__name__)


def test_bad_sampler_and_step_size_rule_are_one_line_errors():
    with pytest.raises(stimopt.StimoptError, match="sampler must be"):
        CMAES(sampler="lm")
    with pytest.raises(stimopt.StimoptError, match="adapt_sigma must be"):
        CMAES(adapt_sigma="msr")


def test_prefetched_normals_are_the_random_states_stream_in_order_whatever_the_shapes():
    from stimopt_plugins.cma.normals import PrefetchedNormals

    normals = PrefetchedNormals(np.random.RandomState(4))
    served = [normals(3, 5)]
    normals.prefetch()  # 15 values drawn in the thread
    served += [normals(1, 7), normals(), normals(2, 2)]  # 7, 1 and 4 of the block: 3 left
    normals.prefetch()  # 12 more (what was served since the last prefetch)
    normals.prefetch()  # one block in flight at a time: a no-op
    served.append(normals(40))  # 3 + 12 drawn ahead, 25 on demand
    normals.close()
    assert [np.shape(s) for s in served] == [(3, 5), (1, 7), (), (2, 2), (40,)]
    flat = np.concatenate([np.ravel(s) for s in served])
    np.testing.assert_array_equal(flat, np.random.RandomState(4).randn(flat.size))


@pytest.mark.parametrize("kw", [{}, {"sampler": "vd"}, {"adapt_sigma": "csa"}])
def test_prefetching_the_next_generations_normals_asks_the_codes_of_drawing_on_demand(kw):
    """At 400 dims (pycma's TPA draws a (1, dim) rescaling besides the (popsize, dim) samples): the codes
    with the next generation's normals drawn in the thread are bit for bit those drawn on demand."""
    space = stimopt.ContinuousSpace(dim=400)
    a, b = CMAES(**kw), CMAES(**kw)
    for opt in (a, b):
        opt.setup(space, seed=3, budget=400, batch_size=20)
    b._normals.prefetch = lambda: None  # every draw on demand
    for _ in range(6):
        ca, cb = a.ask(20), b.ask(20)
        assert a._normals._drawing is not None  # the next generation's block is being drawn
        assert np.array_equal(ca, cb)
        a.tell(ca, sphere(ca))
        b.tell(cb, sphere(cb))
