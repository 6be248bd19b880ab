"""Safe paths in the rig folder: nothing is read, written or moved outside it.

The rig folder is shared with the lab's software, so anything in it may be a symlink, a named pipe
or a folder where a file is expected. ``RigFolder`` resolves the folder once; every path it hands
out is resolved again and checked to stay inside, a symlink that leaves the folder is refused
(``UnsafePath``, a ``StimoptError`` of one line), files are opened with ``O_NOFOLLOW`` and
``O_NONBLOCK`` and checked to be regular files, and an entry in the way is never followed: a
symlink is moved aside as the link itself.
"""
from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

from stimopt.errors import StimoptError

# Everything stimopt writes or moves, relative to the rig folder: checked when the target starts.
OWN_PATHS = ("outbox", "inbox", "outbox/stale", "inbox/stale", "log.jsonl", "rejected.jsonl")
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_NONBLOCK = getattr(os, "O_NONBLOCK", 0)


class UnsafePath(StimoptError):
    """A path of the rig folder that leads outside it, or is not the kind of entry expected."""


def kind_of(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a named pipe"), (stat.S_ISLNK, "a symlink"),
                       (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a device"), (stat.S_ISBLK, "a device")):
        if test(mode):
            return name
    return "a regular file" if stat.S_ISREG(mode) else "not a regular file"


class RigFolder:
    def __init__(self, rig_dir):
        root = Path(os.path.expanduser(str(rig_dir)))
        try:
            root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StimoptError(f"target.rig_dir={rig_dir}: cannot create the rig folder ({exc.strerror})") from None
        self.root = root.resolve()
        if not self.root.is_dir():
            raise StimoptError(f"target.rig_dir={rig_dir} is not a folder")

    def rel(self, path: Path) -> str:
        try:
            return str(Path(path).relative_to(self.root))
        except ValueError:
            return str(path)

    def inside(self, path: Path) -> bool:
        try:
            real = Path(path).resolve()
        except (OSError, RuntimeError):  # a symlink loop
            return False
        return real == self.root or self.root in real.parents

    def resolve(self, rel: str) -> Path:
        """The resolved path of ``rel``; ``UnsafePath`` when it (or a symlink on the way) leaves the folder."""
        path = self.root / rel
        try:
            real = path.resolve()
        except (OSError, RuntimeError) as exc:  # a symlink loop
            raise UnsafePath(f"{self.root.name}/{rel} cannot be resolved ({exc}): remove that symlink") from None
        if real != self.root and self.root not in real.parents:
            raise UnsafePath(f"{self.root.name}/{rel} leads to {real}, outside the rig folder: "
                             f"remove that symlink (stimopt writes nothing outside {self.root})")
        return real

    def entry(self, parent: str, name: str) -> Path:
        """``parent`` resolved and checked, ``name`` not resolved (the entry itself, never followed)."""
        return self.resolve(parent) / name

    def check(self) -> None:
        """Refuse, in one line, a layout that would make stimopt write outside the folder."""
        for rel in OWN_PATHS:
            path = self.root / rel
            if os.path.lexists(path):
                self.resolve(rel)
                want_dir = not rel.endswith(".jsonl")
                st = os.stat(path) if path.exists() else None
                if st is not None and not (stat.S_ISDIR if want_dir else stat.S_ISREG)(st.st_mode):
                    raise UnsafePath(f"{self.root.name}/{rel} is {kind_of(st.st_mode)}; stimopt needs "
                                     f"{'a folder' if want_dir else 'a regular file'} there: move it away")
        for rel in ("outbox", "inbox"):
            try:
                self.resolve(rel).mkdir(exist_ok=True)
            except OSError as exc:
                raise StimoptError(f"cannot create {self.root / rel} ({exc.strerror}): check the rig folder's "
                                   "permissions") from None

    def mkdir(self, rel: str) -> Path:
        real = self.resolve(rel)
        if os.path.lexists(real) and not real.is_dir():
            raise UnsafePath(f"{self.root.name}/{rel} is not a folder: move it away")
        real.mkdir(exist_ok=True)
        return real

    def append(self, rel: str, text: str | bytes) -> None:
        """Append ``text`` to a regular file inside the folder (created if absent); ``UnsafePath`` otherwise."""
        real = self.resolve(rel)
        try:
            fd = os.open(real, os.O_WRONLY | os.O_APPEND | os.O_CREAT | _NOFOLLOW | _NONBLOCK, 0o644)
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENXIO, errno.EISDIR):
                raise UnsafePath(f"{self.root.name}/{rel} cannot be written: not a regular file inside the rig "
                                 f"folder ({exc.strerror})") from None
            raise UnsafePath(f"{self.root.name}/{rel} cannot be written ({exc.strerror})") from None
        try:
            mode = os.fstat(fd).st_mode
            if not stat.S_ISREG(mode):
                raise UnsafePath(f"{self.root.name}/{rel} is {kind_of(mode)}, not a regular file: nothing written")
            data = text if isinstance(text, bytes) else text.encode()
            while data:
                data = data[os.write(fd, data):]
        finally:
            os.close(fd)

    def open_regular(self, path: Path) -> tuple[int | None, str | None]:
        """Open a file the lab writes, for reading, without blocking and only inside the folder.

        Returns ``(fd, None)``, ``(None, None)`` when it does not exist yet, or ``(None, problem)``."""
        rel = self.rel(path)
        try:
            real = Path(path).resolve()
        except (OSError, RuntimeError) as exc:  # a symlink loop
            return None, f"{rel}: {exc}"
        if real != self.root and self.root not in real.parents:
            return None, f"{rel} leads to {real}, outside the rig folder: not read"
        try:
            st = os.stat(real)
            if not stat.S_ISREG(st.st_mode):  # checked before opening: opening a named pipe could block
                return None, f"{rel} is {kind_of(st.st_mode)}, not a regular file: not read"
            fd = os.open(real, os.O_RDONLY | _NONBLOCK | _NOFOLLOW)
        except FileNotFoundError:
            return None, None
        except OSError as exc:
            return None, f"{rel}: {exc.strerror}"
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            os.close(fd)
            return None, f"{rel} is {kind_of(mode)}, not a regular file: not read"
        return fd, None

    def move_aside(self, path: Path, parent: str, name: str) -> Path:
        """Move the entry ``path`` itself (a symlink is moved as the link) into ``parent``/``name``."""
        dest_dir = self.mkdir(parent)
        dest = dest_dir / name
        if not self.inside(Path(path).parent) or not self.inside(dest_dir):
            raise UnsafePath(f"refusing to move {path} to {dest}: outside the rig folder")
        os.replace(path, dest)
        return dest

    @staticmethod
    def remove_own(path: Path) -> None:
        """Remove a temporary entry of stimopt's own (a symlink is unlinked, never followed)."""
        import shutil

        if not os.path.lexists(path):
            return
        if os.path.islink(path) or not os.path.isdir(path):
            os.unlink(path)
        else:
            shutil.rmtree(path)
