"""The run store: one SQLite file (WAL) per run, ``evaluations.sqlite``.

Each generation (its evaluations, its summary row and the engine checkpoint) is committed in one
transaction before the next ask, so a killed process loses at most the generation in flight.

Durability (``synchronous``): ``NORMAL`` is SQLite's: a commit is in the WAL (the OS has it) when
:meth:`RunStore.append_generation` returns, which survives a killed process, not a power cut.
``FULL`` (the default) adds an fsync of the WAL after every commit. It runs in the store's one
fsync thread (started once, not per generation) while the engine asks and generates the next
generation, and :meth:`RunStore.sync`
waits for it: the engine calls it before the next stimuli reach the target, and the next commit
and :meth:`RunStore.close` wait for it too. So every generation is on disk before anything after
it is shown or written, as with SQLite's own FULL, without the fsync's wait in the loop.

Tables:
- ``evaluations``: one row per presented stimulus: generation, position in the generation,
  response (NULL when missing), score, all outputs (float32 blob), the code (float32 blob) or
  bank index that reproduces the image, optimizer metadata (JSON, e.g. parents), ``kind`` and
  ``trials``. ``kind`` is NULL for the optimizer's stimuli; ``'reference'`` for a reference image
  shown alongside (no code, no score: ``info`` says which reference) and ``'repeat'`` for an elite
  re-presentation (its code; ``info.of`` = the id of the code's first row). Every read below that
  speaks of "the run's evaluations" (responses, scores, codes, top) reads the optimizer's stimuli
  only; :meth:`RunStore.shown` reads the others. ``trials``: what the target reported per stimulus
  (JSON, e.g. a rig's per-trial window and baseline counts), NULL when it reported nothing.
- ``generations``: per generation n, best/mean response, cumulative evaluations, wall time.
- ``checkpoint``: the latest engine state (stimopt.state: arrays and plain values, never a pickle),
  replaced every generation.
- ``meta``: the run's config, config hash and status.
"""
from __future__ import annotations

import json
import math
import os
import sqlite3
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np

