"""``RigTarget``: one generation = publish the images in the outbox, wait for the inbox answers."""
from __future__ import annotations

import json
import logging
import math
import os
import re
import stat
import threading
import time

import numpy as np
import torch

import stimopt
from stimopt.errors import StimoptError

from .images import encode_pngs, images_to_uint8, request_id, write_images
from .inbox import InboxReader, check_window
from .paths import RigFolder
from .zmqlink import ZmqLink, check_endpoint

PROTOCOL = "stimopt-rig/1"
PROTOCOL_WINDOWS = "stimopt-rig/2"  # lines may carry spike times (target.window set)
log = logging.getLogger("stimopt.rig")
_RID = re.compile(r"^[0-9a-f]{16}$")


def _crash_point(stage: str, g: int) -> None:
    """Fault injection for the kill-loop test: ``STIMOPT_RIG_CRASH=stage:generation:delay_s`` SIGKILLs
    this process ``delay_s`` after it first reaches ``stage`` (outbox|wait|read|commit) of that
    generation (``*``: of any)."""
    spec = os.environ.get("STIMOPT_RIG_CRASH")
    if not spec:
        return
    want, gen, delay = (spec.split(":") + ["", "0"])[:3]
    if want == stage and gen in (str(g), "*"):
        os.environ.pop("STIMOPT_RIG_CRASH")
        import signal
        import threading

        threading.Timer(float(delay or 0), os.kill, (os.getpid(), signal.SIGKILL)).start()


def gen_name(generation: int) -> str:
    return f"gen_{generation:06d}"


