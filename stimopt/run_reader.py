"""Reading a run store without disturbing the run that writes it.

The pages (``report.html``, ``sweep.html``, the live ``stimopt-watch`` page) read
``evaluations.sqlite`` through this module only: a read-only connection (``mode=ro`` URI, so no
write transaction can ever start), a short busy timeout, one short read per call, and a fresh
connection each time (so a run that is killed, resumed or replaced is simply read again). SQLite
in WAL mode lets such readers run beside the writer without blocking it.
"""
from __future__ import annotations

import json
import sqlite3
from contextlib import closing
from pathlib import Path

import numpy as np

from stimopt.errors import StimoptError

STORE_NAME = "evaluations.sqlite"
# the optimizer's stimuli (stimopt.store: reference images and elite repeats carry a kind); a store
# written before the column existed has only those
STIMULI = "(kind IS NULL)"
BUSY_TIMEOUT_S = 0.25


def store_path(run_dir: str | Path) -> Path:
    return Path(run_dir) / STORE_NAME


def connect(run_dir: str | Path) -> sqlite3.Connection:
    """A read-only connection to the run's store; a one-line error when there is none."""
    path = store_path(run_dir)
    if not path.exists():
        raise StimoptError(f"{run_dir} is not a run directory: it has no {STORE_NAME}")
    uri = f"{path.resolve().as_uri()}?mode=ro"
    db = sqlite3.connect(uri, uri=True, timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False)
    db.execute(f"PRAGMA busy_timeout={int(BUSY_TIMEOUT_S * 1000)}")
    db.execute("PRAGMA query_only=ON")
    return db


def _rows(db: sqlite3.Connection, sql: str, args=()) -> list[dict]:
    cur = db.execute(sql, args)
    cols = [c[0] for c in cur.description]
    return [dict(zip(cols, row)) for row in cur.fetchall()]


def _meta(db: sqlite3.Connection) -> dict:
    try:
        return {k: json.loads(v) for k, v in db.execute("SELECT key, value FROM meta").fetchall()}
    except sqlite3.OperationalError:  # a store created a moment ago, before its tables
        return {}


def _decode(row: dict) -> dict:
    code = row.pop("code")
    row["code"] = row["bank_index"] if code is None else np.frombuffer(code, dtype=np.float32).copy()
    return row


def stimuli_filter(db: sqlite3.Connection) -> str:
    """The WHERE term that keeps the optimizer's stimuli."""
    has_kind = any(r[1] == "kind" for r in db.execute("PRAGMA table_info(evaluations)"))
    return STIMULI if has_kind else "1"


def _extremes(db: sqlite3.Connection, k: int, best: bool) -> list[dict]:
    order = "DESC" if best else "ASC"
    rows = _rows(
        db,
        "SELECT id, generation, position, response, score, code, bank_index FROM evaluations"
        f" WHERE score IS NOT NULL AND {stimuli_filter(db)} ORDER BY score {order}, id ASC LIMIT ?",
        (int(k),),
    )
    return [_decode(r) for r in rows]


def snapshot(run_dir: str | Path, k: int = 8, worst: bool = True) -> dict:
    """Everything the pages show, read in one short read-only transaction.

    Returns meta (config, status, ...), generations (with best so far), the k best and k worst
    evaluations (with their codes) and totals derived from the stored rows.
    """
    with closing(connect(run_dir)) as db:
        db.execute("BEGIN")  # one consistent snapshot of the WAL; a read transaction, never a write
        try:
            meta = _meta(db)
            try:
                gens = _rows(
                    db,
                    "SELECT generation, n, n_missing, best_response, mean_response, n_evaluations, wall_s"
                    " FROM generations ORDER BY generation",
                )
                per_gen = dict((g, (sc, r)) for g, sc, r in db.execute(  # SQLite: r is the row of MAX(score)
                    f"SELECT generation, MAX(score), response FROM evaluations WHERE score IS NOT NULL AND {stimuli_filter(db)}"
                    " GROUP BY generation"))
                best = _extremes(db, k, True)
                bottom = _extremes(db, k, False) if worst else []
                first_best = None
                if best:
                    first_best = db.execute(
                        f"SELECT COUNT(*) FROM evaluations WHERE {stimuli_filter(db)} AND id <= (SELECT MIN(id) FROM evaluations"
                        f" WHERE score IS NOT NULL AND score >= ? AND {stimuli_filter(db)})", (best[0]["score"],)
                    ).fetchone()[0]
            except sqlite3.OperationalError:
                gens, per_gen, best, bottom, first_best = [], {}, [], [], None
        finally:
            db.execute("COMMIT")
    direction = (meta.get("config") or {}).get("direction", "max")
    top_score, so_far = None, None
    for g in gens:  # best so far: the response of the best score yet (the objective's order, never re-derived)
        score, response = per_gen.get(g["generation"], (None, None))
        if score is not None and (top_score is None or score > top_score):
            top_score, so_far = score, response
        g["best_so_far"] = so_far
    return {
        "meta": meta,
        "direction": direction,
        "generations": gens,
        "best": best,
        "worst": bottom,
        "n_evaluations": gens[-1]["n_evaluations"] if gens else 0,
        "n_missing": int(sum(g["n_missing"] for g in gens)),
        "best_response": best[0]["response"] if best else None,
        "evaluations_to_best": first_best,
        "loop_s": float(sum(g["wall_s"] or 0.0 for g in gens)),
    }


def code_of(run_dir: str | Path, evaluation_id: int):
    """The stored code (flat float32 array) or bank index of one evaluation; None if absent."""
    with closing(connect(run_dir)) as db:
        row = db.execute("SELECT code, bank_index FROM evaluations WHERE id=?", (int(evaluation_id),)).fetchone()
    if row is None:
        return None
    return row[1] if row[0] is None else np.frombuffer(row[0], dtype=np.float32).copy()
