"""ImageBeagle: the walk (Algorithm 1) on synthetic banks, and the headline command on a tiny real bank."""
from __future__ import annotations

import json

import faiss
import numpy as np
import pytest

import stimopt
from stimopt.bank import FeatureSpec, build_bank, load_bank
from stimopt.bank.coresets import build_coresets
from stimopt.bank.tuning import graph_path
from stimopt_plugins.imagebeagle import ImageBeagleGenerator, Walk
from stimopt_plugins.random_search import RandomSearch
from tests.conftest import run_cli

# A small CNN read before its ReLU so responses take both signs (direction=min is not trivially 0).
TARGET = ["target.model=resnet18", "target.weights=random", "target.layer=layer2.0.bn2", "target.input_size=32", "target.unit=3"]


def synthetic_space(n=3000, d=16, k=100, seed=0) -> stimopt.BankSpace:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(30, d)) * 3
    x = (centres[rng.integers(0, 30, n)] + rng.normal(size=(n, d))).astype(np.float32)
    _, ids = faiss.knn(x, x, k + 1)
    graph = ids[:, 1:].astype(np.int32)
    cores = build_coresets(graph, 5, 100, seed=seed, features=x)
    return stimopt.BankSpace(size=n, features=x, graph=graph, coresets=tuple(cores))


def drive(opt, space, score_fn, budget, batch, seed=0):
    opt.setup(space, seed=seed, budget=budget, batch_size=batch)
    asked = []
    while len(asked) < budget:
        codes = opt.ask(min(batch, budget - len(asked)))
        assert codes.dtype == np.int64 and codes.ndim == 1
        asked += codes.tolist()
        opt.tell(codes, score_fn(codes))
    return np.array(asked)


@pytest.mark.parametrize("batch", [1, 7, 20, 33])
def test_walk_never_reevaluates_and_spends_exactly_the_budget(batch):
    space = synthetic_space()
    w = np.random.default_rng(1).normal(size=16)
    score = lambda c: space.features[c] @ w  # noqa: E731
    asked = drive(Walk(L=10, K=8, M=3), space, score, budget=700, batch=batch)
    assert len(asked) == 700 and len(np.unique(asked)) == 700
    assert asked.min() >= 0 and asked.max() < space.size


def test_walk_follows_algorithm_1_step_by_step():
    """batch = K = L: the first batch is the first L coreset images; the second is the K nearest
    neighbours of the best of them; the third the neighbours of the best of those if it improved."""
    space = synthetic_space()
    w = np.random.default_rng(1).normal(size=16)
    score = lambda c: space.features[c] @ w  # noqa: E731
    opt = Walk(L=10, K=10, M=2)
    opt.setup(space, seed=0, budget=100, batch_size=10)
    first = opt.ask(10)
    assert first.tolist() == space.coresets[0][:10].tolist()
    opt.tell(first, score(first))
    best = first[np.argmax(score(first))]
    second = opt.ask(10)
    assert second.tolist() == [j for j in space.graph[best].tolist() if j not in set(first.tolist())][:10]
    opt.tell(second, score(second))
    if score(second).max() > score(np.array([best]))[0]:
        nxt = second[np.argmax(score(second))]
        third = opt.ask(10)
        expected = [j for j in space.graph[nxt].tolist() if j not in set(first) | set(second)][:10]
        assert third.tolist() == expected


def manifold_space(n=5000, k=100, seed=0) -> stimopt.BankSpace:
    """Images on a smooth 2-D manifold (embedded in 16-D): where a kNN walk should shine."""
    rng = np.random.default_rng(seed)
    u = rng.random((n, 2))
    x = np.concatenate([u, np.sin(3 * u), np.cos(2 * u)], axis=1) @ rng.normal(size=(6, 16))
    x = x.astype(np.float32)
    _, ids = faiss.knn(x, x, k + 1)
    graph = ids[:, 1:].astype(np.int32)
    return stimopt.BankSpace(size=n, features=x, graph=graph, coresets=tuple(build_coresets(graph, 5, 100, seed=seed, features=x)))


