"""The rig inbox parser: one generation's JSON-lines file from the lab, read incrementally.

What counts (protocol ``stimopt-rig/1``, docs/neural_targets.md):

- One trial = one line = one JSON object, ending in ``\\n``::

      {"generation": 12, "index": 3, "repeat": 0, "counts": [5, 0, 2]}
      {"generation": 12, "done": true}

  ``generation``, ``index`` and ``repeat`` (0 if absent) are integers: a JSON integer, or a number
  with an integral value (``2.0``); ``true``, ``1.9``, ``"1"`` are not. ``index`` is in
  ``0..n-1``, ``repeat >= 0``. ``counts`` is a list of ``n_channels`` numbers (``"count": 5`` for
  one channel). ``request_id``, when present, is the manifest's. Other keys are ignored.
- A count must be finite, ``>= 0`` and ``<= MAX_COUNT`` (1e6): a ``NaN``/``Infinity``, a negative
  count or an absurd one makes the line ``invalid``: logged, never used, and it does not take the
  slot of its ``(index, repeat)``, so a good repeat of the same image still counts. Refused, not
  clipped: a clipped count would be a response nobody recorded.
- Each line is parsed on its own: a value split over two lines is two ``malformed`` lines, two
  objects on one line are one ``malformed`` line, a line nested too deeply or longer than
  ``MAX_LINE_BYTES`` (1 MiB) is ``malformed``. No line can shift, hide or change another.
- The first ``repeats`` valid trials of an image, in file order, are used (whatever their repeat
  numbers); later valid ones are ``extra``. A trial with the ``(index, repeat)`` of an earlier
  valid one is a ``duplicate``. Lines for another generation or request are ``other_generation``.
  ``"done": true`` ends the generation; lines after it are ``after_done``. Blank lines are skipped.
- At the timeout an unterminated last line is parsed once more; not valid: ``truncated``.

Every non-blank line ends up exactly once: used, a done line, or in ``rejected`` (line number, byte
offset, kind, reason, the first 200 characters), counted per kind in ``stats``. The file is only
read: opened without blocking (a named pipe or a folder at its path is reported in ``problem``
and read as "no answer yet"), at most ``MAX_POLL_BYTES`` per poll, and no exception escapes.
"""
from __future__ import annotations

import json
import math
import os
import stat
from pathlib import Path

import numpy as np

from stimopt.errors import StimoptError

MAX_COUNT = 1e6
MAX_SPIKE_S = 1e4         # a spike time's magnitude, in seconds from onset
MAX_LINE_BYTES = 1 << 20
MAX_POLL_BYTES = 8 << 20
EXCERPT_CHARS = 200
REJECT_KINDS = ("duplicates", "extra", "other_generation", "malformed", "invalid", "truncated", "after_done")
_NUMBER = (int, float)


def check_window(window, what: str):
    """``None`` or ``(start_s, end_s)`` with finite start < end (seconds after onset)."""
    if window is None:
        return None
    try:
        start, end = (float(v) for v in window)
    except (TypeError, ValueError):
        raise StimoptError(f"{what} must be [start_s, end_s], got {window}") from None
    if not (math.isfinite(start) and math.isfinite(end) and start < end):
        raise StimoptError(f"{what} must be [start_s, end_s] with start < end, got {window}")
    return start, end


class Rejected(Exception):
    def __init__(self, kind: str, reason: str):
        super().__init__(reason)
        self.kind, self.reason = kind, reason


def _show(value) -> str:
    if isinstance(value, (dict, list)):
        return f"a JSON {'object' if isinstance(value, dict) else 'list'}"
    text = json.dumps(value) if isinstance(value, str) else repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _integer(value, what: str) -> int:
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise Rejected("malformed", f"{what} is not an integer ({_show(value)})")
    return value


