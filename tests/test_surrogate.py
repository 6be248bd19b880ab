"""optimizer=surrogate on a planted bank: a BankSpace of random features and a linear neuron on them.

The tiny generator below serves the bank through a real BankSpace (memory-mapped features, a
coreset); each image carries its bank index in one pixel, and the target reads the planted
response of that index back, so the whole engine (store, checkpoints, objective) runs for real.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import stimopt
from stimopt.errors import StimoptError
from stimopt_plugins.surrogate import SurrogateSearch, fit_ridge

N, D = 3000, 24


def make_bank(folder: Path, n: int = N, d: int = D, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    np.save(folder / "features.npy", rng.standard_normal((n, d)).astype(np.float32))
    np.save(folder / "weights.npy", rng.standard_normal(d))
    np.save(folder / "coreset.npy", rng.choice(n, 100, replace=False))
    return folder


class PlantedBank(stimopt.Generator):
    """Bank generator: image i is a 4x4 picture whose first pixel encodes i."""

    space_type = stimopt.BankSpace

    def __init__(self, path: str, features: bool = True):
        self.path = Path(path)
        f = np.load(self.path / "features.npy", mmap_mode="r")
        self._space = stimopt.BankSpace(
            size=f.shape[0], features=f if features else None, coresets=(np.load(self.path / "coreset.npy"),),
            path=str(self.path),
        )

    @property
    def space(self):
        return self._space

    def generate(self, codes):
        codes = np.asarray(codes)
        img = torch.zeros(len(codes), 3, 4, 4)
        img[:, 0, 0, 0] = torch.as_tensor((codes + 0.5) / self._space.size, dtype=torch.float32)
        return img


class PlantedNeuron(stimopt.Target):
    """Reads the planted linear response of the bank image; optional Poisson noise and dropped trials."""

    def __init__(self, path: str, poisson_peak: float = 0.0, nan_fraction: float = 0.0, drop_call: int = -1, seed: int = 0):
        path = Path(path)
        f = np.load(path / "features.npy")
        self.size = f.shape[0]
        self.truth = f @ np.load(path / "weights.npy")
        self.peak, self.nan_fraction, self.drop_call = poisson_peak, nan_fraction, drop_call
        self.rng = np.random.default_rng(seed)
        self.calls = 0

    def evaluate(self, images):
        idx = np.floor(images[:, 0, 0, 0].double().numpy() * self.size).astype(np.int64)
        r = self.truth[idx]
        if self.peak:
            rate = np.maximum(r, 0) / self.truth.max() * self.peak
            r = self.rng.poisson(rate).astype(np.float64)
        r = r.astype(np.float32)
        if self.nan_fraction:
            r[self.rng.random(len(r)) < self.nan_fraction] = np.nan
        if self.calls == self.drop_call:
            r[:] = np.nan
        self.calls += 1
        return r

    def state_dict(self):
        return {"rng": self.rng.bit_generator.state, "calls": self.calls}

    def load_state_dict(self, state):
        self.rng.bit_generator.state = state["rng"]
        self.calls = state["calls"]


def run(tmp_path, bank, name="run", **over):
    """One experiment through stimopt.experiment with the planted bank; returns (summary, codes, responses)."""
    from stimopt.config import compose
    from stimopt.experiment import run_experiment
    from stimopt.store import RunStore

    target_opts = over.pop("target", {})
    optimizer = over.pop("optimizer", "surrogate")
    opts = {"budget": 200, "batch_size": 20, "direction": "max", "seed": 0, **over}
    args = [
        f"optimizer={optimizer}", "logger=none", *(["optimizer.n_init=20"] if optimizer == "surrogate" else []),
        "~target", f"+target._target_={__name__}.PlantedNeuron", f"+target.path={bank}",
        "~generator", f"+generator._target_={__name__}.PlantedBank", f"+generator.path={bank}",
    ]
    args += [f"+target.{k}={v}" for k, v in target_opts.items()]
    args += [f"{k}={v}" for k, v in opts.items()]
    summary = run_experiment(compose(args), tmp_path / name, observers=[], progress=False)
    store = RunStore(tmp_path / name / "evaluations.sqlite")
    codes, resp = store.codes().ravel().astype(np.int64), store.responses()
    store.close()
    return summary, codes, resp


@pytest.fixture(scope="module")
def bank(tmp_path_factory):
    return make_bank(tmp_path_factory.mktemp("bank"))


@pytest.mark.parametrize("direction", ["max", "min"])
def test_recovers_planted_linear_neuron_both_directions(tmp_path, bank, direction):
    truth = np.load(bank / "features.npy") @ np.load(bank / "weights.npy")
    summary, codes, resp = run(tmp_path, bank, direction=direction, budget=200)
    goal = truth.max() if direction == "max" else truth.min()
    assert summary["best_response"] == pytest.approx(goal, rel=1e-5)  # the bank's exact argmax / argmin
    assert summary["evaluations_to_best"] <= 120
    assert summary["n_evaluations"] == 200 and len(codes) == 200
    assert len(np.unique(codes)) == len(codes)  # never shown twice
    np.testing.assert_allclose(resp, truth[codes], rtol=1e-5)
    rep = summary["optimizer_report"]
    assert rep["heldout_r2"] > 0.95
    assert rep["observed_best"]["index"] == int(np.argmax(truth if direction == "max" else -truth))
    shown = set(codes.tolist())
    assert rep["predicted_top_unshown"] and not shown & {e["index"] for e in rep["predicted_top_unshown"]}
    on_disk = json.loads((tmp_path / "run" / "summary.json").read_text())["optimizer_report"]
    assert on_disk["best"][0]["index"] == rep["best"][0]["index"]
    assert on_disk["worst"][0]["score"] <= on_disk["best"][-1]["score"]


def test_beats_random_on_planted_neuron(tmp_path, bank):
    truth = np.load(bank / "features.npy") @ np.load(bank / "weights.npy")
    top1pct = np.quantile(truth, 0.99)
    _, codes, _ = run(tmp_path, bank, name="s", budget=60)
    _, rcodes, _ = run(tmp_path, bank, name="r", budget=60, optimizer="random")
    assert (truth[codes] >= top1pct).sum() >= 10 * max(1, (truth[rcodes] >= top1pct).sum())


def test_budget_is_respected_with_a_partial_last_batch(tmp_path, bank):
    summary, codes, _ = run(tmp_path, bank, budget=130)
    assert summary["n_evaluations"] == 130 and len(codes) == 130 and summary["generations"] == 7
    assert len(np.unique(codes)) == 130


def test_survives_nans_and_a_dropped_generation(tmp_path, bank):
    truth = np.load(bank / "features.npy") @ np.load(bank / "weights.npy")
    summary, codes, resp = run(
        tmp_path, bank, budget=240, on_bad_response="skip", target={"nan_fraction": 0.15, "drop_call": 3}
    )
    rep = summary["optimizer_report"]
    assert rep["dropped_generations"] == 1
    assert np.isnan(resp[60:80]).all()  # generation 3 was dropped
    assert rep["n_missing"] == int(np.isnan(resp).sum()) and summary["n_missing"] == rep["n_missing"]
    ok = np.isfinite(resp)
    assert len(np.unique(codes[ok])) == ok.sum()  # an image with a response is never shown again
    for i in np.unique(codes[~ok]):  # a dropped image may be retried once
        assert (codes == i).sum() <= 2
    assert summary["best_response"] >= np.sort(truth)[-3]


def test_resume_continues_identically(tmp_path, bank):
    _, full, _ = run(tmp_path, bank, name="full", budget=160)
    run(tmp_path, bank, name="cut", budget=80)
    summary, resumed, _ = run(tmp_path, bank, name="cut", budget=160, resume=True)
    assert summary["n_evaluations"] == 160
    np.testing.assert_array_equal(full, resumed)


def test_noisy_neuron_represents_weak_evidence(tmp_path, bank):
    truth = np.load(bank / "features.npy") @ np.load(bank / "weights.npy")
    summary, codes, resp = run(
        tmp_path, bank, budget=300, target={"poisson_peak": 20}, **{"optimizer.represent": 2, "optimizer.max_presentations": 3}
    )
    values, counts = np.unique(codes, return_counts=True)
    assert counts.max() >= 2 and counts.max() <= 3  # re-presented, but capped
    rep = summary["optimizer_report"]
    assert rep["observed_best"]["presentations"] >= 1 and "predicted_best" in rep
    # The model's pick is among the bank's best even though single responses are noisy.
    assert truth[rep["predicted_best"]["index"]] >= np.quantile(truth, 0.99)


def test_unshown_images_only_without_represent(bank):
    gen = PlantedBank(str(bank))
    truth = np.load(bank / "features.npy") @ np.load(bank / "weights.npy")
    opt = SurrogateSearch(n_init=10, acquisition="ucb", ensemble=4, coreset_fraction=0.2)
    opt.setup(gen.space, seed=1, budget=400, batch_size=10)
    seen = []
    for _ in range(40):
        c = opt.ask(10)
        seen += c.tolist()
        opt.tell(c, truth[c])
    assert len(set(seen)) == 400
    assert {i["why"] for i in opt.ask_info()} >= {"ucb", "coreset"}
    assert int(np.argmax(truth)) in seen


def test_several_layers_and_random_feature_kernel(bank):
    f = np.load(bank / "features.npy", mmap_mode="r")
    rng = np.random.default_rng(3)
    deep = np.tanh(np.asarray(f) @ rng.standard_normal((D, 16))).astype(np.float32)
    space = stimopt.BankSpace(size=N, features=f, extras={"deep": deep})
    truth = np.maximum(deep[:, 0] + deep[:, 1], 0.0) ** 2  # a nonlinear neuron of the deeper layer
    for opts in ({"layers": ["features", "deep"]}, {"kernel": "rff", "n_random_features": 256}):
        opt = SurrogateSearch(n_init=20, **opts)
        opt.setup(space, seed=0, budget=300, batch_size=20)
        seen = []
        for _ in range(15):
            c = opt.ask(20)
            seen += c.tolist()
            opt.tell(c, truth[c])
        assert truth[seen].max() >= np.quantile(truth, 0.999), opts
        rep = opt.report()
        assert rep["heldout_r2"] > 0.2, opts  # leave-one-out on the (adaptively chosen) shown images
        ready = [e["index"] for e in rep["predicted_top_unshown"][:10]]
        assert truth[ready].mean() > np.quantile(truth, 0.75), opts  # the ready list is good images


def test_graph_neighbour_slots_and_annealed_exploration(bank):
    f = np.load(bank / "features.npy")
    truth = f @ np.load(bank / "weights.npy")
    dist = ((f[:, None, :] - f[None, :, :]) ** 2).sum(-1)
    graph = np.argsort(dist, axis=1)[:, 1:11]  # exact 10-NN graph, nearest first
    space = stimopt.BankSpace(size=N, features=f, graph=graph, coresets=(np.load(bank / "coreset.npy"),))
    opt = SurrogateSearch(n_init=20, neighbours=0.25, anneal=0.8)
    opt.setup(space, seed=0, budget=310, batch_size=20)
    seen, done = [], 0
    while done < 310:
        c = opt.ask(min(20, 310 - done))
        if done >= 20:  # after the initial design: 5 of 20 slots go to unshown neighbours of the best shown
            means = np.asarray(opt.sums) / np.asarray(opt.counts)
            best = np.asarray(opt.items)[np.argsort(-means)[: opt.neighbour_sources]]
            nb = [int(i) for i, why in zip(c, opt.ask_info()) if why["why"] == "neighbour"]
            assert len(nb) == round(0.25 * len(c)) and set(nb) <= set(graph[best].ravel().tolist())
        seen += c.tolist()
        opt.tell(c, truth[c])
        done += len(c)
    assert len(seen) == 310 and len(set(seen)) == 310  # never re-shown, budget respected
    assert int(np.argmax(truth)) in seen
    assert opt._explore_scale() == pytest.approx(opt.explore * (1 - 0.8))  # exploration annealed by the end
    with pytest.raises(StimoptError, match="needs the bank's kNN graph"):
        SurrogateSearch(neighbours=0.2).setup(stimopt.BankSpace(size=N, features=f), seed=0, budget=10, batch_size=5)


def test_graded_exploration_spreads_the_batch(bank):
    f = np.load(bank / "features.npy", mmap_mode="r")
    truth = np.asarray(f) @ np.load(bank / "weights.npy")
    for ensemble in (0, 4):
        opt = SurrogateSearch(n_init=20, explore=0.8, graded=True, ensemble=ensemble)
        opt.setup(stimopt.BankSpace(size=N, features=f), seed=0, budget=200, batch_size=20)
        scales = opt._draw_scales(19)
        assert scales.mean() == pytest.approx(0.8) and np.all(np.diff(scales) > 0) and scales[0] < 0.1
        seen = []
        for _ in range(10):
            c = opt.ask(20)
            seen += c.tolist()
            opt.tell(c, truth[c])
        assert len(set(seen)) == 200 and truth[seen].max() >= np.sort(truth)[-3]


def test_state_dict_is_compact(bank):
    gen = PlantedBank(str(bank))
    opt = SurrogateSearch(n_init=10)
    opt.setup(gen.space, seed=0, budget=100, batch_size=10)
    for _ in range(3):
        c = opt.ask(10)
        opt.tell(c, np.arange(10.0))
    state = opt.state_dict()
    assert sum(v.nbytes for v in state.values() if isinstance(v, np.ndarray)) < 2000


def test_fit_ridge_leave_one_out_is_exact():
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((40, 6)), rng.standard_normal(40)
    a = 3.0
    fit = fit_ridge(x, y, alphas=np.array([a]))
    press = 0.0
    for i in range(40):
        keep = np.arange(40) != i
        xm, ym = x[keep].mean(0), y[keep].mean()
        xc = x[keep] - xm
        beta = np.linalg.solve(xc.T @ xc + a * np.eye(6), xc.T @ (y[keep] - ym))
        press += (y[i] - ym - (x[i] - xm) @ beta) ** 2
    assert fit["r2_loo"] == pytest.approx(1 - press / ((y - y.mean()) ** 2).sum(), rel=1e-8)


def test_weighted_fit_reports_the_leave_one_out_r2_of_every_row():
    """Weighted fit (the focus weights), R^2 weighted by presentations only: both exact against refits."""
    rng = np.random.default_rng(1)
    x, y = rng.standard_normal((30, 5)), rng.standard_normal(30)
    w, counts = rng.uniform(0.2, 3.0, 30), rng.integers(1, 4, 30).astype(float)
    a = 2.0
    fit = fit_ridge(x, y, w, np.array([a]), r2_weights=counts)
    loo = np.empty(30)
    for i in range(30):
        keep = np.arange(30) != i
        wk = w[keep]
        xm, ym = wk @ x[keep] / wk.sum(), wk @ y[keep] / wk.sum()
        xc = x[keep] - xm
        beta = np.linalg.solve(xc.T @ (wk[:, None] * xc) + a * np.eye(5), xc.T @ (wk * (y[keep] - ym)))
        loo[i] = y[i] - ym - (x[i] - xm) @ beta
    ybar = counts @ y / counts.sum()
    assert fit["r2_loo"] == pytest.approx(1 - counts @ loo**2 / (counts @ (y - ybar) ** 2), rel=1e-8)


def test_focus_weighs_high_scores_and_random_init_skips_coresets(bank):
    f = np.load(bank / "features.npy")
    core = np.load(bank / "coreset.npy")
    space = stimopt.BankSpace(size=f.shape[0], features=f, coresets=(core,))
    for init, from_core in (("random", False), ("coreset", True)):
        opt = SurrogateSearch(n_init=20, init=init)
        opt.setup(space, seed=0, budget=100, batch_size=20)
        first = opt.ask(20)
        assert set(first.tolist()) <= set(core.tolist()) if from_core else len(set(first.tolist()) & set(core.tolist())) < 5
        assert {i["why"] for i in opt.ask_info()} == {"init-coreset" if from_core else "init-random"}
    y, counts = np.arange(10.0), np.full(10, 2.0)
    w = SurrogateSearch(focus=0.5)._fit_weights(y, counts)
    assert np.all(np.diff(w) > 0) and w.mean() == pytest.approx(2.0)  # rises with the score, mean kept
    np.testing.assert_array_equal(SurrogateSearch(focus=0.0)._fit_weights(y, counts), counts)
    with pytest.raises(StimoptError, match="optimizer.focus must be >= 0"):
        SurrogateSearch(focus=-1.0)
    with pytest.raises(StimoptError, match="optimizer.init must be one of"):
        SurrogateSearch(init="kmeans")


def test_bad_input_is_one_clear_line(bank):
    gen = PlantedBank(str(bank), features=False)
    with pytest.raises(StimoptError, match="needs bank features 'features'"):
        SurrogateSearch().setup(gen.space, seed=0, budget=10, batch_size=5)
    f = np.zeros((10, 3), np.float32)
    with pytest.raises(StimoptError, match=r"expected \[20, d\]"):
        SurrogateSearch().setup(stimopt.BankSpace(size=20, features=f), seed=0, budget=10, batch_size=5)
    with pytest.raises(StimoptError, match="exceeds the bank's 10 images"):
        SurrogateSearch(n_init=40).setup(stimopt.BankSpace(size=10, features=f), seed=0, budget=5, batch_size=5)
    with pytest.raises(StimoptError, match="never shows an image twice"):
        SurrogateSearch(n_init=5).setup(stimopt.BankSpace(size=10, features=f), seed=0, budget=50, batch_size=5)
    with pytest.raises(StimoptError, match="acquisition"):
        SurrogateSearch(acquisition="best")


def test_unfit_trio_is_refused(compose, tmp_path):
    from stimopt.experiment import build_run

    cfg = compose(["optimizer=surrogate", "generator=fourier", "logger=none"])
    with pytest.raises(StimoptError, match="cannot search generator"):
        build_run(cfg, tmp_path / "x")


class PixelNeuron(stimopt.Target):
    """A linear neuron on the 8x8 downsampled pixels, i.e. on a pixel bank's own features."""

    def __init__(self, seed: int = 0):
        from stimopt.bank.features import FeatureExtractor, FeatureSpec

        self.fx = FeatureExtractor(FeatureSpec(model="pixels", input_size=8))
        self.w = np.random.default_rng(seed).standard_normal(3 * 8 * 8)

    def evaluate(self, images):
        return (self.fx(images) @ self.w).astype(np.float32)


