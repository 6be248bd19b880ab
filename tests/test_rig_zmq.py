"""target=rig target.transport=zmq: the manifest and the trial lines as ZeroMQ messages, on
127.0.0.1 only, with the file protocol's guarantees (NaN for missing trials, duplicates and stale
generations ignored, timeouts, resume without re-presenting)."""
from __future__ import annotations

import json
import socket
import subprocess
import threading
import time

import numpy as np
import pytest

from conftest import BIN, cli_env, run_cli, stop_sim
from stimopt.errors import StimoptError
from stimopt.store import RunStore
from stimopt_plugins.rig import RigTarget
from stimopt_plugins.rig.sim import LabSim
from test_rig import images, inbox_means

zmq = pytest.importorskip("zmq")


def free_endpoint() -> str:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return f"tcp://127.0.0.1:{s.getsockname()[1]}"


def lab_zmq_thread(sim, endpoint, n_generations=1, idle=15.0):
    from stimopt_plugins.rig.simzmq import serve_zmq

    t = threading.Thread(target=serve_zmq, args=(sim, endpoint, idle, n_generations, 0.01), daemon=True)
    t.start()
    return t


def test_zmq_round_trip_with_faults_and_resume(tmp_path):
    ep = free_endpoint()
    sim = LabSim(tmp_path, weights="random", input_size=16, drop=0.3, duplicate=0.2, old_lines={0}, reorder=True, seed=3)
    lab = lab_zmq_thread(sim, ep, n_generations=2, idle=2.0)
    target = RigTarget(tmp_path, timeout_s=10, presentations=2, poll_s=0.01, transport="zmq", endpoint=ep)
    x = images(8)
    r = target.evaluate(x)
    journal = tmp_path / "inbox" / "gen_000000.jsonl"
    assert journal.exists() and target.last["transport"] == "zmq" and target.last["done_line"]
    expected = inbox_means(tmp_path, 0, 8)[:, 0]
    np.testing.assert_allclose(r, expected)  # the mean of the distinct trials; NaN where all were dropped
    st = target.last
    assert st["other_generation"] == 8 and st["duplicates"] > 0 and not st["timed_out"]
    # resume after a kill that lost the messages not yet journalled (the journal cut to 12 lines): a
    # fresh target at generation 0 with the same images is not published again, the lab replays its
    # lines instead of presenting again; the ones already journalled are duplicates, the result the same
    lines_before = 12
    journal.write_text("".join(journal.read_text().splitlines(keepends=True)[:lines_before]))
    again = RigTarget(tmp_path, timeout_s=10, presentations=2, poll_s=0.01, transport="zmq", endpoint=ep)
    r2 = again.evaluate(x)
    lab.join(10)
    assert not again.last["published"]
    np.testing.assert_allclose(r2, expected)
    assert len(journal.read_text().splitlines()) > lines_before
    presented = (tmp_path / "sim_presented.jsonl").read_text().splitlines()
    assert len(presented) == 1  # shown once
    target.close()
    again.close()


def test_zmq_nobody_listening_times_out_with_nan(tmp_path):
    target = RigTarget(tmp_path, timeout_s=0.3, poll_s=0.05, transport="zmq", endpoint=free_endpoint())
    t0 = time.monotonic()
    r = target.evaluate(images(3))
    assert time.monotonic() - t0 < 3 and np.isnan(r).all() and target.last["timed_out"]
    assert (tmp_path / "outbox" / "gen_000000" / "manifest.json").exists()  # images still in the shared folder
    target.close()


def test_zmq_message_with_newlines_is_one_malformed_line(tmp_path):
    ep = free_endpoint()
    ctx = zmq.Context.instance()
    router = ctx.socket(zmq.ROUTER)
    router.setsockopt(zmq.LINGER, 0)
    router.bind(ep)
    target = RigTarget(tmp_path, timeout_s=5, poll_s=0.01, transport="zmq", endpoint=ep)

    def lab():
        if router.poll(5000):
            ident, manifest = router.recv_multipart()
            g = json.loads(manifest)["generation"]
            for msg in [b'{"generation": 0, "index": 0, "count": 1}\n{"generation": 0, "index": 1, "count": 9}',
                        b'{"generation": 0, "index": 1, "count": 4}', json.dumps({"generation": g, "done": True}).encode()]:
                router.send_multipart([ident, msg])

    t = threading.Thread(target=lab, daemon=True)
    t.start()
    r = target.evaluate(images(2))
    t.join(5)
    router.close()
    target.close()
    assert np.isnan(r[0]) and r[1] == 4 and target.last["malformed"] == 1


@pytest.mark.parametrize("endpoint", [None, "127.0.0.1:5555", "tcp://127.0.0.1", "tcp://a b:1"])
def test_zmq_bad_endpoint_is_one_line(tmp_path, endpoint):
    with pytest.raises(StimoptError, match="target.endpoint"):
        RigTarget(tmp_path, transport="zmq", endpoint=endpoint)
    with pytest.raises(StimoptError, match="transport"):
        RigTarget(tmp_path, transport="carrier-pigeon")


@pytest.mark.slow
def test_zmq_end_to_end_real_processes(tmp_path):
    rig, run, ep = tmp_path / "rig", tmp_path / "run", free_endpoint()
    env = cli_env(OMP_NUM_THREADS="1")
    sim = subprocess.Popen([str(BIN / "stimopt-rig-sim"), str(rig), "--input-size", "16", "--drop", "0.2", "--reorder",
                            "--transport", "zmq", "--endpoint", ep, "--idle-exit", "120"],
                           env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    args = ["experiment=rig", f"target.rig_dir={rig}", "target.timeout_s=60", "target.presentations=2",
            "target.transport=zmq", f"target.endpoint={ep}", "generator=pixels", "generator.size=16",
            "generator.resolution=4", "optimizer=random", "budget=24", "batch_size=8", "logger=none", f"hydra.run.dir={run}"]
    try:
        done = run_cli(args, cwd=tmp_path, env=env, timeout=300)
        assert "best response" in done.stdout
    finally:
        stop_sim(rig, sim)
    store = RunStore(run / "evaluations.sqlite")
    assert store.n_evaluations() == 24 and store.meta("status") == "finished"
    responses = store.responses()
    store.close()
    presented = [json.loads(x) for x in (rig / "sim_presented.jsonl").read_text().splitlines()]
    assert sorted(p["generation"] for p in presented) == [0, 1, 2]
    expected = np.concatenate([inbox_means(rig, g, 8)[:, 0] for g in range(3)])
    np.testing.assert_allclose(responses, expected)  # every answer received is in the run
