"""XDream family: DeePSiM generators, weight files, GA/NES/FDGD, NaN policy, genealogy, encoding, CLI."""
from __future__ import annotations

import hashlib
import json
import sqlite3

import numpy as np
import pytest
import torch

import stimopt
from stimopt import plugins
from stimopt.errors import StimoptError
from stimopt_plugins import xdream
from stimopt_plugins.xdream import deepsim
from conftest import FAST, cli_env, run_cli

CODE_DIMS = {"norm1": 96 * 27 * 27, "norm2": 256 * 13 * 13, "conv3": 384 * 13 * 13, "conv4": 384 * 13 * 13,
             "pool5": 256 * 6 * 6, "fc6": 4096, "fc7": 4096, "fc8": 1000}


# -- generators -----------------------------------------------------------------------------------
@pytest.mark.parametrize("layer", list(CODE_DIMS))
def test_deepsim_shapes_and_range(layer):
    gen = deepsim.DeepSimGenerator(layer, weights="random", size=64, device="cpu")
    assert gen.space.dim == CODE_DIMS[layer]
    codes = np.random.default_rng(0).normal(size=(2, gen.space.dim)).astype(np.float32)
    with torch.inference_mode():
        native = gen.net(torch.from_numpy(codes))
        img = gen.generate(codes)
    assert native.shape == (2, 3, gen.net.native_size, gen.net.native_size)
    assert gen.net.native_size == (240 if layer.startswith("norm") else 256)
    assert img.shape == (2, 3, 64, 64) and img.dtype == torch.float32
    assert 0 <= float(img.min()) and float(img.max()) <= 1
    assert "RANDOM weights" in gen.describe()
    with pytest.raises(StimoptError, match=f"codes of shape \\[B, {gen.space.dim}\\]"):
        gen.generate(codes[:, :10])


def test_pixels_is_the_core_generator():
    from stimopt_plugins.image_codes import PixelGenerator

    plugins.load_plugins()
    assert plugins.lookup("generator", "pixels") is PixelGenerator
    assert plugins.lookup("generator", "deepsim") is deepsim.DeepSimGenerator
    for name, cls in (("ga", xdream.Genetic), ("nes", xdream.NES), ("fdgd", xdream.FDGD)):
        assert plugins.lookup("optimizer", name) is cls


@pytest.fixture
def norm1_file(tmp_path):
    torch.manual_seed(1)
    net = deepsim.DeePSiM("norm1")
    for p in net.parameters():  # non-trivial weights, so a wrong load would show in the images
        torch.nn.init.normal_(p, std=0.05)
    path = tmp_path / "norm1.pt"
    torch.save(net.state_dict(), path)
    return net, path


def test_weight_file_loads_with_hash_check(norm1_file):
    net, path = norm1_file
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    gen = deepsim.DeepSimGenerator("norm1", weights=str(path), sha256=digest, size=240, device="cpu")
    codes = np.random.default_rng(0).normal(size=(2, gen.space.dim)).astype(np.float32)
    with torch.inference_mode():
        want = ((net(torch.from_numpy(codes)) + gen.mean) / 255).flip(1).clamp(0, 1)
        assert torch.allclose(gen.generate(codes), want, atol=1e-5)
    assert digest[:16] in gen.describe() and "RANDOM" not in gen.describe()
    with pytest.raises(StimoptError, match="sha256"):
        deepsim.DeepSimGenerator("norm1", weights=str(path), sha256="0" * 64, device="cpu")
    path.with_name("norm1.pt.sha256").write_text("f" * 64 + "  norm1.pt\n")  # a sidecar is checked too
    with pytest.raises(StimoptError, match="wrong or corrupt"):
        deepsim.DeepSimGenerator("norm1", weights=str(path), device="cpu")


