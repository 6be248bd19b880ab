"""SIGTERM (SLURM, systemd) and SIGINT end a real `stimopt` process cleanly: status interrupted,
summary.json written, one line on stderr, exit code 128 + signal, and resume=true ends where the
uninterrupted run ends."""
from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import time

import numpy as np
import pytest

from conftest import BIN, FAST, cli_env, run_cli, sigint_default

ARGS = [*FAST, "budget=400", "batch_size=10", "seed=2"]  # the default optimizer: cmaes (nevergrad)


def _responses(db) -> np.ndarray:
    con = sqlite3.connect(db)
    try:
        return np.array([r[0] for r in con.execute("SELECT response FROM evaluations ORDER BY id").fetchall()])
    finally:
        con.close()


def _signal_after_first_generation(tmp_path, name: str, sig: int) -> subprocess.CompletedProcess:
    proc = subprocess.Popen([str(BIN / "stimopt"), *ARGS, f"hydra.run.dir={name}"], cwd=tmp_path, env=cli_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    db, deadline = tmp_path / name / "evaluations.sqlite", time.time() + 180
    while time.time() < deadline and proc.poll() is None:
        try:
            if db.exists() and len(_responses(db)) >= 10:
                break
        except sqlite3.OperationalError:
            pass
        time.sleep(0.01)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=120)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_ends_the_run_cleanly_and_resume_equals_uninterrupted(tmp_path, sig):
    run_cli([*ARGS, "hydra.run.dir=full"], tmp_path)
    done = _signal_after_first_generation(tmp_path, "cut", sig)
    assert done.returncode == 128 + sig, done.stderr
    assert "Traceback" not in done.stderr and "KeyboardInterrupt" not in done.stderr, done.stderr
    lines = [ln for ln in done.stderr.splitlines() if "interrupted by" in ln]
    assert len(lines) == 1 and signal.Signals(sig).name in lines[0] and "resume=" in lines[0]
    summary = json.loads((tmp_path / "cut" / "summary.json").read_text())
    committed = _responses(tmp_path / "cut" / "evaluations.sqlite")
    assert summary["status"] == "interrupted" and summary["n_evaluations"] == len(committed)
    assert 10 <= len(committed) < 400 and len(committed) % 10 == 0
    status = sqlite3.connect(tmp_path / "cut" / "evaluations.sqlite").execute(
        "SELECT value FROM meta WHERE key='status'").fetchone()[0]
    assert json.loads(status) == "interrupted"
    run_cli([*ARGS, "hydra.run.dir=cut", "resume=true"], tmp_path)
    resumed = _responses(tmp_path / "cut" / "evaluations.sqlite")
    np.testing.assert_array_equal(resumed[: len(committed)], committed)
    np.testing.assert_array_equal(resumed, _responses(tmp_path / "full" / "evaluations.sqlite"))
    assert json.loads((tmp_path / "cut" / "summary.json").read_text())["status"] == "finished"


def test_ctrl_c_while_starting_is_one_line_and_records_nothing(tmp_path):
    """Ctrl-C during start-up (plugins, torch and Hydra loading; ~3 s here) ends without a traceback."""
    proc = subprocess.Popen([str(BIN / "stimopt"), *ARGS, "hydra.run.dir=early"], cwd=tmp_path, env=cli_env(), preexec_fn=sigint_default,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(1.5)  # past the interpreter's own start (0.2 s to import stimopt.cli), before the run
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert "interrupted" in err
    assert not (tmp_path / "early" / "evaluations.sqlite").exists()


def test_ctrl_c_while_starting_is_not_lost_when_an_import_swallows_it(monkeypatch, capsys):
    """A library that catches every error around its own imports would swallow the KeyboardInterrupt of a
    Ctrl-C during start-up and the run would go on; the start-up only notes it and stops before the task."""
    import os

    import stimopt.config
    from stimopt.interrupt import run_app_interruptible

    ran = []

    def run_app(program, config_name, task):
        try:  # e.g. `try: import optional_dependency` / `except: pass` inside a third-party package
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.1)
        except BaseException:  # noqa: BLE001 - what such a library does
            pass
        task({})

    monkeypatch.setattr(stimopt.config, "run_app", run_app)
    inherited = signal.signal(signal.SIGINT, signal.default_int_handler)  # Ctrl-C raises, as in a terminal
    try:
        with pytest.raises(SystemExit) as exc:
            run_app_interruptible("stimopt", "config", lambda cfg: ran.append(cfg))
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # put back as it was
    finally:
        signal.signal(signal.SIGINT, inherited)
    assert exc.value.code == 130 and ran == []
    assert capsys.readouterr().err.strip() == "stimopt: interrupted while starting; nothing was run or recorded"