from stimopt import state as safe_state
from stimopt.errors import StimoptError

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT);
CREATE TABLE IF NOT EXISTS evaluations (
    id INTEGER PRIMARY KEY,
    generation INTEGER NOT NULL,
    position INTEGER NOT NULL,
    response REAL,
    score REAL,
    outputs BLOB,
    code BLOB,
    bank_index INTEGER,
    info TEXT,
    kind TEXT,
    trials TEXT
);
CREATE TABLE IF NOT EXISTS generations (
    generation INTEGER PRIMARY KEY,
    n INTEGER NOT NULL,
    n_missing INTEGER NOT NULL,
    best_response REAL,
    mean_response REAL,
    n_evaluations INTEGER NOT NULL,
    wall_s REAL
);
CREATE TABLE IF NOT EXISTS checkpoint (id INTEGER PRIMARY KEY CHECK (id = 0), generation INTEGER, state BLOB);
"""
#: WAL pages (4 kB) before SQLite copies the WAL into the database file (its default: 1,000). Durability does
#: not depend on it (every commit is in the WAL, fsynced after it with synchronous=FULL); the copy rewrites each page once
#: per checkpoint and fsyncs both files, so fewer checkpoints are less work, and a 2,000-evaluation run of
#: 1,728-dim codes (~14 MB) has none in its loop: closing the store does the one copy.
WAL_CHECKPOINT_PAGES = 16384
ADDED_COLUMNS = {"kind": "TEXT", "trials": "TEXT"}  # a store written before them gains them (NULL: a stimulus)
STIMULI = "kind IS NULL"


def probe(path: str | Path) -> dict:
    """What a store file holds, read-only, without creating or changing anything:
    ``{"status", "generation" (last committed, -1 if none), "n_evaluations", "record"}``. A file that is not a
    readable run store raises StimoptError saying why."""
    path = Path(path)
    try:
        db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
        try:
            tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
            missing = {"meta", "evaluations", "generations", "checkpoint"} - tables
            if missing:
                raise StimoptError(f"{path} is not a stimopt run store (no table {', '.join(sorted(missing))})")
            row = db.execute("SELECT value FROM meta WHERE key='status'").fetchone()
            rec = db.execute("SELECT value FROM meta WHERE key='record'").fetchone()
            gen = db.execute("SELECT MAX(generation) FROM generations").fetchone()[0]
            last = db.execute("SELECT n_evaluations FROM generations ORDER BY generation DESC LIMIT 1").fetchone()
            n = last[0] if last else 0  # the optimizer's stimuli, as the engine counted them (references are extra rows)
            status = json.loads(row[0]) if row else None
        finally:
            db.close()
    except sqlite3.DatabaseError as exc:
        raise StimoptError(f"{path} is not a readable run store ({exc}); salvage it with: stimopt-recover {path.parent} NEW_DIR") from None
    except ValueError as exc:
        raise StimoptError(f"{path} is not a stimopt run store (bad meta: {exc})") from None
    return {"status": status, "generation": -1 if gen is None else int(gen), "n_evaluations": int(n),
            "record": json.loads(rec[0]) if rec else None}


def _nan_to_none(x: float):
    return None if x is None or not math.isfinite(x) else float(x)


def _row(generation, position, response, score, outputs, code, bank: bool, info, kind, trials) -> tuple:
    """One evaluations row (its columns in SCHEMA's order after the id)."""
    if code is not None and not bank:
        code = np.ascontiguousarray(code, dtype=np.float32).reshape(-1).tobytes()
    return (generation, position, _nan_to_none(response), _nan_to_none(score),
            None if outputs is None else np.ascontiguousarray(outputs, dtype=np.float32).reshape(-1).tobytes(),
            None if bank else code, int(code) if bank and code is not None else None,
            None if info is None else json.dumps(info), kind, None if trials is None else json.dumps(trials))


class RunStore:
    def __init__(self, path: str | Path, synchronous: str = "FULL"):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(str(self.path), isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        # FULL: SQLite's NORMAL plus our own fsync of the WAL after each generation's commit (module docstring)
        self.fsync_each_commit = str(synchronous).upper() == "FULL"
        self.db.execute(f"PRAGMA synchronous={'NORMAL' if self.fsync_each_commit else synchronous}")
        self._fsyncer: ThreadPoolExecutor | None = None  # one thread for the run (a thread per generation: ~0.6 ms each)
        self._syncing: Future | None = None
        self._sync_error: OSError | None = None
        self.db.execute(f"PRAGMA wal_autocheckpoint={WAL_CHECKPOINT_PAGES}")
        self.db.executescript(SCHEMA)
        have = {r[1] for r in self.db.execute("PRAGMA table_info(evaluations)")}
        for column, type_ in ADDED_COLUMNS.items():
            if column not in have:
                self.db.execute(f"ALTER TABLE evaluations ADD COLUMN {column} {type_}")

    def check(self) -> None:
        """A damaged file (truncated, overwritten) is one StimoptError naming the way to salvage it."""
        try:
            bad = [r[0] for r in self.db.execute("PRAGMA quick_check").fetchall() if r[0] != "ok"]
        except sqlite3.DatabaseError as exc:
            bad = [str(exc)]
        if bad:
            raise StimoptError(f"the run store {self.path} is damaged ({bad[0]}); salvage its committed rows with: "
                               f"stimopt-recover {self.path.parent} NEW_RUN_DIR") from None

    # -- meta -------------------------------------------------------------------------------
    def set_meta(self, **items) -> None:
        with self.db:
            self.db.execute("BEGIN")
            self.db.executemany(
                "INSERT OR REPLACE INTO meta VALUES (?, ?)", [(k, json.dumps(v)) for k, v in items.items()]
            )

    def meta(self, key: str, default=None):
        row = self.db.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return default if row is None else json.loads(row[0])

    # -- the per-generation transaction ------------------------------------------------------
    def append_generation(
        self,
        generation: int,
        codes: np.ndarray,
        response: np.ndarray,
        score: np.ndarray,
        outputs: np.ndarray | None,
        info: list[dict] | None,
        n_evaluations: int,
        wall_s: float,
        checkpoint: dict,
        trials: list | None = None,
        extras: list[dict] | None = None,
    ) -> None:
        """Commit one generation and the checkpoint to continue after it, atomically.

        ``trials``: per stimulus, what the target reported (JSON-able) or None. ``extras``: the other
        stimuli shown in the generation, after the optimizer's, one dict each with ``kind``,
        ``code`` (None for a reference), ``response``, ``score``, ``outputs``, ``info``, ``trials``.
        """
        bank = codes.ndim == 1 and np.issubdtype(codes.dtype, np.integer)
        outs = None if outputs is None else np.ascontiguousarray(outputs, dtype=np.float32).reshape(len(codes), -1)
        rows = [_row(generation, i, response[i], score[i], None if outs is None else outs[i], codes[i], bank,
                     None if info is None else info[i], None, None if trials is None else trials[i])
                for i in range(len(codes))]
        for j, e in enumerate(extras or ()):
            rows.append(_row(generation, len(codes) + j, e["response"], e["score"], e.get("outputs"), e.get("code"),
                             bank, e.get("info"), e["kind"], e.get("trials")))
        finite = response[np.isfinite(response)]
        blob = safe_state.dumps(checkpoint)
        self.sync()  # the last generation is on disk before this one is written
        try:
            with self.db:
                self.db.execute("BEGIN")
                self.db.executemany(
                    "INSERT INTO evaluations (generation, position, response, score, outputs, code, bank_index, info, kind, trials)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    rows,
                )
                self.db.execute(
                    "INSERT INTO generations VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (
                        generation,
                        len(codes),
                        int(len(codes) - finite.size),
                        _nan_to_none(float(finite[np.argmax(score[np.isfinite(response)])]) if finite.size else math.nan),
                        _nan_to_none(float(finite.mean()) if finite.size else math.nan),
                        n_evaluations,
                        wall_s,
                    ),
                )
                self.db.execute("INSERT OR REPLACE INTO checkpoint VALUES (0, ?, ?)", (generation, blob))
        except sqlite3.Error as exc:  # a full or failing disk: the transaction is rolled back, the ones before it stay
            raise StimoptError(f"could not write generation {generation} to the run store {self.path} ({exc}); the "
                               f"generations before it are in it: free space or fix the disk, then resume the run") from None
        if self.fsync_each_commit:
            if self._fsyncer is None:
                self._fsyncer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="stimopt-store-fsync")
            self._syncing = self._fsyncer.submit(self._fsync_wal)

    def _fsync_wal(self) -> None:
        try:
            fd = os.open(f"{self.path}-wal", os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as exc:  # raised in the loop by sync()
            self._sync_error = exc

    def sync(self) -> None:
        """Wait until every committed generation is on disk (``FULL``; at once with ``NORMAL``).
        A failed fsync (a full or failing disk) is one StimoptError: what was committed is in the WAL."""
        if self._syncing is not None:
            self._syncing.result()
            self._syncing = None
        if self._sync_error is not None:
            exc, self._sync_error = self._sync_error, None
            raise StimoptError(f"could not write the run store {self.path} to disk ({exc}); the generations committed so "
                               f"far are in its WAL: free space or fix the disk, then resume the run")

    # -- reading back ------------------------------------------------------------------------
    def checkpoint(self) -> tuple[int, dict] | None:
        row = self.db.execute("SELECT generation, state FROM checkpoint WHERE id=0").fetchone()
        if row is None:
            return None
        try:
            return row[0], safe_state.loads(row[1], what=f"checkpoint in {self.path}")
        except StimoptError as exc:
            raise StimoptError(f"cannot resume: {exc}; start a new run (stimopt-recover salvages the evaluations)") from None

    def n_evaluations(self) -> int:
        """The optimizer's stimuli committed (references and repeats not counted: :meth:`shown`)."""
        return self.db.execute(f"SELECT COUNT(*) FROM evaluations WHERE {STIMULI}").fetchone()[0]

    def generations(self) -> list[dict]:
        cur = self.db.execute(
            "SELECT generation, n, n_missing, best_response, mean_response, n_evaluations, wall_s"
            " FROM generations ORDER BY generation"
        )
        cols = [c[0] for c in cur.description]
        return [dict(zip(cols, row)) for row in cur.fetchall()]

    def responses(self) -> np.ndarray:
        """All responses in evaluation order (NaN where missing)."""
        rows = self.db.execute(f"SELECT response FROM evaluations WHERE {STIMULI} ORDER BY id").fetchall()
        return np.array([np.nan if r[0] is None else r[0] for r in rows], dtype=np.float64)

    def scores(self) -> np.ndarray:
        """All scores (direction applied by the run's objective) in evaluation order (NaN where missing)."""
        rows = self.db.execute(f"SELECT score FROM evaluations WHERE {STIMULI} ORDER BY id").fetchall()
        return np.array([np.nan if r[0] is None else r[0] for r in rows], dtype=np.float64)

    def top(self, k: int) -> list[dict]:
        """The k best-scoring evaluations with their codes (array) or bank indices."""
        cur = self.db.execute(
            "SELECT id, generation, position, response, score, code, bank_index FROM evaluations"
            f" WHERE score IS NOT NULL AND {STIMULI} ORDER BY score DESC, id ASC LIMIT ?",
            (k,),
        )
        out = []
        for id_, gen, pos, resp, score, code, bank_index in cur.fetchall():
            out.append({
                "id": id_, "generation": gen, "position": pos, "response": resp, "score": score,
                "code": bank_index if code is None else np.frombuffer(code, dtype=np.float32).copy(),
            })
        return out

    def codes(self) -> np.ndarray:
        """Every evaluated code (float32 [N, dim]) or bank index (int64 [N]), in evaluation order."""
        rows = self.db.execute(f"SELECT code, bank_index FROM evaluations WHERE {STIMULI} ORDER BY id").fetchall()
        if rows and rows[0][0] is None:
            return np.array([r[1] for r in rows], dtype=np.int64)
        return np.stack([np.frombuffer(r[0], dtype=np.float32) for r in rows]) if rows else np.zeros((0, 0), np.float32)

    def presentation_means(self, min_count: int = 1, limit: int = 1) -> list[dict]:
        """The optimizer's codes ranked by mean score over all their presentations (first showing and
        ``'repeat'`` rows; missing ones not counted), best first, ties by the earliest: ``id`` (the
        code's first row), ``code``, ``mean_score``, ``mean_response``, ``presentations``."""
        cur = self.db.execute(
            "SELECT origin, AVG(score), AVG(response), COUNT(score) FROM ("
            " SELECT CASE WHEN kind = 'repeat' THEN json_extract(info, '$.of') ELSE id END AS origin, score, response"
            f" FROM evaluations WHERE {STIMULI} OR kind = 'repeat')"
            " GROUP BY origin HAVING COUNT(score) >= ? ORDER BY AVG(score) DESC, origin ASC LIMIT ?",
            (int(min_count), int(limit)))
        out = []
        for origin, mean_score, mean_response, count in cur.fetchall():
            code, bank_index = self.db.execute("SELECT code, bank_index FROM evaluations WHERE id=?", (origin,)).fetchone()
            out.append({"id": int(origin), "mean_score": mean_score, "mean_response": mean_response, "presentations": count,
                        "code": bank_index if code is None else np.frombuffer(code, dtype=np.float32).copy()})
        return out

    def shown(self, kind: str | None = None) -> list[dict]:
        """Every row the target was shown, in order, with ``kind`` (None: the optimizer's), ``info``
        and ``trials`` decoded; ``kind`` given: only those rows (``'stimulus'`` for the optimizer's)."""
        where = "" if kind is None else f"WHERE {STIMULI}" if kind == "stimulus" else "WHERE kind = ?"
        cur = self.db.execute(
            "SELECT id, generation, position, response, score, code, bank_index, info, kind, trials"
            f" FROM evaluations {where} ORDER BY id", () if kind in (None, "stimulus") else (kind,))
        out = []
        for id_, gen, pos, resp, score, code, bank_index, info, kind_, trials in cur.fetchall():
            out.append({
                "id": id_, "generation": gen, "position": pos, "kind": kind_,
                "response": math.nan if resp is None else resp, "score": math.nan if score is None else score,
                "code": bank_index if code is None else np.frombuffer(code, dtype=np.float32).copy(),
                "info": None if info is None else json.loads(info), "trials": None if trials is None else json.loads(trials),
            })
        return out

    def close(self) -> None:
        try:
            self.sync()
        finally:
            self.db.close()
            if self._fsyncer is not None:
                self._fsyncer.shutdown()
                self._fsyncer = None
        lock = getattr(self, "lock", None)
        if lock is not None:
            lock.release()
            self.lock = None
