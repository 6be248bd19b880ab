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
