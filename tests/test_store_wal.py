"""The run store's WAL: checkpoints deferred (fewer copies into the database file), and a killed process
still keeps every committed generation."""
import os
import signal
import subprocess
import sys
import textwrap

import numpy as np

from stimopt.store import WAL_CHECKPOINT_PAGES, RunStore


def test_store_defers_wal_checkpoints(tmp_path):
    store = RunStore(tmp_path / "evaluations.sqlite")
    assert store.db.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == WAL_CHECKPOINT_PAGES > 1000
    store.close()


def test_killed_writer_keeps_every_committed_generation_in_the_wal(tmp_path):
    """30 generations of 1,728-dim codes (more WAL pages than SQLite's default checkpoint), then SIGKILL:
    no close, no checkpoint; reopening reads them all from the WAL, and the checkpoint of the last."""
    path = tmp_path / "evaluations.sqlite"
    code = textwrap.dedent(f"""
        import os, signal, numpy as np
        from stimopt.store import RunStore
        store = RunStore({str(path)!r})
        rng = np.random.default_rng(0)
        for g in range(30):
            codes = rng.standard_normal((20, 1728)).astype(np.float32)
            r = rng.standard_normal(20)
            store.append_generation(g, codes, r, r, None, None, 20 * (g + 1), 0.0, {{"generation": g, "codes_sum": float(codes.sum())}})
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    proc = subprocess.run([sys.executable, "-c", code], timeout=60, capture_output=True)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()
    wal = path.with_name(path.name + "-wal")
    assert wal.exists() and wal.stat().st_size > 1000 * 4096  # nothing was copied into the database file
    store = RunStore(path)
    rng = np.random.default_rng(0)
    expected = []
    for _ in range(30):  # the writer's draws, in its order
        expected.append(rng.standard_normal((20, 1728)).astype(np.float32))
        rng.standard_normal(20)
    assert store.n_evaluations() == 600 and [g["generation"] for g in store.generations()] == list(range(30))
    assert np.array_equal(store.codes(), np.concatenate(expected))
    gen, state = store.checkpoint()
    assert gen == 29 and state["codes_sum"] == float(expected[-1].sum())
    store.close()
    assert not wal.exists() or wal.stat().st_size == 0  # closing copied the WAL in


def test_full_fsyncs_each_commit_before_the_next_stimuli_and_the_next_write(tmp_path, monkeypatch):
    """FULL: the WAL is fsynced after every generation's commit, off the loop; sync() (called by the engine
    before the target sees the next stimuli), the next commit and close wait for it. NORMAL never fsyncs."""
    import threading
    import time

    synced, gate = [], threading.Event()
    real_fsync = os.fsync

    def slow_fsync(fd):
        gate.wait(5)
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", slow_fsync)
    store = RunStore(tmp_path / "evaluations.sqlite")
    assert store.db.execute("PRAGMA synchronous").fetchone()[0] == 1  # SQLite's NORMAL: the fsync is ours
    r = np.zeros(4)
    t0 = time.perf_counter()
    store.append_generation(0, np.zeros((4, 3), np.float32), r, r, None, None, 4, 0.0, {"g": 0})
    assert time.perf_counter() - t0 < 1.0 and synced == []  # the commit returned without waiting for the disk
    waiter = threading.Thread(target=store.sync)
    waiter.start()
    time.sleep(0.2)
    assert waiter.is_alive()  # sync() waits for the fsync ...
    gate.set()
    waiter.join(5)
    assert not waiter.is_alive() and synced == [str(tmp_path / "evaluations.sqlite-wal")]  # ... of the WAL
    store.append_generation(1, np.zeros((4, 3), np.float32), r, r, None, None, 8, 0.0, {"g": 1})
    store.close()  # waits for the second generation's fsync
    assert len(synced) == 2

    synced.clear()
    store = RunStore(tmp_path / "normal.sqlite", synchronous="NORMAL")
    store.append_generation(0, np.zeros((4, 3), np.float32), r, r, None, None, 4, 0.0, {"g": 0})
    store.sync()
    store.close()
    assert synced == []


def test_a_failed_fsync_is_one_line_and_keeps_the_committed_rows(tmp_path, monkeypatch):
    import pytest

    from stimopt.errors import StimoptError

    def failing(fd):
        raise OSError(28, "No space left on device")

    store = RunStore(tmp_path / "evaluations.sqlite")
    r = np.zeros(2)
    monkeypatch.setattr(os, "fsync", failing)
    store.append_generation(0, np.zeros((2, 3), np.float32), r, r, None, None, 2, 0.0, {"g": 0})
    with pytest.raises(StimoptError, match="could not write the run store .* No space left on device.*resume"):
        store.sync()
    monkeypatch.undo()
    store.close()
    assert RunStore(tmp_path / "evaluations.sqlite").n_evaluations() == 2


def test_a_failed_transaction_is_one_line_and_keeps_the_generations_before_it(tmp_path):
    """SQLite refusing a generation's transaction (a full disk) is one StimoptError naming the generation
    (not a traceback); the transaction is rolled back and the generation before it stays in the file."""
    import sqlite3

    import pytest

    from stimopt.errors import StimoptError

    class FullDisk:  # the store's connection, refusing the evaluations' insert
        def __init__(self, db):
            self.db = db

        def __enter__(self):
            return self.db.__enter__()

        def __exit__(self, *exc):
            return self.db.__exit__(*exc)

        def execute(self, *a):
            return self.db.execute(*a)

        def executemany(self, *a):
            raise sqlite3.OperationalError("database or disk is full")

    path = tmp_path / "evaluations.sqlite"
    store = RunStore(path)
    r = np.ones(2)
    store.append_generation(0, np.zeros((2, 3), np.float32), r, r, None, None, 2, 0.0, {"g": 0})
    store.sync()
    real, store.db = store.db, FullDisk(store.db)
    with pytest.raises(StimoptError, match=r"could not write generation 1 to the run store .*database or disk is full.*"
                                           r"generations before it are in it.*resume"):
        store.append_generation(1, np.zeros((2, 3), np.float32), r, r, None, None, 4, 0.0, {"g": 1})
    store.db = real
    store.close()
    again = RunStore(path)
    assert again.n_evaluations() == 2 and again.checkpoint() == (0, {"g": 0})
    again.close()


def test_the_engine_shows_no_stimulus_before_the_last_generation_is_on_disk(tmp_path, monkeypatch):
    """Run with FULL: when the target is handed generation g, the WAL has been fsynced after each of the
    g earlier commits (the engine waits in store.sync before evaluate)."""
    import time

    import torch

    import stimopt
    from stimopt.engine import Run
    from stimopt.objective import Objective
    from stimopt_plugins.random_search import RandomSearch

    fsyncs = []
    real_fsync = os.fsync
    def slow_fsync(fd):  # a slow disk: the fsync is still running when the next generation is ready
        time.sleep(0.05)
        real_fsync(fd)
        fsyncs.append(fd)

    monkeypatch.setattr(os, "fsync", slow_fsync)

    class Gen(stimopt.Generator):
        space = stimopt.ContinuousSpace(dim=3)

        def generate(self, codes):
            return torch.as_tensor(np.asarray(codes), dtype=torch.float32).reshape(-1, 3, 1, 1)

    seen = []

    class Tgt(stimopt.Target):
        def evaluate(self, images):
            seen.append(len(fsyncs))
            return images.reshape(len(images), -1).sum(1)

    opt = RandomSearch()
    opt.setup(Gen.space, seed=0, budget=20, batch_size=4)
    run = Run(target=Tgt(), generator=Gen(), optimizer=opt, objective=Objective("max"),
              store=RunStore(tmp_path / "evaluations.sqlite"), budget=20, batch_size=4, run_dir=tmp_path)
    run.run()
    run.store.close()
    assert seen == [0, 1, 2, 3, 4] and len(fsyncs) == 5
