"""Files never run code when loaded: checkpoints in the run store, fitted models, Vis-Lens VAEs,
and the run that ``resume=true`` picks on its own."""
from __future__ import annotations

import math
import os
import pickle
import sqlite3
import subprocess

import numpy as np
import pytest
import torch

import stimopt
from stimopt import state
from stimopt.errors import StimoptError

from conftest import FAST, run_cli
from test_engine import MeanBrightness


def make_run(tmp_path, optimizer=None, budget=200, batch=20, seed=0, name="run"):
    """A small in-process run (Fourier codes, a known target) that restores from its store."""
    from stimopt.engine import Run
    from stimopt.objective import Objective
    from stimopt.store import RunStore
    from stimopt_plugins.image_codes import FourierGenerator
    from stimopt_plugins.random_search import RandomSearch

    gen = FourierGenerator(size=16, n_freq=4, device="cpu")
    opt = optimizer or RandomSearch()
    opt.setup(gen.space, seed=seed, budget=budget, batch_size=batch)
    store = RunStore(tmp_path / name / "evaluations.sqlite")
    run = Run(target=MeanBrightness(), generator=gen, optimizer=opt, objective=Objective("max"), store=store,
              budget=budget, batch_size=batch, run_dir=tmp_path / name)
    run.restore()
    return run


