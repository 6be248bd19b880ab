"""``stimopt-recover RUN_DIR OUT_DIR``: salvage a damaged run store's committed rows into a new one.

A truncated or partly overwritten ``evaluations.sqlite`` cannot be resumed. This reads what is
still readable, row by row (a row on an unreadable page is skipped, the scan goes on past it),
after SQLite's own ``.recover`` when the ``sqlite3`` command is installed (whichever saves more
evaluations wins), and writes a fresh store in OUT_DIR holding only whole generations: a
generation with a missing row is dropped, so the new store means exactly what the old one did.
The checkpoint is kept when it belongs to the last whole generation (then ``resume=OUT_DIR``
continues the run); the run's ``.hydra`` record is copied. It says how many rows it saved.
"""
from __future__ import annotations

import argparse
import shutil
import sqlite3
import subprocess
import sys
import tempfile
from pathlib import Path

from stimopt.errors import StimoptError
from stimopt.store import SCHEMA

TABLES = {
    "meta": ("key", "value"),
    "evaluations": ("id", "generation", "position", "response", "score", "outputs", "code", "bank_index", "info",
                    "kind", "trials"),
    "generations": ("generation", "n", "n_missing", "best_response", "mean_response", "n_evaluations", "wall_s"),
    "checkpoint": ("id", "generation", "state"),
}
GIVE_UP_AFTER = 5000  # consecutive unreadable/missing rowids before a table's scan stops


def _rows(db: sqlite3.Connection, table: str) -> list[tuple]:
    """Every readable row of ``table``: a full scan, else one rowid at a time past bad pages. A column
    the store predates (``kind``, ``trials``) reads as NULL."""
    try:
        present = {r[1] for r in db.execute(f"PRAGMA table_info({table})").fetchall()}
    except sqlite3.DatabaseError:
        present = set()
    cols = ", ".join(c if c in present or not present else f"NULL AS {c}" for c in TABLES[table])
    try:
        return db.execute(f"SELECT {cols} FROM {table} ORDER BY rowid").fetchall()
    except sqlite3.DatabaseError:
        pass
    out, rowid, misses = [], 0, 0
    while misses < GIVE_UP_AFTER:
        rowid += 1
        try:
            row = db.execute(f"SELECT {cols} FROM {table} WHERE rowid=?", (rowid,)).fetchone()
        except sqlite3.DatabaseError:
            row = None
        if row is None:
            misses += 1
        else:
            out.append(row)
            misses = 0
    return out


def read_store(path: Path) -> dict[str, list[tuple]]:
    try:
        db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
    except sqlite3.Error as exc:
        raise StimoptError(f"cannot open {path} ({exc})") from None
    # a truncated file is shorter than its header says; with writable_schema SQLite reads the pages
    # that are there instead of refusing the whole file (the connection is read-only all the same)
    db.execute("PRAGMA writable_schema=ON")
    out = {}
    for table in TABLES:
        try:
            out[table] = _rows(db, table)
        except sqlite3.DatabaseError:
            out[table] = []
    db.close()
    return out


def sqlite_recover(path: Path, tmp: Path) -> dict[str, list[tuple]] | None:
    """The rows SQLite's ``.recover`` finds, or None without the sqlite3 command."""
    exe = shutil.which("sqlite3")
    if exe is None:
        return None
    dump = subprocess.run([exe, str(path), ".recover"], capture_output=True, timeout=600)
    if dump.returncode != 0 or not dump.stdout:
        return None
    target = tmp / "recovered.sqlite"
    load = subprocess.run([exe, str(target)], input=dump.stdout, capture_output=True, timeout=600)
    return read_store(target) if load.returncode == 0 and target.exists() else None


def whole_generations(rows: dict[str, list[tuple]]) -> dict[str, list[tuple]]:
    """Keep the generations whose summary row and every evaluation row survived."""
    counts: dict[int, int] = {}
    for r in rows["evaluations"]:
        if r[9] is None:  # the optimizer's stimuli (references and repeats are not in the summary row's n)
            counts[r[1]] = counts.get(r[1], 0) + 1
    whole = {g[0] for g in rows["generations"] if counts.get(g[0]) == g[1]}
    keep = dict(rows)
    keep["evaluations"] = [r for r in rows["evaluations"] if r[1] in whole]
    keep["generations"] = [g for g in rows["generations"] if g[0] in whole]
    last = max(whole) if whole else None
    contiguous = whole == set(range(last + 1)) if whole else False
    keep["checkpoint"] = [c for c in rows["checkpoint"] if contiguous and c[1] == last]
    return keep


def recover(run_dir: str | Path, out_dir: str | Path) -> dict:
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    src = run_dir / "evaluations.sqlite" if run_dir.is_dir() else run_dir
    if not src.is_file():
        raise StimoptError(f"{src} does not exist; give the run directory that holds evaluations.sqlite")
    dest = out_dir / "evaluations.sqlite"
    if dest.exists():
        raise StimoptError(f"{dest} already exists; choose a new OUT_DIR")
    out_dir.mkdir(parents=True, exist_ok=True)
    rows, method = read_store(src), "row-by-row read"
    with tempfile.TemporaryDirectory() as tmp:
        other = sqlite_recover(src, Path(tmp))
    if other is not None and len(other["evaluations"]) > len(rows["evaluations"]):
        rows, method = other, "sqlite3 .recover"
    found = len(rows["evaluations"])
    kept = whole_generations(rows)
    db = sqlite3.connect(str(dest), isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.executescript(SCHEMA)
    db.execute("BEGIN")
    for table, cols in TABLES.items():
        if kept[table]:
            marks = ", ".join("?" * len(cols))
            db.executemany(f"INSERT OR REPLACE INTO {table} ({', '.join(cols)}) VALUES ({marks})", kept[table])
    db.execute("INSERT OR REPLACE INTO meta VALUES ('status', '\"recovered\"')")
    db.execute("COMMIT")
    db.close()
    if (run_dir / ".hydra").is_dir() and not (out_dir / ".hydra").exists():
        shutil.copytree(run_dir / ".hydra", out_dir / ".hydra")
    return {"evaluations": len(kept["evaluations"]), "found": found, "generations": len(kept["generations"]),
            "checkpoint": bool(kept["checkpoint"]), "method": method, "store": str(dest)}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="stimopt-recover", description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", help="the damaged run directory (or its evaluations.sqlite)")
    parser.add_argument("out_dir", help="a new directory for the salvaged store")
    args = parser.parse_args(argv)
    try:
        r = recover(args.run_dir, args.out_dir)
    except StimoptError as exc:
        print(f"stimopt-recover: error: {exc}", file=sys.stderr)
        sys.exit(2)
    dropped = r["found"] - r["evaluations"]
    tail = (f"resume it with resume={args.out_dir} and the run's overrides" if r["checkpoint"]
            else "its checkpoint was lost, so it cannot be resumed, but every saved row can be read")
    print(f"saved {r['evaluations']} evaluations in {r['generations']} whole generations ({r['method']}"
          f"{f'; {dropped} rows of incomplete generations dropped' if dropped else ''}) into {r['store']}; {tail}")


if __name__ == "__main__":
    main()
