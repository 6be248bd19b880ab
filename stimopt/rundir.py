"""The run directory as a record: one process at a time, files replaced whole, history unchanged.

- ``RunLock``: an ``fcntl.flock`` on ``RUN_DIR/run.lock`` for the run's lifetime (the store holds
  it and releases it on close); a second process is refused in one line naming the holder's pid.
  The kernel drops the lock when a process dies, so a killed run never leaves a stale lock.
- ``write_atomic``: temp file in the same folder, fsync, ``os.replace``, fsync of the folder: a
  full disk or a kill leaves the old file or the new one, never a 0-byte one.
- ``snapshot_record`` / ``restore_record``: Hydra rewrites ``.hydra/{config,hydra,overrides}.yaml``
  of the run dir on every invocation, before stimopt runs, even one that is then refused. The
  store keeps the files of the first start; a later invocation into the same run dir moves what
  Hydra just wrote to ``.hydra/invocations/STAMP/`` (a resume's own overrides stay on record) and
  puts the originals back.
"""
from __future__ import annotations

import errno
import os
import tempfile
import time
from pathlib import Path

from stimopt.errors import StimoptError

LOCK_NAME = "run.lock"
RECORD_FILES = ("config.yaml", "hydra.yaml", "overrides.yaml")


class RunLock:
    """Exclusive use of a run directory by this process (until ``release``)."""

    def __init__(self, run_dir: str | Path):
        import fcntl

        self.path = Path(run_dir) / LOCK_NAME
        try:
            self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise StimoptError(f"cannot write in the run dir {Path(run_dir)} ({exc.strerror}); "
                               "make it writable or choose another hydra.run.dir") from None
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = os.pread(self.fd, 32, 0).decode(errors="replace").strip() or "?"
            os.close(self.fd)
            if exc.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise StimoptError(f"{Path(run_dir)} is in use by another stimopt process (pid {holder}); "
                                   "wait for it to end (or stop it), or choose another run dir") from None
            raise StimoptError(f"cannot lock the run dir {Path(run_dir)} ({exc.strerror})") from None
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, f"{os.getpid()}\n".encode(), 0)

    def release(self) -> None:
        if self.fd is not None:
            import fcntl

            try:
                os.ftruncate(self.fd, 0)
            except OSError:
                pass
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None


def write_atomic(path: str | Path, data: bytes | str) -> None:
    """Replace ``path`` with ``data`` whole (temp file + fsync + rename); OSError if it cannot."""
    path = Path(path)
    raw = data.encode() if isinstance(data, str) else data
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        mask = os.umask(0)
        os.umask(mask)
        os.fchmod(fd, 0o666 & ~mask)  # as an ordinary new file (mkstemp makes it 0600)
        with os.fdopen(fd, "wb") as f:
            f.write(raw)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    try:
        dfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass


def read_record(run_dir: str | Path) -> dict:
    """``{file name: text}`` of the run dir's ``.hydra`` files as they are now."""
    folder = Path(run_dir) / ".hydra"
    out = {}
    for name in RECORD_FILES:
        try:
            out[name] = (folder / name).read_text()
        except OSError:
            pass
    return out


def restore_record(run_dir: str | Path, record: dict) -> None:
    """Put the first start's ``.hydra`` files back; keep what this invocation's Hydra wrote aside."""
    folder = Path(run_dir) / ".hydra"
    now = read_record(run_dir)
    if not record or now == record:
        return
    stamp = time.strftime("%Y-%m-%d_%H-%M-%S") + f"-{os.getpid()}"
    aside = folder / "invocations" / stamp
    try:
        aside.mkdir(parents=True, exist_ok=True)
        for name, text in now.items():
            write_atomic(aside / name, text)
        for name, text in record.items():
            write_atomic(folder / name, text)
    except OSError as exc:
        raise StimoptError(f"cannot restore the record of {run_dir} in {folder} ({exc.strerror})") from None