def test_real_imagebeagle_bank_end_to_end(tmp_path):
    """generator=imagebeagle on a real (tiny, pixel-feature) bank: the BankSpace it hands over is all the surrogate uses."""
    from stimopt.bank import FeatureSpec, build_bank, load_bank
    from stimopt.config import compose
    from stimopt.experiment import run_experiment

    out = tmp_path / "bank"
    build_bank("demo:400", out, features=FeatureSpec(model="pixels", input_size=8), k=10, image_size=32, shard_size=400,
               n_coresets=2, coreset_size=20)
    truth = np.asarray(load_bank(out).features, dtype=np.float64) @ PixelNeuron().w
    for direction, goal in (("max", truth.max()), ("min", truth.min())):
        cfg = compose(["generator=imagebeagle", f"generator.bank={out}", "optimizer=surrogate", "optimizer.n_init=20",
                       "~target", f"+target._target_={__name__}.PixelNeuron", "logger=none", "budget=100",
                       f"direction={direction}"])
        summary = run_experiment(cfg, tmp_path / direction, observers=[], progress=False)
        assert summary["best_response"] == pytest.approx(goal, rel=1e-4, abs=1e-4), direction
        # 100 evaluations of a 192-d linear neuron (p > n): the ridge's leave-one-out R^2 depends on which
        # images were shown (the first sample, the focus weights), so this checks "learned it", not "exact".
        assert summary["optimizer_report"]["heldout_r2"] > 0.8


