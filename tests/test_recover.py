"""A truncated store: resuming it is one line naming stimopt-recover, which salvages the whole
generations into a new store that resumes."""
from __future__ import annotations

import json
import os
import sqlite3

import numpy as np

from conftest import FAST, run_cli

ARGS = [*FAST, "budget=200", "batch_size=10", "seed=4", "optimizer=random"]


def test_truncated_store_is_one_line_and_recover_salvages_it(tmp_path):
    run_cli([*ARGS, "hydra.run.dir=r"], tmp_path)
    db = tmp_path / "r" / "evaluations.sqlite"
    full = [r[0] for r in sqlite3.connect(db).execute("SELECT response FROM evaluations ORDER BY id")]
    size = db.stat().st_size
    with open(db, "r+b") as f:
        f.truncate(size // 2)  # mid-file: every page after it is gone
    (tmp_path / "r" / "summary.json").unlink()
    bad = run_cli([*ARGS, "hydra.run.dir=r", "resume=true"], tmp_path, check=False)
    errors = [ln for ln in bad.stderr.splitlines() if ln.startswith("stimopt: error:")]
    assert bad.returncode == 2 and "Traceback" not in bad.stderr, bad.stderr
    assert len(errors) == 1 and "stimopt-recover" in errors[0]
    proc = run_cli([str(tmp_path / "r"), str(tmp_path / "saved")], tmp_path, program="stimopt-recover")
    saved = [r[0] for r in sqlite3.connect(tmp_path / "saved" / "evaluations.sqlite").execute(
        "SELECT response FROM evaluations ORDER BY id")]
    assert f"saved {len(saved)} evaluations" in proc.stdout
    assert 0 < len(saved) <= len(full) and len(saved) % 10 == 0
    assert saved == full[: len(saved)] or set(saved) <= set(full)
    assert (tmp_path / "saved" / ".hydra" / "config.yaml").exists()


def test_recover_of_an_intact_store_keeps_everything_and_resumes(tmp_path):
    run_cli([*ARGS, "budget=100", "hydra.run.dir=r"], tmp_path)
    proc = run_cli([str(tmp_path / "r"), str(tmp_path / "saved")], tmp_path, program="stimopt-recover")
    assert "saved 100 evaluations in 10 whole generations" in proc.stdout and "resume it" in proc.stdout
    run_cli([*ARGS, "budget=200", f"resume={tmp_path / 'saved'}"], tmp_path)
    n = sqlite3.connect(tmp_path / "saved" / "evaluations.sqlite").execute("SELECT COUNT(*) FROM evaluations").fetchone()[0]
    assert n == 200
    again = run_cli([str(tmp_path / "r"), str(tmp_path / "saved")], tmp_path, program="stimopt-recover", check=False)
    assert again.returncode == 2 and "already exists" in again.stderr


def test_recover_keeps_references_and_trials_and_reads_a_store_older_than_them(tmp_path):
    from stimopt.recover import recover
    from stimopt.store import RunStore

    store = RunStore(tmp_path / "r" / "evaluations.sqlite")
    ref = {"kind": "reference", "code": None, "response": 3.0, "score": 3.0, "outputs": None, "info": {"ref": 0},
           "trials": [{"baseline": [1]}]}
    for g in range(2):
        store.append_generation(g, np.zeros((2, 3), np.float32), np.array([1.0, 2.0]), np.array([1.0, 2.0]), None, None,
                     n_evaluations=2 * (g + 1), wall_s=0.1, checkpoint={"g": g}, trials=[None, {"window": [2]}],
                     extras=[ref])
    store.close()
    report = recover(tmp_path / "r", tmp_path / "saved")
    assert report["evaluations"] == 6 and report["generations"] == 2  # references do not make a generation "partial"
    db = sqlite3.connect(tmp_path / "saved" / "evaluations.sqlite")
    kinds = db.execute("SELECT generation, position, kind, trials FROM evaluations ORDER BY id").fetchall()
    assert [k[2] for k in kinds] == [None, None, "reference"] * 2
    assert json.loads(kinds[1][3]) == {"window": [2]} and json.loads(kinds[2][3]) == [{"baseline": [1]}]
    db.close()
    # a store written before the kind/trials columns existed recovers with them NULL
    old = sqlite3.connect(tmp_path / "old.sqlite")
    old.executescript("""CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT);
        CREATE TABLE evaluations (id INTEGER PRIMARY KEY, generation INTEGER NOT NULL, position INTEGER NOT NULL,
            response REAL, score REAL, outputs BLOB, code BLOB, bank_index INTEGER, info TEXT);
        CREATE TABLE generations (generation INTEGER PRIMARY KEY, n INTEGER NOT NULL, n_missing INTEGER NOT NULL,
            best_response REAL, mean_response REAL, n_evaluations INTEGER NOT NULL, wall_s REAL);
        CREATE TABLE checkpoint (id INTEGER PRIMARY KEY CHECK (id = 0), generation INTEGER, state BLOB);
        INSERT INTO evaluations VALUES (1, 0, 0, 1.0, 1.0, NULL, NULL, 5, NULL);
        INSERT INTO generations VALUES (0, 1, 0, 1.0, 1.0, 1, 0.1);""")
    old.commit()
    old.close()
    assert recover(tmp_path / "old.sqlite", tmp_path / "saved_old")["evaluations"] == 1
    row = sqlite3.connect(tmp_path / "saved_old" / "evaluations.sqlite").execute(
        "SELECT bank_index, kind, trials FROM evaluations").fetchone()
    assert row == (5, None, None)


def test_probe_counts_the_optimizers_stimuli_not_reference_rows(tmp_path):
    from stimopt.store import RunStore, probe

    store = RunStore(tmp_path / "evaluations.sqlite")
    ref = {"kind": "reference", "code": None, "response": 3.0, "score": 3.0, "outputs": None, "info": None}
    for g in range(3):
        store.append_generation(g, np.zeros((2, 3), np.float32), np.array([1.0, 2.0]), np.array([1.0, 2.0]), None,
                                None, n_evaluations=2 * (g + 1), wall_s=0.1, checkpoint={}, extras=[ref, ref])
    store.close()
    assert probe(tmp_path / "evaluations.sqlite")["n_evaluations"] == 6  # 12 rows, 6 of them references
