"""The MATLAB/Octave client (examples/clients/matlab/stimopt_rig_client.m) against a real
`stimopt target=rig` run under GNU Octave: the run completes and every answer is recorded."""
from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import cli_env, run_cli
from stimopt.store import RunStore

CLIENT = Path(__file__).resolve().parents[1] / "examples" / "clients" / "matlab"
OCTAVE = shutil.which("octave")
GAIN = 0.1


def octave_client(rig: Path, **opts) -> subprocess.Popen:
    fields = ", ".join(f"'{k}', {v}" for k, v in opts.items())
    code = f"addpath('{CLIENT}'); n = stimopt_rig_client('{rig}', struct({fields})); printf('presented %d\\n', n);"
    return subprocess.Popen([OCTAVE, "--no-gui", "--norc", "--quiet", "--eval", code],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


@pytest.mark.slow
@pytest.mark.skipif(OCTAVE is None, reason="GNU Octave is not installed (apt-get install octave; .ci/run installs it)")
def test_octave_client_answers_a_real_run(tmp_path):
    rig, run = tmp_path / "rig", tmp_path / "run"
    (rig / "outbox").mkdir(parents=True)
    (rig / "inbox").mkdir()
    client = octave_client(rig, gain=GAIN, idle_exit=120, poll_s=0.02)
    args = ["experiment=rig", f"target.rig_dir={rig}", "target.timeout_s=60", "target.presentations=2",
            "generator=pixels", "generator.size=16", "generator.resolution=4", "optimizer=random",
            "budget=12", "batch_size=4", "logger=none", f"hydra.run.dir={run}"]
    try:
        done = run_cli(args, cwd=tmp_path, env=cli_env(OMP_NUM_THREADS="1"), timeout=300)
        assert "best response" in done.stdout
    finally:
        (rig / "STOP").touch()
        try:
            out = client.communicate(timeout=60)[0]
        except subprocess.TimeoutExpired:
            client.kill()
            out = client.communicate()[0]
    assert "presented 3" in out, out
    store = RunStore(run / "evaluations.sqlite")
    assert store.n_evaluations() == 12 and store.meta("status") == "finished"
    responses = store.responses()
    store.close()
    # the fake neuron, computed here from the published PNGs: mean intensity x gain
    expected = [np.asarray(Image.open(rig / "outbox" / f"gen_{g:06d}" / f"img_{i:04d}.png").convert("RGB"), float).mean() * GAIN
                for g in range(3) for i in range(4)]
    np.testing.assert_allclose(responses, expected, rtol=1e-9)
    for g in range(3):  # every trial line, both repeats, and the done line; all used
        lines = [json.loads(x) for x in (rig / "inbox" / f"gen_{g:06d}.jsonl").read_text().splitlines()]
        assert sorted((r["index"], r["repeat"]) for r in lines[:-1]) == [(i, p) for i in range(4) for p in range(2)]
        assert lines[-1] == {"generation": g, "done": True}
    log = [json.loads(x) for x in (rig / "log.jsonl").read_text().splitlines()]
    assert [e["trials"] for e in log] == [8, 8, 8] and all(e["done_line"] for e in log)
    assert not (rig / "rejected.jsonl").exists()
    assert len((rig / "client_presented.txt").read_text().splitlines()) == 3  # each generation presented once
