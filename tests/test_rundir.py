"""The run directory: one process at a time, a record that never changes, report files that are
never left half-written, and checks that run before the first stimulus is shown."""
from __future__ import annotations

import errno
import json
import os
import sqlite3

import pytest

from stimopt.errors import StimoptError
from stimopt.rundir import RunLock, write_atomic

from conftest import FAST, run_cli

ARGS = [*FAST, "budget=20", "optimizer=random"]


def _record(run_dir):
    return {n: (run_dir / ".hydra" / n).read_text() for n in ("config.yaml", "overrides.yaml", "hydra.yaml")}


def test_second_process_is_refused_naming_the_holder(tmp_path):
    (tmp_path / "r").mkdir()
    lock = RunLock(tmp_path / "r")
    try:
        proc = run_cli([*ARGS, "hydra.run.dir=r"], tmp_path, check=False)
    finally:
        lock.release()
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("stimopt: error:")]
    assert proc.returncode == 2 and len(errors) == 1 and f"pid {os.getpid()}" in errors[0], proc.stderr
    assert not (tmp_path / "r" / "evaluations.sqlite").exists()
    run_cli([*ARGS, "hydra.run.dir=r"], tmp_path)  # released: the run goes ahead


def test_refused_and_resumed_invocations_never_change_the_record(tmp_path):
    run_cli([*ARGS, "seed=1", "hydra.run.dir=r"], tmp_path)
    run_dir = tmp_path / "r"
    first = _record(run_dir)
    refused = [
        [*ARGS, "seed=1", "hydra.run.dir=r"],                    # no resume=true
        [*ARGS, "seed=2", "hydra.run.dir=r", "resume=true"],     # a changed config
    ]
    for args in refused:
        proc = run_cli(args, tmp_path, check=False)
        assert proc.returncode == 2, proc.stderr
        assert _record(run_dir) == first
    lock = RunLock(run_dir)                                       # a second process on the run dir
    try:
        proc = run_cli([*ARGS, "seed=1", "hydra.run.dir=r", "resume=true"], tmp_path, check=False)
    finally:
        lock.release()
    assert proc.returncode == 2 and "in use by another stimopt process" in proc.stderr
    assert _record(run_dir) == first
    run_cli([*ARGS, "seed=1", "budget=40", "hydra.run.dir=r", "resume=true"], tmp_path)  # a resume
    assert _record(run_dir) == first
    kept = sorted((run_dir / ".hydra" / "invocations").iterdir())
    assert len(kept) >= 3 and any("budget=40" in (k / "overrides.yaml").read_text() for k in kept)


def test_write_atomic_on_a_full_disk_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "summary.json"
    path.write_text('{"old": 1}\n')

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(OSError):
        write_atomic(path, '{"new": 2}\n')
    assert path.read_text() == '{"old": 1}\n' and [p.name for p in tmp_path.iterdir()] == ["summary.json"]


def test_summary_that_cannot_be_written_is_one_line_and_loses_nothing(tmp_path, compose, monkeypatch, capsys):
    from stimopt import report
    from stimopt.experiment import run_experiment

    def full(path, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(report, "write_atomic", full)
    summary = run_experiment(compose([*ARGS, "budget=40"]), tmp_path / "r", observers=[])
    warn = [ln for ln in capsys.readouterr().err.splitlines() if "could not write the report" in ln]
    assert len(warn) == 1 and "No space left" in warn[0] and summary["n_evaluations"] == 40
    db = sqlite3.connect(tmp_path / "r" / "evaluations.sqlite")
    assert db.execute("SELECT COUNT(*) FROM evaluations").fetchone()[0] == 40
    assert json.loads(db.execute("SELECT value FROM meta WHERE key='status'").fetchone()[0]) == "finished"


PREFLIGHT = [
    (["objective=contrast", "objective.maximize=[0]", "objective.suppress=[3]"], "reads output 3"),
    (["reference.kind=bogus"], "reference.kind must be"),
]


@pytest.mark.parametrize("overrides,message", PREFLIGHT)
def test_preflight_fails_before_the_target_sees_anything(tmp_path, compose, monkeypatch, overrides, message):
    from stimopt.experiment import resolve_class, run_experiment

    cfg = compose([*ARGS, *overrides])
    calls = []
    cls = resolve_class("target", cfg.target)
    monkeypatch.setattr(cls, "evaluate", lambda self, images: calls.append(len(images)))
    with pytest.raises(StimoptError) as err:
        run_experiment(cfg, tmp_path / "r", observers=[])
    assert message in str(err.value) and "\n" not in str(err.value)
    assert calls == [] and not (tmp_path / "r" / "evaluations.sqlite").exists()


def test_preflight_refuses_a_negative_rig_poll(tmp_path, compose):
    from stimopt.experiment import run_experiment

    cfg = compose(["logger=none", "target=rig", f"target.rig_dir={tmp_path / 'rig'}", "target.poll_s=-1",
                   "target.timeout_s=600", "generator.size=32", "budget=20", "optimizer=random"])
    with pytest.raises(StimoptError) as err:
        run_experiment(cfg, tmp_path / "r", observers=[])
    assert "poll_s" in str(err.value)
    assert not list((tmp_path / "rig").glob("outbox/gen_*"))  # nothing was published to the lab


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_preflight_refuses_a_read_only_run_dir(tmp_path, compose):
    from stimopt.experiment import run_experiment

    (tmp_path / "r").mkdir()
    os.chmod(tmp_path / "r", 0o555)
    try:
        with pytest.raises(StimoptError) as err:
            run_experiment(compose(ARGS), tmp_path / "r", observers=[])
    finally:
        os.chmod(tmp_path / "r", 0o755)
    assert "writable" in str(err.value)