class RigTarget(stimopt.Target):
    """Presents each generation through ``rig_dir`` (see the package doc for the file protocol)."""

    def __init__(self, rig_dir=None, timeout_s: float = 60.0, poll_s: float = 0.02, presentations: int = 1,
                 n_channels: int = 1, channels=None, image_format: str = "png", represent: bool = False,
                 png_compress_level: int = 0, transport: str = "file", endpoint=None, window=None,
                 baseline_window=None):
        if not rig_dir:
            raise StimoptError("target=rig needs target.rig_dir=PATH (the folder shared with the lab's software)")
        if not (isinstance(timeout_s, (int, float)) and 0 < float(timeout_s) < math.inf):
            raise StimoptError(f"target.timeout_s must be a positive number of seconds, got {timeout_s}")
        if int(presentations) < 1 or int(n_channels) < 1:
            raise StimoptError("target.presentations and target.n_channels must be >= 1")
        if image_format not in ("png", "npy"):
            raise StimoptError(f"target.image_format must be png or npy, got '{image_format}'")
        self.folder = RigFolder(rig_dir)
        self.folder.check()  # a symlink that leaves the rig folder: refused now, in one line
        self.dir = self.folder.root
        self.outbox, self.inbox = self.dir / "outbox", self.dir / "inbox"
        self.timeout_s, self.poll_s = float(timeout_s), float(poll_s)
        self.repeats, self.n_channels, self.image_format = int(presentations), int(n_channels), image_format
        self.channels = None if channels is None else [int(c) for c in (channels if hasattr(channels, "__len__") else [channels])]
        if self.channels is not None and not all(0 <= c < self.n_channels for c in self.channels):
            raise StimoptError(f"target.channels {self.channels} must be within 0..{self.n_channels - 1} (target.n_channels)")
        self.n_outputs = len(self.channels) if self.channels is not None else self.n_channels
        self.represent = bool(represent)
        if not 0 <= int(png_compress_level) <= 9:
            raise StimoptError(f"target.png_compress_level must be 0..9, got {png_compress_level}")
        self.png_compress_level = int(png_compress_level)
        if transport not in ("file", "zmq"):
            raise StimoptError(f"target.transport must be file or zmq, got '{transport}'")
        self.transport, self.endpoint, self.link = transport, endpoint, None
        if transport == "zmq":
            self.endpoint = check_endpoint(endpoint)
        self.window = check_window(window, "target.window")
        self.baseline_window = check_window(baseline_window, "target.baseline_window")
        if self.baseline_window is not None and self.window is None:
            raise StimoptError("target.baseline_window needs target.window (spike times are counted in both)")
        self.generation = 0
        self.last: dict = {}
        self._trial_records = None
        self._prepared = None  # (generation, images, pixels, request id, PNG files, folder) made ahead by prepare()
        self._answered = self._critical = None  # when the last answer was read; last answer -> next manifest (wall, CPU)
        self._published = threading.Condition()
        self._published_generation = -1

    def wait_published(self, generation: int, timeout: float | None = None) -> bool:
        """Wait until generation ``generation`` is out (or failed to be): the engine's lookahead thread
        waits for it so that preparing the next generation never slows publishing this one."""
        with self._published:
            return self._published.wait_for(lambda: self._published_generation >= generation, timeout)

    def _mark_published(self, generation: int) -> None:
        with self._published:
            self._published_generation = max(self._published_generation, generation)
            self._published.notify_all()

    def prepare(self, images) -> None:
        """Latency hiding (the engine's lookahead): convert, encode and write the next generation's
        images into its hidden temporary folder (``outbox/.gen_<g+1>.tmp``, never seen by the lab)
        while this one is presented; ``evaluate`` then only adds the manifest and renames, for the
        same images (anything else: the folder is replaced as always)."""
        g = self.generation + 1  # called while generation self.generation is out
        pixels = images_to_uint8(images)
        pngs, staged = [], None
        if self.image_format == "png":
            pngs = encode_pngs(pixels, self.png_compress_level)
            try:
                staged = self.folder.resolve("outbox") / f".{gen_name(g)}.tmp"
                self.folder.remove_own(staged)
                staged.mkdir()
                write_images(staged, pixels, "png", encoded=pngs)
            except (OSError, StimoptError):  # written again when published, where the error is reported
                staged = None
        self._prepared = (g, images, pixels, request_id(pixels), pngs, staged)

    def _pixels(self, images, g: int) -> tuple[np.ndarray, str, list[bytes], int]:
        """(uint8 pixels, request id, PNG files made ahead, how many of them are already in the
        generation's temporary folder) of generation ``g``: what prepare() made when these are its
        images (followed by others: references, repeats), else made now."""
        prepared = self._prepared
        if prepared is not None and prepared[0] > g:
            prepared = None  # made for a later generation (the lookahead thread was quick): kept for it
        else:
            self._prepared = None
        if prepared is not None and prepared[0] == g:
            _, ahead, pixels, rid, pngs, staged = prepared
            written = len(pngs) if staged is not None else 0
            if images is ahead:
                return pixels, rid, pngs, written
            k = len(ahead)
            if len(images) > k and torch.equal(torch.as_tensor(images[:k]), torch.as_tensor(ahead)):
                pixels = np.concatenate([pixels, images_to_uint8(images[k:])])
                return pixels, request_id(pixels), pngs, written
        pixels = images_to_uint8(images)
        return pixels, request_id(pixels), [], 0

    @property
    def presentations_per_image(self) -> int:
        """Trials per image shown (what ``budget_counts=presentations`` counts)."""
        return self.repeats

    def trial_records(self) -> list[dict] | None:
        """Per image of the last generation, with spike times (``target.window``): the trials used,
        each with its window and baseline-window counts per channel, and the image's mean baseline;
        the engine stores them in the evaluations' ``trials`` column. None without a window."""
        return self._trial_records

    # -- state ------------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {"generation": self.generation}

    def load_state_dict(self, state: dict) -> None:
        self.generation = int(state.get("generation", 0))

    # -- one generation ------------------------------------------------------------------------------
    def _published_rid(self, folder) -> str | None:
        """The request id of a generation folder stimopt published (a real folder with a manifest)."""
        fd, _ = self.folder.open_regular(folder / "manifest.json")
        if fd is None:
            return None
        try:
            with os.fdopen(fd, "rb") as f:
                rid = json.loads(f.read(1 << 20)).get("request_id")
        except (OSError, ValueError, AttributeError, RecursionError):
            return None
        return rid if isinstance(rid, str) and _RID.match(rid) else None

    def _publish(self, g: int, pixels: np.ndarray, rid: str, encoded=(), written: int = 0) -> tuple[bool, dict]:
        """Write outbox/gen_g unless that exact request is already there: (whether it wrote, the manifest)."""
        outbox = self.folder.resolve("outbox")
        folder = outbox / gen_name(g)  # the entry itself: a symlink there is never followed
        try:
            st = os.lstat(folder)
        except FileNotFoundError:
            st = None
        if st is not None:
            old = self._published_rid(folder) if stat.S_ISDIR(st.st_mode) else None
            if old == rid and not self.represent:
                return False, self._read_manifest(folder)
            published = stat.S_ISDIR(st.st_mode) and os.path.lexists(folder / "manifest.json")
            what = old or ("unreadable" if published else "unpublished" if stat.S_ISDIR(st.st_mode) else "not-a-folder")
            stamp = f"{gen_name(g)}-{what}-{time.time_ns()}"
            self.folder.move_aside(folder, "outbox/stale", stamp)  # kept, never deleted or followed
            inbox_file = self.folder.entry("inbox", f"{gen_name(g)}.jsonl")
            if published and os.path.lexists(inbox_file):  # the answers to the old request go with it
                self.folder.move_aside(inbox_file, "inbox/stale", f"{stamp}.jsonl")
        tmp = outbox / f".{gen_name(g)}.tmp"
        if not (written and os.path.isdir(tmp) and not os.path.islink(tmp)):  # staged by prepare(): kept
            written = 0
            self.folder.remove_own(tmp)
            tmp.mkdir()
        _crash_point("outbox", g)
        files = write_images(tmp, pixels, self.image_format, self.png_compress_level, encoded, written)
        manifest = {
            "protocol": PROTOCOL_WINDOWS if self.window else PROTOCOL, "generation": g, "request_id": rid,
            "images": [{"index": i, "file": f} for i, f in enumerate(files)],
            "height": int(pixels.shape[1]), "width": int(pixels.shape[2]),
            "repeats": self.repeats, "n_channels": self.n_channels,
            "inbox": f"inbox/{gen_name(g)}.jsonl", "created": time.time(), "deadline": time.time() + self.timeout_s,
        }
        if self.window:
            manifest.update(window=list(self.window), baseline_window=self.baseline_window and list(self.baseline_window))
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1))
        os.replace(tmp, folder)  # atomic: the lab sees the whole generation or nothing
        if self._answered is not None:  # stimopt's time between the last answer of g-1 and this manifest
            self._critical = (time.perf_counter() - self._answered[0], time.process_time() - self._answered[1])
        return True, manifest

    def _read_manifest(self, folder) -> dict:
        fd, _ = self.folder.open_regular(folder / "manifest.json")
        try:
            with os.fdopen(fd, "rb") as f:
                return json.loads(f.read(1 << 20))
        except (OSError, ValueError, TypeError):
            return {}

    def _append(self, name: str, records: list[dict], problems: list[str]) -> None:
        if not records:
            return
        try:
            self.folder.append(name, "".join(json.dumps(r) + "\n" for r in records))
        except (OSError, StimoptError) as exc:  # the session goes on; the answers are in the run's store
            problems.append(str(exc))

    def evaluate(self, images):
        t0, c0 = time.perf_counter(), time.process_time()
        g = self.generation
        self._critical = None
        pixels, rid, encoded, written = self._pixels(images, g)
        try:
            wrote, manifest = self._publish(g, pixels, rid, encoded, written)
        except OSError as exc:
            self._mark_published(g)  # a full disk, a read-only share: nothing was shown for this generation
            raise StimoptError(f"cannot publish generation {g} in {self.outbox}: {exc.strerror or exc}; "
                               "fix that and resume the run (resume=RUN_DIR)") from None
        name = f"{gen_name(g)}.jsonl"
        reader = InboxReader(self.inbox / name, g, rid, len(pixels), self.n_channels, self.repeats,
                             opener=self.folder.open_regular, window=self.window, baseline_window=self.baseline_window)
        rejected, problems = [], []
        if self.transport == "zmq":
            if self.link is None:
                self.link = ZmqLink(self.endpoint)
            self.link.send(json.dumps({**manifest, "folder": f"outbox/{gen_name(g)}"}).encode())
        self._mark_published(g)  # out: the lookahead thread may work now

        def poll(final=False):
            if self.link is not None:
                data = self.link.drain()
                if data:
                    try:
                        self.folder.append(f"inbox/{name}", data)  # the journal: what the parser reads
                    except (OSError, StimoptError) as exc:
                        problems.append(f"journal: {exc}")
            _crash_point("read", g)
            reader.poll(final)
            for r in reader.take_rejected():
                rejected.append({"generation": g, "request_id": rid, "file": f"inbox/{name}", **r})
            if len(rejected) >= 10_000:
                self._append("rejected.jsonl", rejected, problems)
                rejected.clear()

        deadline = time.perf_counter() + self.timeout_s
        waited = 0.0
        poll()
        while not reader.complete():
            now = time.perf_counter()
            if now >= deadline:
                poll(final=True)
                break
            nap = min(self.poll_s, deadline - now)
            _crash_point("wait", g)
            if self.link is not None:
                self.link.wait(nap)
            else:
                time.sleep(nap)
            waited += nap
            poll()
        answered = (time.perf_counter(), time.process_time())  # the last answer read: the next critical path starts
        resp, trials = reader.responses()
        if self.channels is not None:
            resp = resp[:, self.channels]
        self._append("rejected.jsonl", rejected, problems)
        total = time.perf_counter() - t0
        self.last = {
            "generation": g, "request_id": rid, "published": wrote, "n_images": len(pixels),
            "answered": int((trials > 0).sum()), "missing": int((trials == 0).sum()), **reader.stats,
            "done_line": reader.done, "timed_out": not reader.complete(), "inbox_problem": reader.problem,
            "total_s": round(total, 4), "waited_s": round(waited, 4), "own_s": round(total - waited, 4),
            "own_cpu_s": round(time.process_time() - c0, 4),
            "critical_s": self._critical and round(self._critical[0], 4),
            "critical_cpu_s": self._critical and round(self._critical[1], 4),
        }
        if self.window is not None:  # spike times: the windows, the baseline per image and per trial
            base = reader.baselines()
            self.last.update(window=list(self.window), baseline_window=self.baseline_window and list(self.baseline_window),
                             baseline=[[None if math.isnan(v) else float(v) for v in row] for row in base],
                             spike_trials=reader.trials)
            per_image = [{"baseline": row, "trials": []} for row in self.last["baseline"]]
            for t in reader.trials:
                per_image[t["index"]]["trials"].append({"repeat": t["repeat"], "window": t["window"], "baseline": t["baseline"]})
            self._trial_records = per_image
        else:
            self._trial_records = None
        if self.link is not None:
            self.last["transport"] = "zmq"
        self._append("log.jsonl", [self.last], problems)
        self.last["log_problem"] = "; ".join(problems) or None
        n_rejected = sum(v for k, v in reader.stats.items() if k != "trials")
        if reader.problem:
            log.warning("rig generation %d: %s", g, reader.problem)
        if n_rejected:
            kinds = ", ".join(f"{k} {v}" for k, v in reader.stats.items() if k != "trials" and v)
            log.warning("rig generation %d: %d inbox line(s) not used (%s): see rejected.jsonl", g, n_rejected, kinds)
        for p in problems:
            log.warning("rig generation %d: %s", g, p)
        self.generation = g + 1
        self._answered = answered
        _crash_point("commit", g)
        return resp if self.n_outputs > 1 else resp[:, 0]

    def close(self) -> None:
        if self.link is not None:
            self.link.close()
            self.link = None

    def describe(self) -> str:
        extra = (f", zmq={self.endpoint}" if self.transport == "zmq" else "") + (f", window={list(self.window)}" if self.window else "")
        return f"rig:{self.dir.name}(presentations={self.repeats}, channels={self.n_outputs}, timeout={self.timeout_s:g}s{extra})"
