"""Stimuli the engine shows beside the optimizer's (stimopt.interleave): reference images (drift
signal, drift correction), elite re-presentations (evidence rule), presentation accounting, and
the per-trial baseline counts in the store."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

import stimopt
from stimopt.engine import Run
from stimopt.errors import StimoptError
from stimopt.interleave import Elites, Interleave, References
from stimopt.objective import Objective
from stimopt.store import RunStore
from stimopt_plugins.image_codes import PixelGenerator
from stimopt_plugins.random_search import RandomSearch
from stimopt_plugins.rig.sim import LabSim


class DriftingRed(stimopt.Target):
    """Mean red minus mean blue, times a gain that halves every call (a neuron losing responsiveness);
    keeps every batch it was shown."""

    def __init__(self, decay=0.5):
        self.calls, self.decay, self.seen = 0, decay, []

    def evaluate(self, images):
        self.seen.append(images.clone())
        r = (images[:, 0].mean(dim=(1, 2)) - images[:, 2].mean(dim=(1, 2)) + 1.0) * self.decay ** self.calls
        self.calls += 1
        return r

    def state_dict(self):
        return {"calls": self.calls}

    def load_state_dict(self, state):
        self.calls = int(state["calls"])


class Told(RandomSearch):
    """Random search that keeps what it was told."""

    def tell(self, codes, scores):
        self.told = getattr(self, "told", []) + [np.array(scores)]
        super().tell(codes, scores)


def reference_folder(tmp_path, n=3, size=8):
    """n pure-red PNGs: the best possible images for DriftingRed, so a reference mistaken for a
    stimulus would be 'the best'."""
    folder = tmp_path / "refs"
    folder.mkdir()
    for i in range(n):
        Image.fromarray(np.full((size, size, 3), [255, 0, 10 * i], np.uint8)).save(folder / f"ref_{i}.png")
    return folder


def make_run(tmp_path, target, budget=16, batch=4, references=None, elites=None, budget_counts="stimuli", optimizer=None,
             name="run"):
    gen = PixelGenerator(size=8, resolution=4)
    opt = optimizer or Told()
    opt.setup(gen.space, seed=0, budget=budget, batch_size=batch)
    store = RunStore(tmp_path / name / "evaluations.sqlite")
    run = Run(target=target, generator=gen, optimizer=opt, objective=Objective("max"), store=store, budget=budget,
              batch_size=batch, on_bad_response="skip", run_dir=tmp_path / name, budget_counts=budget_counts,
              interleave=Interleave(references, elites))
    run.restore()
    return run


def test_references_are_shown_recorded_and_never_the_best(tmp_path, one_thread):
    refs = References(source=str(reference_folder(tmp_path)), n=3, every=2)
    target = DriftingRed()
    run = make_run(tmp_path, target, references=refs)
    run.run()
    assert [len(b) for b in target.seen] == [7, 4, 7, 4]  # 4 stimuli + 3 references in generations 0 and 2
    rows = run.store.shown("reference")
    assert [r["generation"] for r in rows] == [0, 0, 0, 2, 2, 2] and [r["position"] for r in rows[:3]] == [4, 5, 6]
    assert all(math.isnan(r["score"]) and r["code"] is None and r["info"]["reference"] in (0, 1, 2) for r in rows)
    red = target.seen[0][4:]  # what the target was shown for them: the folder's images
    assert torch.allclose(red[:, 0], torch.ones_like(red[:, 0])) and float(red[:, 1].max()) == 0
    got = np.array([r["response"] for r in rows])
    expected = np.concatenate([(1 + 1 - red[:, 2].mean(dim=(1, 2)).numpy()) * 0.5 ** g for g in (0, 2)])
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    # the optimizer's stimuli only: counts, best, reads
    assert run.store.n_evaluations() == 16 and len(run.store.responses()) == 16
    assert run.progress.best_response < got[:3].min()  # pixel noise never reaches pure red, yet refs are not the best
    assert all(t["generation"] in range(4) and t["score"] <= run.progress.best_score for t in run.store.top(3))
    summary = run.interleave.summarize(run.store)["references"]
    assert [s["generation"] for s in summary["showings"]] == [0, 2]
    assert summary["showings"][1]["gain"] == pytest.approx(0.25, rel=1e-5) and summary["drift_gain"] == pytest.approx(0.25, rel=1e-5)
    assert run.progress.drift_gain == pytest.approx(0.25, rel=1e-5) and run.progress.n_presentations == 22
    run.store.close()


def test_drift_correction_divides_the_scores_by_the_reference_gain(tmp_path, one_thread):
    refs = References(source=str(reference_folder(tmp_path)), n=2, every=1, drift_correction="gain")
    target = DriftingRed()
    run = make_run(tmp_path, target, references=refs)
    run.run()
    for g, (told, batch) in enumerate(zip(run.optimizer.told, target.seen)):
        true = (batch[:4, 0].mean(dim=(1, 2)) - batch[:4, 2].mean(dim=(1, 2)) + 1.0).numpy()
        np.testing.assert_allclose(told, true, rtol=1e-5)  # the drift (0.5 per generation) cancelled
    stored = run.store.scores()
    np.testing.assert_allclose(stored, np.concatenate(run.optimizer.told), rtol=1e-6)  # scores: what was told
    assert run.store.responses()[-1] == pytest.approx(stored[-1] * 0.5 ** 3, rel=1e-5)  # responses: as measured
    run.store.close()
    uncorrected = make_run(tmp_path, DriftingRed(), references=References(source=refs.source, n=2), name="plain")
    uncorrected.run()
    assert uncorrected.optimizer.told[3] == pytest.approx(run.optimizer.told[3] * 0.5 ** 3, rel=1e-5)
    uncorrected.store.close()


def test_presentation_budget_counts_references_and_trials(tmp_path, one_thread):
    refs = References(source=str(reference_folder(tmp_path)), n=2, every=1)
    target = DriftingRed()
    target.presentations_per_image = 2
    run = make_run(tmp_path, target, budget=40, references=refs, budget_counts="presentations")
    run.run()
    # 3 generations of (4 + 2) images x 2 trials = 36; then room for 2 images: the references make way
    assert [len(b) for b in target.seen] == [6, 6, 6, 2]
    assert run.progress.n_presentations == 40 and run.progress.n_evaluations == 14 == run.store.n_evaluations()
    run.store.close()
    with pytest.raises(StimoptError, match="budget_counts"):
        make_run(tmp_path, DriftingRed(), budget_counts="trials", name="bad")


class NoisyRed(DriftingRed):
    """No drift, seeded noise per call: a lucky single showing is not a good image."""

    def evaluate(self, images):
        self.seen.append(images.clone())
        noise = torch.randn(len(images), generator=torch.Generator().manual_seed(self.calls)) * 0.3
        self.calls += 1
        return images[:, 0].mean(dim=(1, 2)) - images[:, 2].mean(dim=(1, 2)) + noise


def independent_means(rows):
    """code origin id -> list of scores, from the raw rows (first showing + repeats)."""
    by = {}
    for r in rows:
        if r["kind"] is None:
            by.setdefault(r["id"], []).append(r["score"])
        elif r["kind"] == "repeat":
            by.setdefault(r["info"]["of"], []).append(r["score"])
    return by


def test_elites_are_shown_again_and_the_evidence_rule_picks_the_confirmed_best(tmp_path, one_thread):
    target = NoisyRed()
    run = make_run(tmp_path, target, budget=24, elites=Elites(n=2, every=1, min_presentations=3))
    picks = []
    while run.room() > 0:
        before = independent_means(run.store.shown())
        ranked = sorted(before, key=lambda k: (-np.mean(before[k]), k))[:2]
        picks.append(ranked if run.progress.generation > 0 else [])
        run.step()
    rows = run.store.shown()
    for g, want in enumerate(picks):
        got = [r["info"]["of"] for r in rows if r["generation"] == g and r["kind"] == "repeat"]
        assert got == want
    codes = {r["id"]: r["code"] for r in rows if r["kind"] is None}
    for r in (r for r in rows if r["kind"] == "repeat"):
        np.testing.assert_array_equal(r["code"], codes[r["info"]["of"]])  # the same code shown again
        assert torch.equal(target.seen[r["generation"]][r["position"]],
                           run.generator.generate(codes[r["info"]["of"]][None])[0])
    assert [len(b) for b in target.seen] == [4] + [6] * 5 and run.store.n_evaluations() == 24
    by = independent_means(rows)
    eligible = {k: np.mean(v) for k, v in by.items() if len(v) >= 3}
    want = min(eligible, key=lambda k: (-eligible[k], k))
    best = run.interleave.summarize(run.store)["elites"]["confirmed_best"]
    assert best["id"] == want and best["presentations"] == len(by[want]) and best["mean_score"] == pytest.approx(eligible[want])
    run.store.close()


def test_resume_shows_the_same_references_and_elites(tmp_path, one_thread):
    refs = References(source=str(reference_folder(tmp_path)), n=2, every=2)
    whole = make_run(tmp_path, NoisyRed(), budget=20, references=refs, elites=Elites(n=1), name="whole")
    whole.run()
    want = [(r["generation"], r["position"], r["kind"], r["response"]) for r in whole.store.shown()]
    whole.store.close()
    part = make_run(tmp_path, NoisyRed(), budget=20, references=refs, elites=Elites(n=1), name="part")
    for _ in range(3):
        part.step()
    part.store.close()  # "killed" after generation 2's commit
    again = make_run(tmp_path, NoisyRed(), budget=20, references=refs, elites=Elites(n=1), name="part")
    assert again.progress.generation == 3
    again.run()
    got = [(r["generation"], r["position"], r["kind"], r["response"]) for r in again.store.shown()]
    assert got == want
    again.store.close()


def test_bad_reference_options_are_one_line_errors(tmp_path):
    with pytest.raises(StimoptError, match="target.references.n"):
        References(source="natural_crops", n=0)
    with pytest.raises(StimoptError, match="drift_correction"):
        References(source="natural_crops", drift_correction="divide")
    with pytest.raises(StimoptError, match="fewer than"):
        References(source=str(reference_folder(tmp_path)), n=5).images(torch.zeros(1, 3, 8, 8))
    with pytest.raises(StimoptError, match="neither"):
        References(source=str(tmp_path / "nowhere")).images(torch.zeros(1, 3, 8, 8))


def spike_counts(rig, g, n, window=(0.05, 0.2), baseline=(-0.1, 0.0)):
    """Per image of generation g, from the inbox's spike times (distinct trials): [(repeat, window, baseline)]."""
    from stimopt_plugins.rig import gen_name

    seen, out = set(), [[] for _ in range(n)]
    for line in (rig / "inbox" / f"{gen_name(g)}.jsonl").read_text().splitlines():
        rec = json.loads(line)
        if rec.get("generation") != g or rec.get("done") or (rec["index"], rec["repeat"]) in seen:
            continue
        seen.add((rec["index"], rec["repeat"]))
        t = np.asarray(rec["spikes"][0])
        out[rec["index"]].append((rec["repeat"], int(((t >= window[0]) & (t < window[1])).sum()),
                                  int(((t >= baseline[0]) & (t < baseline[1])).sum())))
    return out