class Evil:
    """Unpickling this writes a marker file: the proof that a loader ran code."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('ran')",))


def one_line(exc) -> str:
    msg = str(exc.value)
    assert "\n" not in msg, msg
    return msg


# -- the serializer ----------------------------------------------------------------------------
def test_state_round_trips_arrays_plain_values_and_generators():
    rng = np.random.default_rng(5)
    rng.random(3)
    value = {
        "a": np.arange(6, dtype=np.int32).reshape(2, 3), "f": math.nan, "g": -math.inf, "n": None, "big": 2**80,
        "t": (1, "x", [np.float32(1.5), True]), "s": {3, 1}, "ints": {1: "one", (2, 3): "pair"}, "b": b"\x00\x80",
        "rng": rng.bit_generator.state, "gen": np.random.default_rng(1), "rs": np.random.RandomState(2),
        "tensor": torch.arange(4.0), "half": torch.ones(2, dtype=torch.bfloat16), "__array__": 7,
    }
    back = state.loads(state.dumps(value))
    np.testing.assert_array_equal(back["a"], value["a"])
    assert back["a"].dtype == np.int32 and math.isnan(back["f"]) and back["g"] == -math.inf and back["n"] is None
    assert back["big"] == 2**80 and back["t"] == (1, "x", [1.5, True]) and isinstance(back["t"][2][0], np.float32)
    assert back["s"] == {1, 3} and back["ints"] == {1: "one", (2, 3): "pair"} and back["b"] == b"\x00\x80"
    assert back["rng"] == value["rng"] and back["__array__"] == 7
    assert back["gen"].random() == np.random.default_rng(1).random()
    assert back["rs"].rand() == np.random.RandomState(2).rand()
    assert torch.equal(back["tensor"], value["tensor"]) and back["half"].dtype == torch.bfloat16


def test_state_refuses_arbitrary_objects_when_written_naming_where():
    with pytest.raises(StimoptError) as err:
        state.dumps({"optimizer": {"inner": object()}})
    assert "optimizer.inner" in one_line(err) and "builtins.object" in str(err.value)
    with pytest.raises(StimoptError):
        state.dumps({"x": np.array([object()], dtype=object)})


@pytest.mark.parametrize("blob", [b"\x80\x04garbage", b"STIMOPT-STATE-1\n\xff\xff", b""])
def test_state_refuses_pickles_and_damaged_blobs(blob):
    with pytest.raises(StimoptError) as err:
        state.loads(blob)
    one_line(err)


# -- the run store's checkpoint ------------------------------------------------------------------
def test_crafted_pickle_in_the_store_checkpoint_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "marker"
    run = make_run(tmp_path, budget=60)
    run.step()
    run.store.close()
    db = sqlite3.connect(tmp_path / "run" / "evaluations.sqlite")
    db.execute("UPDATE checkpoint SET state=?", (pickle.dumps({"progress": Evil(marker)}),))
    db.commit()
    db.close()
    with pytest.raises(StimoptError) as err:
        make_run(tmp_path, budget=60)
    assert "pickle" in one_line(err) and "not loaded" in str(err.value)
    assert not marker.exists()


def test_crafted_store_is_refused_by_the_cli_resume(tmp_path):
    marker = tmp_path / "marker"
    run_cli([*FAST, "budget=40", "optimizer=random", "hydra.run.dir=r"], tmp_path)
    db = sqlite3.connect(tmp_path / "r" / "evaluations.sqlite")
    db.execute("UPDATE checkpoint SET state=?", (pickle.dumps(Evil(marker)),))
    db.execute("UPDATE meta SET value='\"interrupted\"' WHERE key='status'")
    db.commit()
    db.close()
    proc = run_cli([*FAST, "budget=60", "optimizer=random", "hydra.run.dir=r", "resume=true"], tmp_path, check=False)
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("stimopt: error:")]
    assert proc.returncode == 2 and len(errors) == 1 and "pickle" in errors[0], proc.stderr
    assert "Traceback" not in proc.stderr and not marker.exists()


CONTINUOUS = {
    "random": lambda: __import__("stimopt_plugins.random_search", fromlist=["x"]).RandomSearch(),
    "cmaes": lambda: __import__("stimopt_plugins.nevergrad", fromlist=["x"]).NevergradOptimizer(
        "ParametrizedCMA", {"popsize": 20, "diagonal": True}),
    "ngopt": lambda: __import__("stimopt_plugins.nevergrad", fromlist=["x"]).NevergradOptimizer("NGOpt"),
    "ga": lambda: __import__("stimopt_plugins.xdream", fromlist=["x"]).Genetic(),
    "nes": lambda: __import__("stimopt_plugins.xdream", fromlist=["x"]).NES(),
    "fdgd": lambda: __import__("stimopt_plugins.xdream", fromlist=["x"]).FDGD(),
}


@pytest.mark.parametrize("name", sorted(CONTINUOUS))
def test_every_continuous_optimizer_checkpoints_safely_and_resumes_exactly(tmp_path, name):
    make = CONTINUOUS[name]
    full = make_run(tmp_path, optimizer=make(), budget=100, name="full")
    full.run()
    part = make_run(tmp_path, optimizer=make(), budget=100, name="part")
    part.step(), part.step()
    part.store.close()
    resumed = make_run(tmp_path, optimizer=make(), budget=100, name="part")
    assert resumed.progress.n_evaluations == 40
    resumed.run()
    np.testing.assert_array_equal(resumed.store.codes(), full.store.codes())
    np.testing.assert_array_equal(resumed.store.responses(), full.store.responses())


def test_nevergrad_state_holds_no_pickle_and_stays_small(tmp_path):
    run = make_run(tmp_path, optimizer=CONTINUOUS["cmaes"](), budget=200)
    run.run()
    blob = state.dumps(run.optimizer.state_dict())
    assert b"\x80\x04" not in blob[:64] and len(blob) < 200 * 8 + 2000


def test_nevergrad_replay_that_diverges_is_refused(tmp_path):
    opt = CONTINUOUS["cmaes"]()
    run = make_run(tmp_path, optimizer=opt, budget=60)
    run.step()
    saved = opt.state_dict()
    saved["crcs"] = saved["crcs"] + 1
    with pytest.raises(StimoptError) as err:
        opt.load_state_dict(saved)
    assert "did not reproduce generation 0" in one_line(err)


# -- torch files: fitted models and Vis-Lens VAEs --------------------------------------------------
def evil_pt(tmp_path, **keys):
    path = tmp_path / "model.pt"
    torch.save({**keys, "payload": Evil(tmp_path / "marker")}, path)
    return path


@pytest.mark.parametrize("kind", ["v4_ensemble", "encoder"])
def test_crafted_target_checkpoint_is_refused_and_never_runs(tmp_path, kind):
    from stimopt_plugins.neural import EncoderTarget, V4EnsembleTarget, load_checkpoint

    path = evil_pt(tmp_path, kind=kind)
    with pytest.raises(StimoptError) as err:
        load_checkpoint(path, kind)
    assert str(path) in one_line(err)
    with pytest.raises(StimoptError):
        (V4EnsembleTarget if kind == "v4_ensemble" else EncoderTarget)(str(path), None, "cpu")
    assert not (tmp_path / "marker").exists()


def test_crafted_checkpoint_for_fit_match_is_refused_and_never_runs(tmp_path):
    path = evil_pt(tmp_path, kind="v4_ensemble")
    proc = run_cli(["mode=match", f"checkpoint={path}", "model=v4_ensemble", "data.images=x", "data.responses=y"],
                   tmp_path, program="stimopt-fit", check=False)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr
    errors = [ln for ln in proc.stderr.splitlines() if "error" in ln and str(path) in ln]
    assert len(errors) == 1 and not (tmp_path / "marker").exists(), proc.stderr


def test_crafted_vislens_checkpoint_is_refused_and_never_runs(tmp_path):
    from stimopt_plugins.vislens import ImageVAEGenerator
    from stimopt_plugins.vislens.vae import load_landscape

    path = evil_pt(tmp_path, arch={"kind": "image"})
    with pytest.raises(StimoptError) as err:
        load_landscape(path)
    assert "refused" in one_line(err)
    with pytest.raises(StimoptError):
        ImageVAEGenerator(checkpoint=str(path), device="cpu")
    assert not (tmp_path / "marker").exists()


def test_no_loader_in_the_project_unpickles():
    root = os.path.dirname(os.path.dirname(__file__))
    out = subprocess.run(["grep", "-rn", "--include=*.py", "weights_only=False\\|pickle.load", "stimopt", "plugins", "examples"],
                         cwd=root, capture_output=True, text=True)
    assert out.stdout == "", out.stdout


# -- resume=true picking a run on its own ---------------------------------------------------------
def test_resume_true_says_which_run_it_picked(tmp_path):
    runs = tmp_path / "outputs" / "runs"
    run_cli([*FAST, "budget=20", "optimizer=random", f"hydra.run.dir={runs / 'a'}"], tmp_path)
    db = sqlite3.connect(runs / "a" / "evaluations.sqlite")
    db.execute("UPDATE meta SET value='\"interrupted\"' WHERE key='status'")
    db.commit()
    db.close()
    proc = run_cli([*FAST, "budget=40", "optimizer=random", "resume=true"], tmp_path)
    picked = [ln for ln in proc.stderr.splitlines() if "picked the newest unfinished run" in ln]
    assert len(picked) == 1 and str(runs / "a") in picked[0] and "last committed generation 0" in picked[0]


def test_resume_true_refuses_a_planted_non_store(tmp_path):
    runs = tmp_path / "outputs" / "runs"
    (runs / "planted").mkdir(parents=True)
    (runs / "planted" / "evaluations.sqlite").write_bytes(pickle.dumps(Evil(tmp_path / "marker")))
    proc = run_cli([*FAST, "budget=20", "resume=true"], tmp_path, check=False)
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("stimopt: error:")]
    assert proc.returncode == 2 and len(errors) == 1 and "not a valid store" in errors[0], proc.stderr
    assert not (tmp_path / "marker").exists()


def test_every_bank_optimizer_state_round_trips_without_pickle():
    from stimopt import plugins

    rng = np.random.default_rng(0)
    x = rng.standard_normal((400, 16)).astype(np.float32)
    graph = np.argsort(((x[:, None] - x[None]) ** 2).sum(-1), 1)[:, 1:9]
    space = stimopt.BankSpace(size=400, features=x, graph=graph, coresets=(np.arange(0, 400, 7),))
    plugins.load_plugins()
    checked = []
    for name, (cls, _) in sorted(plugins.registry()["optimizer"].items()):
        if not isinstance(space, cls.accepts):
            continue
        a, b = cls(), cls()
        a.setup(space, seed=0, budget=60, batch_size=10)
        b.setup(space, seed=0, budget=60, batch_size=10)
        for _ in range(3):
            a.tell(np.asarray(a.ask(10)), rng.standard_normal(10))
        b.load_state_dict(state.loads(state.dumps(a.state_dict())))
        np.testing.assert_array_equal(np.asarray(a.ask(10)), np.asarray(b.ask(10)))
        checked.append(name)
    assert {"random", "walk"} <= set(checked)