def test_weight_file_missing_or_wrong_shape(norm1_file, tmp_path, monkeypatch):
    _, path = norm1_file
    monkeypatch.setenv("STIMOPT_CACHE", str(tmp_path / "cache"))
    with pytest.raises(StimoptError) as err:
        deepsim.DeepSimGenerator("fc6", device="cpu")
    msg = str(err.value)
    assert "\n" not in msg and str(tmp_path / "cache" / "deepsim" / "fc6.pt") in msg and "fc6" in msg
    with pytest.raises(StimoptError, match="does not fit DeePSiM-norm2"):
        deepsim.DeepSimGenerator("norm2", weights=str(path), device="cpu")
    with pytest.raises(StimoptError, match="unknown DeePSiM layer 'fc9'"):
        deepsim.DeepSimGenerator("fc9", weights="random", device="cpu")


# -- optimizers on a toy objective ------------------------------------------------------------------
OPTIMUM = np.linspace(-1.5, 1.5, 16)


def toy_scores(codes):
    return -((np.asarray(codes, np.float64) - OPTIMUM) ** 2).sum(axis=1)


def drive(opt, budget=1200, batch=20, seed=0, space=None, nan_every=None):
    space = space or stimopt.ContinuousSpace(dim=16)
    opt.setup(space, seed=seed, budget=budget, batch_size=batch)
    history, asked = [], []
    for g in range(budget // batch):
        codes = opt.ask(batch)
        s = toy_scores(codes)
        if nan_every:
            s[g % nan_every::nan_every] = np.nan
        opt.tell(codes, s)
        history.append(np.nanmax(s))
        asked.append(codes)
    return np.array(history), np.concatenate(asked)


def make(name, **kw):
    return {"ga": xdream.Genetic, "nes": xdream.NES, "fdgd": xdream.FDGD}[name](**kw)


@pytest.mark.parametrize("name", ["ga", "nes", "fdgd"])
def test_optimizer_improves_toy_objective_and_is_deterministic(name):
    opt = make(name)
    hist, codes = drive(opt)
    random_best = toy_scores(np.random.default_rng(0).normal(size=(1200, 16))).max()  # random search, same budget
    # scores are minus the squared distance to the optimum; NES/FDGD's estimate is their centre
    # (their samples stay search_radius away from it)
    final = hist[-5:].max() if name == "ga" else toy_scores(opt.center[None])[0]
    assert -final < 0.5 * -random_best and -final < 0.3 * -hist[0]
    _, again = drive(make(name))
    _, other = drive(make(name), seed=1)
    assert np.array_equal(codes, again) and not np.array_equal(codes, other)


@pytest.mark.parametrize("name", ["ga", "nes", "fdgd"])
def test_state_dict_continues_exactly(name):
    space = stimopt.ContinuousSpace(dim=16)
    a = make(name)
    a.setup(space, seed=3, budget=200, batch_size=20)
    for _ in range(3):
        c = a.ask(20)
        a.tell(c, toy_scores(c))
    import pickle

    state = pickle.loads(pickle.dumps(a.state_dict()))
    b = make(name)
    b.setup(space, seed=99, budget=200, batch_size=20)
    b.load_state_dict(state)
    for _ in range(2):
        ca, cb = a.ask(20), b.ask(20)
        assert np.array_equal(ca, cb)
        a.tell(ca, toy_scores(ca))
        b.tell(cb, toy_scores(cb))


def test_ga_defaults_and_bad_input():
    ga = xdream.Genetic()
    assert (ga.population_size, ga.mutation_rate, ga.mutation_size, ga.selectivity, ga.heritability, ga.n_conserve) == (
        20, 0.5, 0.5, 2.0, 0.5, 0)
    with pytest.raises(StimoptError, match="n_conserve"):
        xdream.Genetic(population_size=4, n_conserve=4)
    with pytest.raises(StimoptError, match="batch_size"):
        xdream.Genetic(population_size=10).setup(stimopt.ContinuousSpace(dim=4), seed=0, budget=100, batch_size=20)
    with pytest.raises(StimoptError, match="mutation_rate"):
        xdream.Genetic(mutation_rate=1.5)


def test_ga_with_nans_retries_and_keeps_going():
    ga = xdream.Genetic(n_conserve=1)
    hist, _ = drive(ga, budget=1200, nan_every=4)  # a quarter of every generation is missing
    assert np.isfinite(hist).all() and -hist[-5:].max() < 0.3 * -hist[0]
    assert ga.report()["missing_scores_retried"] > 0
    # one generation in detail: NaN codes come back once, unchanged, with their ids; the best is conserved
    ga = xdream.Genetic(population_size=6, n_conserve=1)
    ga.setup(stimopt.ContinuousSpace(dim=4), seed=0, budget=60, batch_size=6)
    codes = ga.ask(6)
    ids = [i["id"] for i in ga.ask_info()]
    scores = np.array([1.0, np.nan, 3.0, 2.0, np.nan, 0.0])
    ga.tell(codes, scores)
    nxt, info = ga.ask(6), ga.ask_info()
    ops = [i["op"] for i in info]
    assert ops.count("retry_missing") == 2 and ops.count("conserve") == 1 and ops.count("child") == 3
    assert np.array_equal(nxt[0], codes[2]) and info[0]["id"] == ids[2]
    retried = [k for k, op in enumerate(ops) if op == "retry_missing"]
    assert {info[k]["id"] for k in retried} == {ids[1], ids[4]}
    assert all(set(i["parents"]) <= {ids[0], ids[2], ids[3], ids[5]} for i in info if i["op"] == "child")
    # all missing: codes already retried are dropped (replaced by fresh random codes), the others retried once
    ga.tell(nxt, np.full(6, np.nan))
    third, info3 = ga.ask(6), ga.ask_info()
    assert len(third) == 6 and [i["op"] for i in info3].count("init") == 2
    assert {i["id"] for i in info3 if i["op"] == "retry_missing"} == {info[k]["id"] for k in range(6) if k not in retried}


def test_nes_fdgd_defaults_and_missing_pairs():
    nes, fdgd = xdream.NES(), xdream.FDGD()
    assert (nes.n_samples, nes.radius, nes.lr) == (20, 1.25, 1.75)
    assert (fdgd.n_samples, fdgd.radius, fdgd.lr) == (20, 1.25, 1.25)
    nes = xdream.NES()
    hist, _ = drive(nes, nan_every=5)  # a fifth of every generation missing: incomplete pairs are skipped
    assert np.isfinite(hist).all() and -toy_scores(nes.center[None])[0] < 0.3 * -toy_scores(np.zeros((1, 16)))[0]
    fd = xdream.FDGD()
    fd.setup(stimopt.ContinuousSpace(dim=4), seed=0, budget=40, batch_size=20)
    c = fd.ask(20)
    before = fd.center.copy()
    fd.tell(c, np.full(20, np.nan))  # nothing scored: the centre stays
    assert np.array_equal(fd.center, before)
    c = fd.ask(20)
    info = fd.ask_info()
    assert info[0] == {"pair": 0, "sign": 1} and info[1] == {"pair": 0, "sign": -1}
    assert np.allclose(c[0] + c[1], 2 * fd.center)  # antithetic


def test_init_codes_and_encode(tmp_path):
    from stimopt_plugins.image_codes import PixelGenerator

    gen = PixelGenerator(size=16, resolution=8, device="cpu")
    rng = np.random.default_rng(0)
    truth = rng.uniform(0.1, 0.9, size=(3, gen.space.dim)).astype(np.float32)
    with torch.inference_mode():
        images = gen.generate(truth)
    codes = xdream.encode(gen, images, steps=300, lr=0.05)
    assert codes.shape == truth.shape
    with torch.inference_mode():
        assert float(((gen.generate(codes) - images) ** 2).mean()) < 1e-3
    np.save(tmp_path / "init.npy", codes)
    ga = xdream.Genetic(population_size=5, init_codes=str(tmp_path / "init.npy"))
    ga.setup(gen.space, seed=0, budget=50, batch_size=5)
    pop = ga.ask(5)
    assert np.array_equal(pop[:3], codes) and [i["op"] for i in ga.ask_info()][3:] == ["init_child"] * 2
    nes = xdream.NES(n_samples=4, init_codes=str(tmp_path / "init.npy"), init_center="mean")
    nes.setup(gen.space, seed=0, budget=8, batch_size=4)
    assert np.allclose(nes.center, codes.mean(axis=0))
    # XDream's default: the centre is one of the given codes, drawn by the seed (not their mean)
    centres = []
    for seed in range(12):
        fd = xdream.FDGD(n_samples=4, init_codes=str(tmp_path / "init.npy"))
        fd.setup(gen.space, seed=seed, budget=8, batch_size=4)
        centres.append(int(np.flatnonzero((codes == fd.center.astype(np.float32)).all(axis=1))[0]))
    assert len(set(centres)) > 1  # drawn, not always the first
    with pytest.raises(StimoptError, match="init_center"):
        xdream.NES(init_center="first")
    # more codes than the population: XDream draws the population from them at random
    picked = []
    for seed in range(6):
        ga = xdream.Genetic(population_size=2, init_codes=str(tmp_path / "init.npy"))
        ga.setup(gen.space, seed=seed, budget=10, batch_size=2)
        first = ga.ask(2)
        picked.append(tuple(int(np.flatnonzero((codes == c).all(axis=1))[0]) for c in first))
    assert all(len(set(p)) == 2 for p in picked) and len(set(picked)) > 1
    with pytest.raises(StimoptError, match="do not fit"):
        xdream.Genetic(init_codes=str(tmp_path / "init.npy")).setup(stimopt.ContinuousSpace(dim=5), seed=0, budget=20, batch_size=20)


def test_encode_command(tmp_path):
    from PIL import Image

    folder = tmp_path / "imgs"
    folder.mkdir()
    for i, color in enumerate([(200, 30, 30), (30, 200, 30)]):
        Image.new("RGB", (40, 30), color).save(folder / f"{i}.png")
    out = tmp_path / "codes.npy"
    rc = xdream.main(["encode", str(folder), str(out), "generator=pixels", "generator.resolution=4",
                      "generator.size=8", "encode.steps=150", "device=cpu"])
    codes = np.load(out)
    assert rc == 0 and codes.shape == (2, 48)
    assert codes.reshape(2, 3, 4, 4)[0, 0].mean() == pytest.approx(200 / 255, abs=0.03)
    assert xdream.main(["encode", str(tmp_path / "nothing"), str(out)]) != 0


# -- end to end: CLI with GA, Poisson noise and the reference --------------------------------------
def test_cli_ga_poisson_genealogy_and_relative_activation(tmp_path):
    run_dir = tmp_path / "run"
    args = ["optimizer=ga", "noise=poisson", "target.relu=true", "noise.calibration_images=200",
            "reference.kind=natural_crops", "reference.n=100", "budget=100", "target.unit=3",
            f"hydra.run.dir={run_dir}", *FAST]
    run_cli(args, cwd=tmp_path, env=cli_env(STIMOPT_CACHE=str(tmp_path / "cache")))
    summary = json.loads((run_dir / "summary.json").read_text())
    assert "poisson(20 spikes" in summary["target"] and summary["optimizer"].startswith("xdream-GA")
    ref = summary["reference"]
    assert ref["n_natural"] == 100 and ref["n_random"] == 100 and ref["kind"] == "natural_crops"
    assert ref["relative_activation"] == pytest.approx(ref["best_evolved"] / ref["best_natural"])
    assert 0 < ref["random_relative_activation"] <= 1
    db = sqlite3.connect(run_dir / "evaluations.sqlite")
    infos = [json.loads(r[0]) for r in db.execute("SELECT info FROM evaluations WHERE generation=2")]
    ids = {json.loads(r[0])["id"] for r in db.execute("SELECT info FROM evaluations WHERE generation=1")}
    assert len(infos) == 20 and all(set(i["parents"]) <= ids for i in infos if i["op"] == "child")
    assert any(i["op"] == "child" for i in infos)
    assert list((tmp_path / "cache" / "noise").glob("*.json"))  # the Poisson calibration was cached


def test_resume_with_noise_equals_uninterrupted(tmp_path, monkeypatch, name="ga"):
    """The GA's state and the noise generator are checkpointed: stop after 60, resume to 100 = one run of 100.

    (NES/FDGD resume is covered by test_state_dict_continues_exactly.)"""
    from stimopt.config import compose as _compose
    from stimopt.experiment import run_experiment

    monkeypatch.setenv("STIMOPT_CACHE", str(tmp_path / "cache"))
    base = [*FAST, f"optimizer={name}", "noise=poisson", "target.relu=true", "noise.calibration_images=60",
            "target.unit=3", "seed=4", "device=cpu"]

    def responses(run_dir):
        db = sqlite3.connect(run_dir / "evaluations.sqlite")
        return np.array([np.nan if r[0] is None else r[0] for r in db.execute("SELECT response FROM evaluations ORDER BY id")])

    run_experiment(_compose([*base, "budget=100"]), tmp_path / "full", observers=[])
    run_experiment(_compose([*base, "budget=60"]), tmp_path / "resumed", observers=[])
    run_experiment(_compose([*base, "budget=100", "resume=true"]), tmp_path / "resumed", observers=[])
    full, resumed = responses(tmp_path / "full"), responses(tmp_path / "resumed")
    assert len(full) == 100 and np.array_equal(full, resumed)


@pytest.mark.parametrize("optimizer", ["ga", "nes", "fdgd"])
def test_deepsim_config_trio_steps(optimizer, compose, tmp_path):
    """generator=deepsim (random weights, tests only) composes with each optimizer and runs generations."""
    from stimopt.experiment import build_run, summarize

    cfg = compose([*FAST, "generator=deepsim", "generator.weights=random", "generator.layer=fc8",
                   f"optimizer={optimizer}", "budget=40", "device=cpu"])
    run = build_run(cfg, tmp_path / "run")
    run.step()
    run.step()
    assert run.store.n_evaluations() == 40 and np.isfinite(run.progress.best_response)
    summary = summarize(run, cfg, 1.0, "finished")
    assert "RANDOM weights" in summary["generator"] and summary["reference"] is None
    run.store.close()


# -- XDream's raw-pixel semantics: unbounded codes, only the image clipped ------------------------------
class PlantedPixels(stimopt.Target):
    """Mean of image * pattern: +1 pixels want white, -1 pixels want black (optimum = the pattern's sign)."""

    def __init__(self, pattern):
        self.pattern = torch.as_tensor(pattern, dtype=torch.float32)

    def evaluate(self, images):
        return (images * self.pattern).mean(dim=(1, 2, 3))


def ga_on_planted_pixels(seed, generations=40, resolution=6):
    from stimopt_plugins.image_codes import PixelGenerator

    gen = PixelGenerator(size=resolution, resolution=resolution, device="cpu")
    pattern = np.where(np.random.default_rng(7).random((3, resolution, resolution)) < 0.5, -1.0, 1.0)
    target, ga = PlantedPixels(pattern), xdream.Genetic()
    ga.setup(gen.space, seed=seed, budget=20 * generations, batch_size=20)
    asked, best = [], []
    for _ in range(generations):
        codes = ga.ask(20)
        with torch.inference_mode():
            images = gen.generate(codes)
            scores = target.evaluate(images).numpy()
        assert float(images.min()) >= 0 and float(images.max()) <= 1  # the image is clipped ...
        ga.tell(codes, scores)
        asked.append(codes)
        best.append(scores.max())
    return np.concatenate(asked), np.array(best), float((np.clip(pattern, 0, 1) * pattern).mean())


def test_pixels_follow_xdream_raw_pixel_semantics():
    from stimopt_plugins.image_codes import PixelGenerator

    gen = PixelGenerator(size=4, resolution=2, device="cpu")
    s = gen.space
    assert (s.low, s.high, s.init_mean, s.init_std) == (None, None, 0.0, 1.0)  # XDream: unbounded, N(0, 1)
    codes = np.array([[-3.0, 0.25, 5.0] * 4], np.float32)
    with torch.inference_mode():
        img = gen.generate(codes)
    assert float(img.min()) == 0.0 and float(img.max()) == 1.0 and torch.isclose(img, torch.tensor(0.25)).any()
    boxed = PixelGenerator(size=4, resolution=2, bounded=True, device="cpu").space
    assert (boxed.low, boxed.high, boxed.init_mean, boxed.init_std) == (0.0, 1.0, 0.5, 0.2)


def test_ga_on_planted_pixels_keeps_codes_unbounded_and_is_deterministic():
    codes, best, optimum = ga_on_planted_pixels(seed=0)
    first = codes[:20]
    assert abs(first.mean()) < 0.1 and abs(first.std() - 1.0) < 0.1  # XDream's N(0, 1) first generation
    assert codes.min() < -2.5 and codes.max() > 3.5  # ... the codes are not: genes drift past the range
    assert best[-1] > best[0] + 0.3 * (optimum - best[0])
    again, _, _ = ga_on_planted_pixels(seed=0)
    other, _, _ = ga_on_planted_pixels(seed=1)
    assert np.array_equal(codes, again) and not np.array_equal(codes, other)


def test_ga_generation_matches_xdream_update_rule():
    """Selection exp((s - s_top) / kT) on 95th-percentile-clipped scores, kT = std / selectivity; each gene
    from one of the two parents, then mutated with probability 0.5 by N(0, 0.5); nothing is clipped."""
    pop, dim = 400, 64
    ga = xdream.Genetic(population_size=pop)
    ga.setup(stimopt.ContinuousSpace(dim=dim), seed=0, budget=10 * pop, batch_size=pop)
    codes = ga.ask(pop)
    ids = [i["id"] for i in ga.ask_info()]
    scores = np.random.default_rng(1).normal(size=pop)
    ga.tell(codes, scores)
    kids, info = ga.ask(pop), ga.ask_info()
    order = np.argsort(-scores)
    s = np.minimum(scores[order], np.percentile(scores, 95))
    p = np.exp((s - s[0]) / (scores.std() / 2.0))
    p /= p.sum()
    drawn = np.array([ids.index(q) for i in info for q in i["parents"]])
    want_top = p[: pop // 20].sum()  # the top 5% of the population as parents
    got_top = np.isin(drawn, order[: pop // 20]).mean()
    assert abs(got_top - want_top) < 0.05 and ga.kT == pytest.approx(scores.std() / 2.0)
    p1 = np.array([ids.index(i["parents"][0]) for i in info])
    p2 = np.array([ids.index(i["parents"][1]) for i in info])
    unchanged = (kids == codes[p1]) | (kids == codes[p2])  # each gene from one parent, or mutated
    assert abs(unchanged.mean() - 0.5) < 0.02 and abs((kids == codes[p1]).mean() - 0.5 * 0.5) < 0.02  # heritability 0.5
    ga.tell(np.zeros_like(codes), scores)  # identical parents: what is left is the mutation alone
    mutation = ga.ask(pop)
    assert abs((mutation != 0).mean() - 0.5) < 0.01 and abs(mutation[mutation != 0].std() - 0.5) < 0.01
    assert np.abs(kids).max() > 3  # unbounded: nothing clipped


def test_nes_adapts_its_search_radius_as_xdream():
    nes = xdream.NES(n_samples=20, search_radius=1.0, learning_rate=0.5, normalize=False,
                     search_radius_learning_rate=0.2, min_search_radius=0.05)
    nes.setup(stimopt.ContinuousSpace(dim=16), seed=0, budget=400, batch_size=20)
    codes = nes.ask(20)
    eps = np.concatenate([nes.steps, -nes.steps]) / nes.radius  # XDream's standardized steps, pos then neg
    by_half = np.concatenate([codes[0::2], codes[1::2]])  # our ask interleaves the pairs
    s = toy_scores(by_half)
    want_r = max(1.0 + 0.2 * np.mean(s[:, None] * (eps**2 - 1)) / 1.0, 0.05)
    want_center = nes.center + 0.5 * np.mean(s[:, None] * eps, axis=0) / 1.0
    nes.tell(codes, toy_scores(codes))
    assert nes.radius == pytest.approx(want_r) and np.allclose(nes.center, want_center)
    assert nes.report()["search_radius"] == pytest.approx(want_r)
    fixed = xdream.NES()
    fixed.setup(stimopt.ContinuousSpace(dim=16), seed=0, budget=400, batch_size=20)
    c = fixed.ask(20)
    fixed.tell(c, toy_scores(c))
    assert fixed.radius == 1.25  # XDream's default: search_radius_learning_rate 0, the radius stays


@pytest.mark.parametrize("normalize", [False, True])
def test_fdgd_and_nes_steps_match_xdream_update_rules(normalize):
    """One generation of FDGD and NES against XDream's rules written sample by sample (positive steps
    first, then the negated ones): FDGD ``centre += lr * mean_k((s+_k - s-_k) / 2 * step_k / mean|step_k|^2)``,
    NES ``centre += lr * mean_i(s_i * eps_i) / radius`` over all 2n samples. Raw scores are XDream's
    update (``normalize=false``); ``normalize=true`` is the same rule on the generation's z-scores. On an
    unbounded space nothing is clipped (XDream's codes are never clipped)."""
    space = stimopt.ContinuousSpace(dim=32)  # unbounded, as XDream's raw-pixel codes
    rng = np.random.default_rng(3)
    for cls, lr in ((xdream.FDGD, 0.7), (xdream.NES, 0.9)):
        opt = cls(n_samples=20, search_radius=2.0, learning_rate=lr, normalize=normalize)
        opt.setup(space, seed=1, budget=400, batch_size=20)
        opt.center = rng.normal(size=32) * 3  # away from the origin, codes far outside [0, 1]
        codes = opt.ask(20)
        steps = opt.steps.copy()
        assert np.allclose(codes[0::2], opt.center + steps, atol=1e-5)  # not clipped
        assert np.allclose(codes[1::2], opt.center - steps, atol=1e-5) and np.abs(codes).max() > 4
        scores = 40 + 10 * np.tanh(codes @ rng.normal(size=32) / 10)  # a unit responding ~40 (the mean cancels in pairs)
        pos, neg = scores[0::2], scores[1::2]
        if normalize:
            both = np.concatenate([pos, neg])
            pos, neg = (pos - both.mean()) / both.std(), (neg - both.mean()) / both.std()
        before = opt.center.copy()
        if cls is xdream.FDGD:
            norm = np.abs(steps).mean(axis=1)
            want = before + lr * np.mean(((pos - neg) / 2 / norm**2)[:, None] * steps, axis=0)
        else:
            eps = np.concatenate([steps, -steps]) / 2.0
            want = before + lr * np.mean(np.concatenate([pos, neg])[:, None] * eps, axis=0) / 2.0
        opt.tell(codes, scores)
        assert np.allclose(opt.center, want, rtol=1e-5, atol=1e-6)