def test_walk_beats_random_search_on_a_smooth_bank_objective():
    space = manifold_space()
    rng = np.random.default_rng(3)
    hits_walk, hits_random = [], []
    for unit in range(10):
        goal = space.features[rng.integers(space.size)]
        score = lambda c: -np.linalg.norm(space.features[c] - goal, axis=1)  # noqa: E731
        top = np.sort(score(np.arange(space.size)))[-5]  # the bank's top 0.1%
        for opt, hits in ((Walk(), hits_walk), (RandomSearch(), hits_random)):
            asked = drive(opt, space, score, budget=1500, batch=20, seed=unit)
            reached = np.flatnonzero(score(asked) >= top)
            hits.append(reached[0] + 1 if len(reached) else 1501)
    assert np.median(hits_walk) * 2 <= np.median(hits_random), (hits_walk, hits_random)


def test_walk_state_dict_resumes_exactly_and_stays_small():
    space = synthetic_space()
    w = np.random.default_rng(2).normal(size=16)
    score = lambda c: space.features[c] @ w  # noqa: E731
    a = Walk(L=10, K=8, M=3)
    asked_a = drive(a, space, score, budget=300, batch=20)
    b = Walk(L=10, K=8, M=3)
    drive(b, space, score, budget=140, batch=20)
    state = b.state_dict()
    c = Walk(L=10, K=8, M=3)
    c.setup(space, seed=0, budget=300, batch_size=20)
    c.load_state_dict(state)
    rest = []
    while len(rest) < 160:
        codes = c.ask(20)
        rest += codes.tolist()
        c.tell(codes, score(codes))
    assert asked_a[140:].tolist() == rest
    import pickle

    assert len(pickle.dumps(state)) < 140 * 40 + 4000  # O(evaluations), not O(bank)


def test_walk_rejects_what_it_cannot_do():
    space = synthetic_space(n=200)
    with pytest.raises(stimopt.StimoptError, match="exceeds the bank"):
        Walk().setup(space, seed=0, budget=201, batch_size=20)
    with pytest.raises(stimopt.StimoptError, match="kNN graph"):
        Walk().setup(stimopt.BankSpace(size=100), seed=0, budget=10, batch_size=5)
    with pytest.raises(stimopt.StimoptError, match="positive"):
        Walk(K=0)
    assert not isinstance(stimopt.ContinuousSpace(dim=3), Walk.accepts)


def test_graph_path_follows_knn_relations_and_reaches_an_outlier():
    space = synthetic_space(n=800)
    graph = np.asarray(space.graph)
    related = lambda a, b: b in graph[a] or a in graph[b]  # noqa: E731
    undirected = [set(graph[i].tolist()) for i in range(800)]
    for i in range(800):
        for j in graph[i].tolist():
            undirected[j].add(i)
    hops = {5: 0}
    frontier = [5]
    while frontier:  # plain BFS over the undirected relation: the shortest possible path
        frontier = [j for i in frontier for j in undirected[i] if j not in hops and not hops.setdefault(j, hops[i] + 1) < 0]
    path = graph_path(graph, 5, 700)
    assert path[0] == 5 and path[-1] == 700 and len(set(path)) == len(path)
    assert all(related(a, b) for a, b in zip(path[:-1], path[1:]))
    assert len(path) - 1 <= hops[700] + 1
    incoming = np.bincount(graph.reshape(-1), minlength=800)
    outlier = int(np.argmin(incoming))  # listed by few or no other images: reached through its own edges
    path = graph_path(graph, 5, outlier)
    assert path[-1] == outlier and all(related(a, b) for a, b in zip(path[:-1], path[1:]))


@pytest.fixture(scope="module")
def tiny_bank(tmp_path_factory):
    out = tmp_path_factory.mktemp("bank") / "tiny"
    build_bank("demo:400", out, features=FeatureSpec(model="pixels", input_size=8), k=20, image_size=32, shard_size=200,
               n_coresets=4, coreset_size=20)
    return out


def test_generator_serves_bank_images_and_random_search_works_unchanged(tiny_bank):
    gen = ImageBeagleGenerator(bank=str(tiny_bank), size=40)
    assert isinstance(gen.space, stimopt.BankSpace) and gen.space.size == 400
    imgs = gen.generate(np.array([0, 399, 7]))
    assert imgs.shape == (3, 3, 40, 40)
    with pytest.raises(stimopt.StimoptError, match="bank indices"):
        gen.generate(np.zeros((2, 5), np.float32))
    codes = drive(RandomSearch(), gen.space, lambda c: -c.astype(float), budget=100, batch=20)
    assert len(set(codes.tolist())) == 100


