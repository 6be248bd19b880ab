"""The reliability bar: SIGKILL stimopt 20 times, at a random point of each stage of a rig
generation (writing the outbox, waiting, reading the inbox, committing), resuming each time,
against one simulator process (seed fixed, 30% of trials dropped, lines reordered, stale lines):
nothing presented and answered is lost, nothing is presented twice, and the final store equals
an uninterrupted run's. The kill points come from target.py's STIMOPT_RIG_CRASH fault injection
(stage, any generation, a random delay after reaching it: the kill lands inside the stage or
just after it)."""
from __future__ import annotations

import json
import random
import subprocess

import numpy as np
import pytest

from conftest import BIN, cli_env, stop_sim
from stimopt.store import RunStore
from test_rig import inbox_means

STAGES = ("outbox", "wait", "read", "commit")
DELAYS = {"outbox": 0.02, "wait": 0.3, "read": 0.005, "commit": 0.05}  # the longest random delay per stage
N_KILLS, BATCH, N_GEN = 20, 4, 24
SIM = ["--input-size", "8", "--drop", "0.3", "--reorder", "--old-lines", "1,4,9,15", "--latency", "0.3",
       "--seed", "7", "--idle-exit", "600"]


def args(rig, run):
    refs = run.parent / "refs"  # reference images every 3 generations and one elite re-shown: killed and resumed too
    if not refs.exists():
        from PIL import Image

        refs.mkdir(parents=True)
        for i in range(2):
            Image.fromarray(np.full((8, 8, 3), 60 + 90 * i, np.uint8)).save(refs / f"ref_{i}.png")
    return [f"target.references.source={refs}", "target.references.n=2", "target.references.every=3", "target.elites.n=1",
            "experiment=rig", f"target.rig_dir={rig}", "target.timeout_s=60", "target.presentations=2",
            "generator=pixels", "generator.size=8", "generator.resolution=4", "optimizer=random", "seed=3",
            f"budget={BATCH * N_GEN}", f"batch_size={BATCH}", "logger=none", f"hydra.run.dir={run}"]


def start_sim(rig, env):
    return subprocess.Popen([str(BIN / "stimopt-rig-sim"), str(rig), *SIM], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def store_of(run):
    store = RunStore(run / "evaluations.sqlite")
    try:
        shown = [(r["generation"], r["position"], r["kind"], r["response"]) for r in store.shown()]
        return store.n_evaluations(), store.responses(), store.codes(), store.meta("status"), shown
    finally:
        store.close()


@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_kill_twenty_times_at_every_stage_and_resume(tmp_path):
    env = cli_env(OMP_NUM_THREADS="1")
    # the uninterrupted run
    ref_rig, ref_run = tmp_path / "ref_rig", tmp_path / "ref_run"
    sim = start_sim(ref_rig, env)
    try:
        subprocess.run([str(BIN / "stimopt"), *args(ref_rig, ref_run)], env=env, capture_output=True, timeout=600, check=True)
    finally:
        stop_sim(ref_rig, sim)
    ref = store_of(ref_run)
    assert ref[0] == BATCH * N_GEN and ref[3] == "finished"

    rig, run = tmp_path / "rig", tmp_path / "run"
    rng = random.Random(17)
    sim = start_sim(rig, env)
    kills, landed = [], []
    try:
        for k in range(N_KILLS + 1):
            stage = STAGES[k % len(STAGES)]
            extra = [f"resume={run}"] if k else []
            spec = f"{stage}:*:{rng.uniform(0, DELAYS[stage]):.4f}"
            penv = dict(env, STIMOPT_RIG_CRASH=spec) if k < N_KILLS else env
            proc = subprocess.run([str(BIN / "stimopt"), *args(rig, run), *extra], env=penv, capture_output=True,
                                  text=True, timeout=600)
            if k == N_KILLS:
                assert proc.returncode == 0, proc.stderr[-2000:]
                break
            if proc.returncode == 0:  # the stage was not reached again: the run finished
                break
            assert proc.returncode == -9, proc.stderr[-2000:]
            kills.append(spec)
            n = store_of(run)[0] if (run / "evaluations.sqlite").exists() else 0
            landed.append(n // BATCH)
            # nothing answered and committed is lost: the store only grows, by whole generations
            assert n % BATCH == 0 and n >= (landed[-2] * BATCH if len(landed) > 1 else 0)
    finally:
        stop_sim(rig, sim)
    print(f"kill loop: {len(kills)} kills ({', '.join(kills)}), generation committed at each: {landed}")
    assert len(kills) == N_KILLS
    n, responses, codes, status, _ = store_of(run)
    assert n == BATCH * N_GEN and status == "finished"
    np.testing.assert_allclose(responses, ref[1])  # the final store equals the uninterrupted run's
    np.testing.assert_allclose(codes, ref[2])
    presented = [json.loads(x)["generation"] for x in (rig / "sim_presented.jsonl").read_text().splitlines()]
    assert sorted(presented) == list(range(N_GEN))  # each generation presented once
    assert not (rig / "outbox" / "stale").exists()
    shown = store_of(run)[4]
    assert [r[:3] for r in shown] == [r[:3] for r in ref[4]]  # the same stimuli, references and repeats, in place
    np.testing.assert_allclose([r[3] for r in shown], [r[3] for r in ref[4]])
    per_gen = [json.loads((rig / "outbox" / f"gen_{g:06d}" / "manifest.json").read_text()) for g in range(N_GEN)]
    expected = np.concatenate([inbox_means(rig, g, len(m["images"]))[:, 0] for g, m in enumerate(per_gen)])
    np.testing.assert_allclose([r[3] for r in shown], expected)  # every trial answered is in the run, NaN where dropped
    assert {r[2] for r in shown} == {None, "reference", "repeat"}
    assert np.isnan(responses).any()  # the 30% drops did leave images without any trial
    log = [json.loads(x) for x in (rig / "log.jsonl").read_text().splitlines()]
    assert sum(e["other_generation"] for e in log if e["generation"] in (1, 4)) > 0  # stale lines recorded
