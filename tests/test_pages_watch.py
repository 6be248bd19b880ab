"""stimopt-watch: the live page follows a store that another process is writing, in headless
Chromium; it survives the writer being killed (SIGKILL) and resumed; it only ever reads."""
from __future__ import annotations

import json
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import urllib.request
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from conftest import BIN, cli_env, sigint_default
from pages_browser import browser, images_loaded, open_page, screenshot, wait_for  # noqa: F401 (fixture)

# A stand-in for a running session: it appends a generation every DELAY seconds to the run store,
# the way the engine does (RunStore.append_generation), continuing after what is there (resume).
WRITER = r"""
import sys, time
import numpy as np
from stimopt.store import RunStore
path, dim, delay = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
store = RunStore(path)
gen = len(store.generations())
n = store.n_evaluations()
rng = np.random.default_rng(gen)
while True:
    codes = rng.normal(0, 0.5, (20, dim)).astype(np.float32)
    resp = rng.normal(gen * 0.1, 1.0, 20)
    if gen == 2:
        resp[:3] = np.nan  # three missing trials
    score = np.where(np.isfinite(resp), resp, np.nan)
    n += 20
    store.append_generation(gen, codes, resp, score, None, None, n, 0.05 + 0.01 * gen, {"generation": gen})
    print(gen, flush=True)
    gen += 1
    time.sleep(delay)
"""


@pytest.fixture
def session(tmp_path, compose):
    """A run directory whose store holds a real config (so the watcher can rebuild the generator)."""
    from stimopt.experiment import build
    from stimopt.store import RunStore

    cfg = compose(["generator=fourier", "generator.size=32", "optimizer=random", "logger=none"])
    generator = build("generator", cfg.generator, device="cpu")
    run_dir = tmp_path / "session"
    store = RunStore(run_dir / "evaluations.sqlite")
    store.set_meta(config=OmegaConf.to_container(cfg, resolve=True), config_hash="test", status="running")
    store.close()
    return run_dir, int(generator.space.dim)


def start_writer(run_dir: Path, dim: int, delay: float = 0.4) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", WRITER, str(run_dir / "evaluations.sqlite"), str(dim), str(delay)],
                            stdout=subprocess.PIPE, text=True, env=cli_env())


def stored(run_dir: Path) -> tuple[int, float]:
    db = sqlite3.connect(f"{(run_dir / 'evaluations.sqlite').as_uri()}?mode=ro", uri=True)
    n, best = db.execute("SELECT COUNT(*), MAX(response) FROM evaluations").fetchone()
    db.close()
    return n, best


@pytest.fixture
def server(session):
    from stimopt.watch import make_server

    srv = make_server(session[0], 0, interval_s=0.3)
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def shown(driver, key: str):
    text = driver.find_element("id", key).text
    try:
        return float(text)
    except ValueError:
        return None


def test_live_page_follows_a_run_that_is_killed_and_resumed(browser, session, server):
    run_dir, dim = session
    host, port = server.server_address
    assert host == "127.0.0.1"
    writer = start_writer(run_dir, dim)
    try:
        open_page(browser, f"http://127.0.0.1:{port}/")
        first = wait_for(lambda: shown(browser, "n_evaluations"), message="the first generation on the page")
        wait_for(lambda: (shown(browser, "n_evaluations") or 0) > first, message="the page to update while the run writes")
        wait_for(lambda: (shown(browser, "n_missing") or 0) >= 3, message="the missing trials of generation 2")
        wait_for(lambda: (imgs := images_loaded(browser, "#best img")) and len(imgs) == 8 and all(i["ok"] for i in imgs),
                 timeout=60, message="the best stimuli to load")
        assert browser.find_elements("css selector", "#missing svg rect")
        assert browser.find_elements("css selector", "#trajectory svg path")
        assert writer.poll() is None  # the writer never failed (no lock) while the page read along
    finally:
        writer.send_signal(signal.SIGKILL)
        writer.wait(10)
    n, best = stored(run_dir)
    wait_for(lambda: shown(browser, "n_evaluations") == n, message=f"the page to show the {n} committed evaluations")
    assert shown(browser, "best_response") == pytest.approx(best, rel=1e-5)
    assert browser.find_element("id", "status").text == "run running"
    screenshot(browser, "reports_watch")

    resumed = start_writer(run_dir, dim)  # the run resumed: the page goes on without a reload
    try:
        wait_for(lambda: (shown(browser, "n_evaluations") or 0) > n, message="the resumed run on the page")
    finally:
        resumed.send_signal(signal.SIGKILL)
        resumed.wait(10)


def test_watch_reads_only(session, server):
    from stimopt import run_reader

    run_dir, dim = session
    db = run_reader.connect(run_dir)
    with pytest.raises(sqlite3.OperationalError):
        db.execute("INSERT INTO meta VALUES ('x', '1')")
    db.close()
    state = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{server.server_address[1]}/state.json", timeout=10).read())
    assert state["status"] == "running" and state["n_evaluations"] == 0 and state["generations"] == []


def run_watch(args, timeout=30):
    return subprocess.run([str(BIN / "stimopt-watch"), *args], capture_output=True, text=True, timeout=timeout, env=cli_env())


def test_watch_command_serves_on_localhost_and_waits_for_the_run(tmp_path):
    proc = subprocess.Popen([str(BIN / "stimopt-watch"), str(tmp_path / "later"), "--port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=cli_env(), preexec_fn=sigint_default)
    try:
        line = proc.stdout.readline()
        assert "http://127.0.0.1:" in line, line + proc.stderr.read()
        url = line.split("at ", 1)[1].split()[0]
        state = json.loads(urllib.request.urlopen(url + "state.json", timeout=10).read())
        assert state["status"] == "waiting" and "does not exist yet" in state["message"]
        assert b"stimopt live" in urllib.request.urlopen(url, timeout=10).read()
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(10)


def test_watch_command_bad_input_is_one_line(tmp_path):
    assert run_watch([str(tmp_path)]).returncode == 2  # no --port: nothing listens unless asked
    (tmp_path / "a_file").write_text("x")
    (tmp_path / "sweep" / "0" / ".hydra").mkdir(parents=True)
    (tmp_path / "sweep" / "0" / ".hydra" / "overrides.yaml").write_text("[]\n")
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    try:
        for args, message in [
            ([str(tmp_path / "a_file"), "--port", "0"], "is not a run directory"),
            ([str(tmp_path / "sweep"), "--port", "0"], "is a sweep directory; watch one of its jobs"),
            ([str(tmp_path), "--port", "70000"], "--port must be between 0 and 65535"),
            ([str(tmp_path), "--port", str(busy.getsockname()[1])], "choose another --port"),
        ]:
            proc = run_watch(args)
            lines = proc.stderr.strip().splitlines()
            assert proc.returncode == 2 and len(lines) == 1 and message in lines[0], (args, proc.stderr)
    finally:
        busy.close()