def _all_responses(bank_path):
    from omegaconf import OmegaConf

    from stimopt import plugins
    from stimopt.config import compose
    from stimopt.bank.tuning import noiseless_target

    from stimopt.experiment import seed_everything

    plugins.load_plugins()
    cfg = compose(["generator=imagebeagle", f"generator.bank={bank_path}", *TARGET])
    seed_everything(0)  # weights=random: the run's network is drawn after seeding with seed=0
    target = noiseless_target(cfg.target)
    bank = load_bank(bank_path)
    return np.asarray(target.evaluate(bank.images(np.arange(bank.size)))).reshape(-1), OmegaConf


@pytest.mark.slow
def test_headline_command_direction_min_and_tuning_curve(tiny_bank, tmp_path):
    run = tmp_path / "run"
    proc = run_cli(["target=cnn_unit", "generator=imagebeagle", "optimizer=walk", "direction=min", f"generator.bank={tiny_bank}",
                    "budget=120", "logger=none", *TARGET, f"hydra.run.dir={run}"], cwd=tmp_path)
    assert "best response" in proc.stdout
    summary = json.loads((run / "summary.json").read_text())
    assert summary["n_evaluations"] == 120 and summary["optimizer_name"] == "walk"
    from stimopt.store import RunStore

    store = RunStore(run / "evaluations.sqlite")
    codes = store.codes().reshape(-1)
    store.close()
    assert len(np.unique(codes)) == 120  # nothing evaluated twice
    every, _ = _all_responses(tiny_bank)
    # direction=min: the best found is among the bank's lowest 2% (random search: ~30% of the time)
    assert summary["best_response"] <= np.quantile(every, 0.02), (summary["best_response"], np.quantile(every, [0, 0.02]))
    assert summary["best_response"] == pytest.approx(every[codes].min(), rel=1e-4, abs=1e-5)
    report = summary["optimizer_report"]
    assert report["walk"]["local_searches"] >= 1 and report["tuning_path"][-1] == report["best_index"]
    proc = run_cli(["tuning", str(run)], cwd=tmp_path, program="stimopt-bank")
    assert (run / "tuning.png").stat().st_size > 1000
    rows = [line.split(",") for line in (run / "tuning.csv").read_text().splitlines()[1:]]
    assert int(rows[-1][1]) == report["best_index"] and float(rows[-1][3]) == pytest.approx(summary["best_response"], rel=1e-3, abs=1e-4)


def test_bank_optimizers_leave_the_generator_to_the_user_and_presets_pair_them():
    """`stimopt -m optimizer=ga,nes,cmaes` compares optimizers on one generator: an optimizer config never
    swaps the generator; `experiment=imagebeagle|surrogate` picks the bank generator with the optimizer."""
    from stimopt.config import compose

    assert compose(["optimizer=walk"]).generator._target_.endswith("FourierGenerator")  # then the fit check says why not
    assert compose(["experiment=imagebeagle"]).generator._target_.endswith("ImageBeagleGenerator")
    assert compose(["experiment=imagebeagle"]).optimizer._target_.endswith(".Walk")
    assert compose(["experiment=surrogate"]).optimizer._target_.endswith("SurrogateSearch")
    assert compose(["experiment=imagebeagle", "generator.bank=BANK"]).generator.bank == "BANK"


def test_the_seed_picks_the_coreset_the_walk_begins_with():
    space = synthetic_space(n=1000)
    firsts = []
    for seed in (0, 1, 5, 6):
        opt = Walk(L=10, K=10, M=2)
        opt.setup(space, seed=seed, budget=50, batch_size=10)
        firsts.append(opt.ask(10).tolist())
    assert firsts[0] == space.coresets[0][:10].tolist() and firsts[1] == space.coresets[1][:10].tolist()
    assert firsts[2] == firsts[0] and firsts[3] == firsts[1]  # 5 coresets: seed 5 is seed 0 again
