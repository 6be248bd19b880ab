"""Kill stimopt mid-generation during a rig run (real processes: stimopt and stimopt-rig-sim) and
resume: nothing presented and answered is lost, nothing is presented twice, the run completes."""
from __future__ import annotations

import json
import signal
import subprocess
import time

import numpy as np
import pytest

from conftest import BIN, cli_env, run_cli, stop_sim
from stimopt.store import RunStore
from test_rig import inbox_means


@pytest.mark.slow
def test_kill_mid_generation_and_resume(tmp_path):
    rig, run = tmp_path / "rig", tmp_path / "run"
    env = cli_env(OMP_NUM_THREADS="1")
    sim = subprocess.Popen(
        [str(BIN / "stimopt-rig-sim"), str(rig), "--input-size", "16", "--late", "2", "--late-s", "4", "--drop", "0.1", "--idle-exit", "120"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    args = ["experiment=rig", f"target.rig_dir={rig}", "target.timeout_s=60", "target.presentations=2",
            "generator=pixels", "generator.size=16", "generator.resolution=4", "optimizer=random",
            "budget=40", "batch_size=8", "logger=none", f"hydra.run.dir={run}"]
    try:
        first = subprocess.Popen([str(BIN / "stimopt"), *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        manifest = rig / "outbox" / "gen_000002" / "manifest.json"
        deadline = time.monotonic() + 240
        while not manifest.exists():
            assert first.poll() is None, first.communicate()[0]
            assert time.monotonic() < deadline, "stimopt never reached generation 2"
            time.sleep(0.02)
        first.send_signal(signal.SIGKILL)  # mid-generation 2: published, the lab answers it only 4 s later
        first.wait(30)
        store = RunStore(run / "evaluations.sqlite")
        assert store.n_evaluations() == 16  # generations 0 and 1 committed, 2 in flight
        store.close()

        done = run_cli([*args, f"resume={run}"], cwd=tmp_path, env=env, timeout=300)
        assert "best response" in done.stdout
    finally:
        stop_sim(rig, sim)

    store = RunStore(run / "evaluations.sqlite")
    assert store.n_evaluations() == 40 and store.meta("status") == "finished"
    responses = store.responses()
    store.close()
    presented = [json.loads(x) for x in (rig / "sim_presented.jsonl").read_text().splitlines()]
    assert sorted(p["generation"] for p in presented) == [0, 1, 2, 3, 4]  # each generation shown once
    assert not (rig / "outbox" / "stale").exists()  # the resumed run re-asked the same stimuli
    log = [json.loads(x) for x in (rig / "log.jsonl").read_text().splitlines()]
    assert [e["generation"] for e in log if not e["published"]] == [2]  # generation 2 picked up, not re-sent
    expected = np.concatenate([inbox_means(rig, g, 8)[:, 0] for g in range(5)])
    np.testing.assert_allclose(responses, expected)  # every answered trial is in the run, NaN where dropped
