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