def power_law_bank(folder: Path, n: int, d: int, seed: int = 0) -> Path:
    """Features whose j-th principal axis has variance 1/j (randomly rotated): PCA keeps most, not all, of a readout."""
    rng = np.random.default_rng(seed)
    rot, _ = np.linalg.qr(rng.standard_normal((d, d)))
    folder.mkdir(parents=True, exist_ok=True)
    np.save(folder / "features.npy", ((rng.standard_normal((n, d)) * np.arange(1, d + 1) ** -0.5) @ rot.T).astype(np.float32))
    return folder


@pytest.mark.parametrize("acquisition", ["thompson", "ucb"])
def test_compact_scan_picks_what_the_full_precision_scan_picks(tmp_path, acquisition):
    """The 8-bit PCA copy ranks the bank, the best share is re-scored on the full features: replayed
    from the same states, the batches agree with the scan of the full features; the copy is cached
    beside the bank, reused, and rebuilt when the features change."""
    folder = power_law_bank(tmp_path / "bank", 40_000, 48)
    feats = np.load(folder / "features.npy", mmap_mode="r")
    space = stimopt.BankSpace(size=len(feats), features=feats, path=str(folder))
    w = np.random.default_rng(1).standard_normal(feats.shape[1])
    kw = dict(n_init=60, acquisition=acquisition, blas_threads=1, scan_above=0)
    opt, full = SurrogateSearch(scan_dims=16, scan_share=0.01, **kw), SurrogateSearch(scan_dims=0, **kw)
    opt.setup(space, seed=3, budget=2000, batch_size=20)
    full.setup(space, seed=3, budget=2000, batch_size=20)
    assert opt.compact is not None and full.compact is None and opt.compact.codes.shape == (len(feats), 16)
    cached = sorted(p.name for p in (folder / "surrogate").iterdir())
    assert cached == ["features.pca16.json", "features.pca16.npy"]
    codes = opt.ask(60)
    opt.tell(codes, np.asarray(feats[np.sort(codes)]) @ w)
    overlap, loose = [], []
    for _ in range(4):
        state = opt.state_dict()
        full.load_state_dict({k: (v.copy() if isinstance(v, np.ndarray) else v) for k, v in state.items()})
        a, b = opt.ask(20), full.ask(20)
        overlap.append(len(set(a.tolist()) & set(b.tolist())) / 20)
        opt.tell(a, np.asarray(feats[a]) @ w)
    assert min(overlap) >= 0.9, overlap
    # Without the exact re-score (one candidate per draw), the codes alone pick differently: the re-score matters.
    coarse = SurrogateSearch(scan_dims=4, scan_share=1e-9, **kw)
    coarse.setup(space, seed=3, budget=2000, batch_size=20)
    coarse.load_state_dict(opt.state_dict())
    full.load_state_dict(opt.state_dict())
    assert len(set(coarse.ask(20).tolist()) & set(full.ask(20).tolist())) < 20
    # Reused while the features are unchanged; rebuilt (new codes) when they change.
    before = (folder / "surrogate" / "features.pca16.npy").stat().st_mtime_ns
    again = SurrogateSearch(scan_dims=16, **kw)
    again.setup(space, seed=3, budget=2000, batch_size=20)
    assert isinstance(again.compact.codes, np.memmap) and (folder / "surrogate" / "features.pca16.npy").stat().st_mtime_ns == before
    np.save(folder / "features.npy", -np.asarray(feats))
    feats2 = np.load(folder / "features.npy", mmap_mode="r")
    rebuilt = SurrogateSearch(scan_dims=16, **kw)
    rebuilt.setup(stimopt.BankSpace(size=len(feats2), features=feats2, path=str(folder)), seed=3, budget=2000, batch_size=20)
    assert not np.array_equal(np.asarray(rebuilt.compact.codes), np.asarray(again.compact.codes))