def _open_plain(path: Path) -> tuple[int | None, str | None]:
    """Open ``path`` for reading without blocking; only a regular file is read."""
    try:
        st = os.stat(path)
        if not stat.S_ISREG(st.st_mode):
            return None, f"{path.name} is not a regular file: not read"
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except FileNotFoundError:
        return None, None
    except OSError as exc:
        return None, f"{path.name}: {exc.strerror}"
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        return None, f"{path.name} is not a regular file: not read"
    return fd, None


class InboxReader:
    """Incremental reader of one generation's inbox file (see the module doc for what counts)."""

    def __init__(self, path: Path, generation: int, rid: str, n: int, n_channels: int, repeats: int = 1,
                 opener=_open_plain, window=None, baseline_window=None):
        self.path, self.generation, self.rid, self.n, self.c = Path(path), generation, rid, n, n_channels
        self.repeats, self.opener = max(int(repeats), 1), opener
        self.window, self.baseline_window = window, baseline_window
        self.base_sums = np.zeros((n, n_channels))
        self.base_cnt = np.zeros(n, dtype=np.int64)
        self.trials: list[dict] = []  # with spike times: each used trial's window and baseline counts
        self.offset = 0           # bytes consumed
        self.line_no = 0          # physical lines consumed (blank ones included): line numbers as in an editor
        self.n_lines = 0          # non-blank lines consumed: each is used, a done line, or rejected
        self.done = False
        self.done_lines = 0
        self.sums = np.zeros((n, n_channels))
        self.cnt = np.zeros(n, dtype=np.int64)
        self.seen: set[tuple[int, int]] = set()
        self.used: list[int] = []  # line numbers of the trials used
        self.rejected: list[dict] = []
        self.problem: str | None = None
        self.stats = {"trials": 0, **{k: 0 for k in REJECT_KINDS}}
        self._skip: tuple[int, int, bytes] | None = None  # an over-long line being skipped: (line, offset, head)

    # -- one line ------------------------------------------------------------------------------------
    def _spikes(self, rec: dict):
        """(window counts, baseline counts or None) from ``"spikes"``: per channel, a list of times (s)."""
        if "counts" in rec or "count" in rec:
            raise Rejected("malformed", "both spikes and counts")
        if self.window is None:
            raise Rejected("malformed", "spike times, but no target.window to count them in")
        trains = rec["spikes"]
        if not isinstance(trains, list) or len(trains) != self.c:
            raise Rejected("malformed", f"spikes is not a list of {self.c} channel list(s)")
        counts, base = np.zeros(self.c), np.zeros(self.c)
        for ch, times in enumerate(trains):
            if not isinstance(times, list) or not all(type(t) in _NUMBER for t in times):
                raise Rejected("malformed", f"spikes[{ch}] is not a list of numbers")
            if len(times) > MAX_COUNT:
                raise Rejected("invalid", f"more than {MAX_COUNT:g} spikes")
            try:
                t = np.asarray(times, dtype=np.float64)
            except OverflowError:
                raise Rejected("invalid", "a spike time is not finite") from None
            if not np.isfinite(t).all() or (np.abs(t) > MAX_SPIKE_S).any():
                raise Rejected("invalid", f"a spike time is not finite or beyond {MAX_SPIKE_S:g} s")
            counts[ch] = np.count_nonzero((t >= self.window[0]) & (t < self.window[1]))
            if self.baseline_window is not None:
                base[ch] = np.count_nonzero((t >= self.baseline_window[0]) & (t < self.baseline_window[1]))
        return counts, (base if self.baseline_window is not None else None), True

    def _counts(self, rec: dict) -> list[float]:
        if "spikes" in rec:
            return self._spikes(rec)
        if "counts" in rec and "count" in rec:
            raise Rejected("malformed", "both count and counts")
        if "counts" in rec:
            values = rec["counts"]
            if not isinstance(values, list):
                raise Rejected("malformed", f"counts is not a list ({_show(values)})")
        elif "count" in rec:
            values = [rec["count"]]
        else:
            raise Rejected("malformed", "no counts")
        if len(values) != self.c:
            raise Rejected("malformed", f"{len(values)} counts for {self.c} channels")
        if not all(type(v) in _NUMBER for v in values):
            raise Rejected("malformed", "a count is not a number")
        try:
            arr = np.asarray(values, dtype=np.float64)
        except OverflowError:
            raise Rejected("invalid", f"a count is larger than {MAX_COUNT:g}") from None
        if not np.isfinite(arr).all():
            raise Rejected("invalid", "a count is NaN or infinite")
        if (arr < 0).any():
            raise Rejected("invalid", "a count is negative")
        if (arr > MAX_COUNT).any():
            raise Rejected("invalid", f"a count is larger than {MAX_COUNT:g}")
        return arr, None, False

    def _parse(self, raw: bytes):
        """``None`` for a done line, else ``(index, repeat, counts)``; raises ``Rejected``."""
        try:
            rec = json.loads(raw)
        except RecursionError:
            raise Rejected("malformed", "JSON nested too deeply") from None
        except ValueError as exc:
            raise Rejected("malformed", f"not one JSON value ({getattr(exc, 'msg', type(exc).__name__)})") from None
        if not isinstance(rec, dict):
            raise Rejected("malformed", f"not a JSON object ({_show(rec)})")
        if "generation" not in rec:
            raise Rejected("malformed", "no generation")
        generation = _integer(rec["generation"], "generation")
        rid = rec.get("request_id", self.rid)
        if not isinstance(rid, str):
            raise Rejected("malformed", f"request_id is not a string ({_show(rid)})")
        if generation != self.generation or rid != self.rid:
            raise Rejected("other_generation", f"generation {generation}, request {_show(rid)}")
        if "done" in rec:
            if rec["done"] is True:
                return None
            raise Rejected("malformed", f"done is not true ({_show(rec['done'])})")
        if "index" not in rec:
            raise Rejected("malformed", "no index")
        index = _integer(rec["index"], "index")
        if not 0 <= index < self.n:
            raise Rejected("malformed", f"index {_show(index)} is not in 0..{self.n - 1}")
        repeat = _integer(rec.get("repeat", 0), "repeat")
        if repeat < 0:
            raise Rejected("malformed", f"repeat {repeat} is negative")
        return index, repeat, self._counts(rec)

    def _reject(self, kind: str, reason: str, line: int, offset: int, raw: bytes) -> None:
        self.stats[kind] += 1
        self.rejected.append({"line": line, "offset": offset, "kind": kind, "reason": reason,
                              "text": raw[: 4 * EXCERPT_CHARS].decode("utf-8", "replace")[:EXCERPT_CHARS]})

    def _line(self, raw: bytes, offset: int, last: bool = False) -> None:
        self.line_no += 1
        if len(raw) > MAX_LINE_BYTES:
            self.n_lines += 1
            self._reject("truncated" if last else "malformed", f"line longer than {MAX_LINE_BYTES} bytes",
                         self.line_no, offset, raw)
            return
        text = raw.strip()
        if not text:
            return
        self.n_lines += 1
        if self.done:
            self._reject("after_done", "after the done line", self.line_no, offset, text)
            return
        try:
            got = self._parse(text)
        except Rejected as r:
            kind = "truncated" if last and r.kind == "malformed" else r.kind
            self._reject(kind, r.reason, self.line_no, offset, text)
            return
        except Exception as exc:  # noqa: BLE001 - a line must never end the session
            self._reject("truncated" if last else "malformed", f"unreadable ({type(exc).__name__})", self.line_no, offset, text)
            return
        if got is None:
            self.done, self.done_lines = True, self.done_lines + 1
            return
        index, repeat, counts = got
        if (index, repeat) in self.seen:
            self._reject("duplicates", f"index {index} repeat {repeat} again", self.line_no, offset, text)
            return
        self.seen.add((index, repeat))
        if self.cnt[index] >= self.repeats:
            self._reject("extra", f"index {index} already has {self.repeats} trial(s)", self.line_no, offset, text)
            return
        counts, base, spiky = counts
        self.sums[index] += counts
        self.cnt[index] += 1
        if base is not None:
            self.base_sums[index] += base
            self.base_cnt[index] += 1
        if spiky:
            self.trials.append({"index": index, "repeat": repeat, "line": self.line_no, "window": counts.tolist(),
                                "baseline": None if base is None else base.tolist()})
        self.used.append(self.line_no)
        self.stats["trials"] += 1

    # -- the file ------------------------------------------------------------------------------------
    def _read(self) -> tuple[bytes, bool] | None:
        """Bytes appended since the last poll (at most MAX_POLL_BYTES) and whether they reach the end."""
        try:
            fd, problem = self.opener(self.path)
        except Exception as exc:  # noqa: BLE001
            fd, problem = None, f"{self.path.name}: {exc}"
        if problem:
            self.problem = problem
        if fd is None:
            return None
        try:
            size = os.fstat(fd).st_size
            if size < self.offset:
                self.problem = f"{self.path.name} shrank to {size} bytes (it must only be appended to): not read further"
                return None
            want = min(size - self.offset, MAX_POLL_BYTES)
            os.lseek(fd, self.offset, os.SEEK_SET)
            chunks, got = [], 0
            while got < want:
                block = os.read(fd, want - got)
                if not block:
                    break
                chunks.append(block)
                got += len(block)
            return b"".join(chunks), self.offset + got >= size
        except OSError as exc:
            self.problem = f"{self.path.name}: {exc.strerror}"
            return None
        finally:
            os.close(fd)

    def poll(self, final: bool = False) -> None:
        """Read what was appended since the last poll; ``final``: also the unterminated last line."""
        got = self._read()
        if got is None:
            return
        data, at_end = got
        pos = 0
        while True:
            nl = data.find(b"\n", pos)
            if nl < 0:
                break
            if self._skip is not None:
                line, start, head = self._skip
                self._skip = None
                self.line_no, self.n_lines = line, self.n_lines + 1
                self._reject("malformed", f"line longer than {MAX_LINE_BYTES} bytes", line, start, head)
            else:
                self._line(data[pos:nl], self.offset + pos)
            pos = nl + 1
        rest = data[pos:]
        start = self.offset + pos
        self.offset = start
        if self._skip is not None or len(rest) > MAX_LINE_BYTES:
            if self._skip is None:
                self._skip = (self.line_no + 1, start, rest[: 4 * EXCERPT_CHARS])
            self.offset += len(rest)  # an over-long line is skipped as it comes, never held in memory
            if final and at_end:
                line, begin, head = self._skip
                self._skip = None
                self.line_no, self.n_lines = line, self.n_lines + 1
                self._reject("truncated", f"unterminated line longer than {MAX_LINE_BYTES} bytes", line, begin, head)
        elif final and at_end and rest.strip():
            self.offset += len(rest)
            self._line(rest, start, last=True)

    # -- results -------------------------------------------------------------------------------------
    def complete(self) -> bool:
        return self.done or bool((self.cnt >= self.repeats).all())

    def responses(self) -> tuple[np.ndarray, np.ndarray]:
        """(mean over the used trials [n, channels], NaN where none; used trials per image [n])."""
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = np.where(self.cnt[:, None] > 0, self.sums / np.maximum(self.cnt, 1)[:, None], np.nan)
        return mean, self.cnt.astype(np.float64)

    def baselines(self) -> np.ndarray:
        """Mean baseline-window count per image [n, channels], NaN where no trial had spike times."""
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(self.base_cnt[:, None] > 0, self.base_sums / np.maximum(self.base_cnt, 1)[:, None], np.nan)

    def take_rejected(self) -> list[dict]:
        out, self.rejected = self.rejected, []
        return out