class Crash(BaseException):
    """Stands for a kill: nothing after it is committed (the kill loop does it with SIGKILL)."""


@pytest.mark.slow
@pytest.mark.parametrize("transport", ["file", "zmq"])
def test_rig_run_crashed_and_resumed_with_references_elites_and_spike_times(tmp_path, compose, one_thread, monkeypatch,
                                                                            transport):
    """run_experiment with target=rig and the simulated lab: references every 2 generations, one elite
    re-shown, spike times with a baseline window, the budget in presentations; it dies while waiting
    for generation 2 (references and an elite in it) and is resumed: each generation presented once,
    every row (stimuli, references, repeats) holds its inbox answers, the per-trial baseline counts
    are in the store, summary.json reports both counts, the drift signal and the confirmed best."""
    from stimopt.experiment import run_experiment
    from stimopt_plugins.rig import target as rig_target
    from test_rig import lab_in_thread

    rig, run = tmp_path / "rig", tmp_path / "run"
    sim = LabSim(rig, weights="random", input_size=8, spikes=True, drop=0.2, reorder=True, seed=7)
    over = []
    if transport == "zmq":
        pytest.importorskip("zmq")
        from test_rig_zmq import free_endpoint, lab_zmq_thread

        endpoint = free_endpoint()
        lab = lab_zmq_thread(sim, endpoint, n_generations=100, idle=60.0)
        over = ["target.transport=zmq", f"target.endpoint={endpoint}"]
    else:
        lab = lab_in_thread(sim, n_generations=100, timeout=60.0)
    args = ["experiment=rig", f"target.rig_dir={rig}", "target.timeout_s=20", "target.poll_s=0.005",
            "target.presentations=2", "generator=pixels", "generator.size=8", "generator.resolution=4",
            "optimizer=random", "seed=3", "budget=60", "batch_size=4", "logger=none", "reference.kind=null",
            f"target.references.source={reference_folder(tmp_path)}", "target.references.n=2", "target.references.every=2",
            "target.elites.n=1", "budget_counts=presentations", "target.window=[0.05,0.2]", "target.baseline_window=[-0.1,0.0]", *over]

    def crash(stage, g):
        if (stage, g) == ("wait", 2):
            monkeypatch.setattr(rig_target, "_crash_point", lambda *a: None)
            raise Crash

    monkeypatch.setattr(rig_target, "_crash_point", crash)
    with pytest.raises(Crash):
        run_experiment(compose(args), run, observers=[], progress=False)
    store = RunStore(run / "evaluations.sqlite")
    assert store.n_evaluations() == 8 and {r["kind"] for r in store.shown()} == {None, "reference", "repeat"}
    store.close()
    summary = run_experiment(compose([*args, f"resume={run}"]), run, observers=[], progress=False)
    (rig / "STOP").touch()
    lab.join(10)
    presented = [json.loads(x)["generation"] for x in (rig / "sim_presented.jsonl").read_text().splitlines()]
    store = RunStore(run / "evaluations.sqlite")
    rows = store.shown()
    n_gen = max(r["generation"] for r in rows) + 1
    assert n_gen >= 4 and sorted(presented) == list(range(n_gen)) and not (rig / "outbox" / "stale").exists()
    for g in range(n_gen):  # each row: the mean of its image's distinct trials, and those trials' counts
        mine = [r for r in rows if r["generation"] == g]
        n_stimuli = sum(r["kind"] is None for r in mine)
        assert [r["kind"] for r in mine] == [None] * n_stimuli + ["reference"] * (2 if g % 2 == 0 else 0) + ["repeat"] * (g > 0)
        trials = spike_counts(rig, g, len(mine))
        for r, got in zip(mine, trials):
            want = np.mean([w for _, w, _ in got]) if got else math.nan
            assert r["response"] == pytest.approx(want, nan_ok=True)
            assert sorted((t["repeat"], t["window"][0], t["baseline"][0]) for t in r["trials"]["trials"]) == sorted(got)
    assert summary["n_presentations"] == 2 * len(rows) <= 60 and summary["n_evaluations"] == store.n_evaluations()
    assert summary["budget_counts"] == "presentations" and summary["status"] == "finished"
    assert [s["generation"] for s in summary["references"]["showings"]] == list(range(0, n_gen, 2))
    assert summary["elites"]["n_repeats"] == n_gen - 1 and summary["elites"]["confirmed_best"] is not None
    assert json.loads((run / "summary.json").read_text())["references"] == summary["references"]
    store.close()
