"""``target=rig``: the closed loop with a real presentation/recording rig, through files.

Protocol ``stimopt-rig/1`` (full text in docs/neural_targets.md), in ``rig_dir``:

1. Generation ``g`` (0, 1, 2, ...): stimopt publishes ``outbox/gen_<g:06d>/`` atomically (written
   as a hidden temporary folder, then renamed): ``img_<i:04d>.png`` (or one ``images.npy``
   [B,H,W,3] uint8 with ``image_format=npy``) and ``manifest.json`` (protocol, generation,
   request_id, the image files, repeats wanted, channels, inbox file, deadline).
2. The lab presents each image ``repeats`` times (``target.presentations``) and appends one JSON line per trial to
   ``inbox/gen_<g:06d>.jsonl``::

       {"generation": 12, "index": 3, "repeat": 0, "counts": [5, 0, 2]}   # one value per channel
       {"generation": 12, "done": true}                                   # optional: that is all

   (``"count": 5`` is accepted for one channel; ``request_id`` on a line is optional and, when
   present, must match the manifest's.)
3. stimopt polls the inbox file until every image has ``repeats`` trials, a ``done`` line, or
   ``timeout_s`` passed (it never waits longer). Response = mean over the received repeats per
   channel; an image with no trial is NaN (recorded as missing). Ignored, and counted in
   ``log.jsonl``: duplicate trials (same index and repeat: the first counts), lines for another
   generation or request, malformed lines, a truncated last line.

Resume: the target's state is the generation counter, checkpointed with the run. After a kill,
the engine re-asks the same codes (optimizers are deterministic), so the same images come back
for generation ``g``: when ``outbox/gen_g`` already holds a manifest with the same request_id
(a hash of the images), it is not written again, so the lab does not present it again, and the
answers already in the inbox count. Different images (or ``represent=true``) move the old folder
and inbox file to ``outbox/stale/`` and ``inbox/stale/`` and publish afresh.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import time
from pathlib import Path

import numpy as np
import torch

import stimopt
from stimopt.errors import StimoptError

PROTOCOL = "stimopt-rig/1"


def gen_name(generation: int) -> str:
    return f"gen_{generation:06d}"


def images_to_uint8(images) -> np.ndarray:
    """[B,3,H,W] float in [0,1] -> [B,H,W,3] uint8 (one batched op)."""
    x = torch.as_tensor(images).detach().to("cpu", torch.float32)
    u8 = torch.mul(x, 255.0).add_(0.5).clamp_(0.0, 255.0).to(torch.uint8)  # round half up, one copy
    return np.ascontiguousarray(u8.numpy().transpose(0, 2, 3, 1))


def request_id(pixels: np.ndarray) -> str:
    h = hashlib.sha1(str(pixels.shape).encode())
    h.update(pixels.tobytes())
    return h.hexdigest()[:16]


def encode_pngs(pixels: np.ndarray, level: int = 0) -> list[bytes]:
    """[B,H,W,3] uint8 -> PNG files (8-bit RGB, filter 0), the row filtering done for the batch at once."""
    import struct
    import zlib

    b, h, w, _ = pixels.shape
    rows = np.zeros((b, h, 1 + 3 * w), np.uint8)  # each scanline: filter byte 0, then RGB
    rows[:, :, 1:] = pixels.reshape(b, h, 3 * w)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    head = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
    tail = chunk(b"IEND", b"")
    return [head + chunk(b"IDAT", zlib.compress(r.tobytes(), level)) + tail for r in rows]


def write_images(folder: Path, pixels: np.ndarray, image_format: str, png_compress_level: int = 0) -> list[str]:
    if image_format == "npy":
        np.save(folder / "images.npy", pixels)
        return [f"images.npy#{i}" for i in range(len(pixels))]
    names = [f"img_{i:04d}.png" for i in range(len(pixels))]
    for name, data in zip(names, encode_pngs(pixels, png_compress_level)):  # one file per image is the protocol
        (folder / name).write_bytes(data)
    return names


class InboxReader:
    """Incremental reader of one generation's inbox file: only complete lines are consumed."""

    def __init__(self, path: Path, generation: int, rid: str, n: int, n_channels: int):
        self.path, self.generation, self.rid, self.n, self.c = path, generation, rid, n, n_channels
        self.offset = 0
        self.trials: dict[tuple[int, int], list[float]] = {}
        self.done = False
        self.stats = {"trials": 0, "duplicates": 0, "other_generation": 0, "malformed": 0, "truncated": 0}

    def _line(self, raw: bytes, rec=None) -> None:
        if rec is None:
            raw = raw.strip()
            if not raw:
                return
            try:
                rec = json.loads(raw)
            except ValueError:
                self.stats["malformed"] += 1
                return
        if not isinstance(rec, dict):
            self.stats["malformed"] += 1
            return
        if rec.get("generation") != self.generation or rec.get("request_id", self.rid) != self.rid:
            self.stats["other_generation"] += 1
            return
        if rec.get("done"):
            self.done = True
            return
        try:
            index, repeat = int(rec["index"]), int(rec.get("repeat", 0))
            counts = rec["counts"] if "counts" in rec else [rec["count"]]
            counts = [float(v) for v in (counts if isinstance(counts, list) else [counts])]
        except (KeyError, TypeError, ValueError):
            self.stats["malformed"] += 1
            return
        if not 0 <= index < self.n or len(counts) != self.c or repeat < 0:
            self.stats["malformed"] += 1
            return
        if (index, repeat) in self.trials:
            self.stats["duplicates"] += 1
            return
        self.trials[(index, repeat)] = counts
        self.stats["trials"] += 1

    def poll(self, final: bool = False) -> None:
        """Read what was appended since the last poll; ``final``: also try a last unterminated line."""
        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                data = f.read()
        except FileNotFoundError:
            return
        end = data.rfind(b"\n") + 1
        lines = [raw for raw in data[:end].split(b"\n") if raw.strip()]
        try:  # the common case, every line well formed: one parse for all of them
            records = json.loads(b"[" + b",".join(lines) + b"]")
        except ValueError:
            records = None
        for k, raw in enumerate(lines):
            self._line(raw, records[k] if records is not None else None)
        self.offset += end
        rest = data[end:].strip()
        if final and rest:
            before = self.stats["malformed"]
            self._line(rest)
            if self.stats["malformed"] > before:  # an unterminated line that is not JSON: truncated
                self.stats["malformed"] -= 1
                self.stats["truncated"] += 1

    def complete(self, repeats: int) -> bool:
        if self.done:
            return True
        per_image = np.zeros(self.n, int)
        if self.trials:
            np.add.at(per_image, np.array([k[0] for k in self.trials]), 1)
        return bool((per_image >= repeats).all())

    def responses(self) -> tuple[np.ndarray, np.ndarray]:
        """(mean over received repeats [n, channels] with NaN where none, trials per image [n])."""
        sums = np.zeros((self.n, self.c))
        cnt = np.zeros(self.n)
        if self.trials:
            idx = np.array([k[0] for k in self.trials])
            np.add.at(sums, idx, np.array(list(self.trials.values()), dtype=np.float64))
            np.add.at(cnt, idx, 1)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(cnt[:, None] > 0, sums / cnt[:, None], np.nan), cnt


class RigTarget(stimopt.Target):
    """Presents each generation through ``rig_dir`` (see the module doc for the file protocol)."""

    def __init__(self, rig_dir=None, timeout_s: float = 60.0, poll_s: float = 0.02, presentations: int = 1,
                 n_channels: int = 1, channels=None, image_format: str = "png", represent: bool = False,
                 png_compress_level: int = 0):
        if not rig_dir:
            raise StimoptError("target=rig needs target.rig_dir=PATH (the folder shared with the lab's software)")
        if not (isinstance(timeout_s, (int, float)) and 0 < float(timeout_s) < math.inf):
            raise StimoptError(f"target.timeout_s must be a positive number of seconds, got {timeout_s}")
        if int(presentations) < 1 or int(n_channels) < 1:
            raise StimoptError("target.presentations and target.n_channels must be >= 1")
        if image_format not in ("png", "npy"):
            raise StimoptError(f"target.image_format must be png or npy, got '{image_format}'")
        self.dir = Path(str(rig_dir))
        self.outbox, self.inbox = self.dir / "outbox", self.dir / "inbox"
        for d in (self.outbox, self.inbox):
            d.mkdir(parents=True, exist_ok=True)
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
        self.generation = 0
        self.last: dict = {}

    # -- state ------------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {"generation": self.generation}

    def load_state_dict(self, state: dict) -> None:
        self.generation = int(state.get("generation", 0))

    # -- one generation ------------------------------------------------------------------------------
    def _publish(self, g: int, pixels: np.ndarray, rid: str) -> bool:
        """Write outbox/gen_g unless that exact request is already there. Returns whether it wrote."""
        folder = self.outbox / gen_name(g)
        inbox_file = self.inbox / f"{gen_name(g)}.jsonl"
        manifest = folder / "manifest.json"
        if manifest.exists():
            try:
                old = json.loads(manifest.read_text()).get("request_id")
            except (OSError, ValueError):
                old = None
            if old == rid and not self.represent:
                return False
            stamp = f"{gen_name(g)}-{old or 'unreadable'}-{time.time_ns()}"
            (self.outbox / "stale").mkdir(exist_ok=True)
            os.replace(folder, self.outbox / "stale" / stamp)
            if inbox_file.exists():
                (self.inbox / "stale").mkdir(exist_ok=True)
                os.replace(inbox_file, self.inbox / "stale" / f"{stamp}.jsonl")
        elif folder.exists():  # a folder without manifest: never published, not seen by the lab
            shutil.rmtree(folder)
        tmp = self.outbox / f".{gen_name(g)}.tmp"
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
        files = write_images(tmp, pixels, self.image_format, self.png_compress_level)
        (tmp / "manifest.json").write_text(json.dumps({
            "protocol": PROTOCOL, "generation": g, "request_id": rid,
            "images": [{"index": i, "file": f} for i, f in enumerate(files)],
            "height": int(pixels.shape[1]), "width": int(pixels.shape[2]),
            "repeats": self.repeats, "n_channels": self.n_channels,
            "inbox": f"inbox/{gen_name(g)}.jsonl", "created": time.time(), "deadline": time.time() + self.timeout_s,
        }, indent=1))
        os.replace(tmp, folder)  # atomic: the lab sees the whole generation or nothing
        return True

    def evaluate(self, images):
        t0, c0 = time.perf_counter(), time.process_time()
        g = self.generation
        pixels = images_to_uint8(images)
        rid = request_id(pixels)
        wrote = self._publish(g, pixels, rid)
        reader = InboxReader(self.inbox / f"{gen_name(g)}.jsonl", g, rid, len(pixels), self.n_channels)
        t_pub = time.perf_counter()
        deadline = t_pub + self.timeout_s
        waited = 0.0
        reader.poll()
        while not reader.complete(self.repeats):
            now = time.perf_counter()
            if now >= deadline:
                reader.poll(final=True)
                break
            nap = min(self.poll_s, deadline - now)
            time.sleep(nap)
            waited += nap
            reader.poll()
        resp, trials = reader.responses()
        if self.channels is not None:
            resp = resp[:, self.channels]
        timed_out = not reader.complete(self.repeats)
        total = time.perf_counter() - t0
        self.last = {
            "generation": g, "request_id": rid, "published": wrote, "n_images": len(pixels),
            "answered": int((trials > 0).sum()), "missing": int((trials == 0).sum()), **reader.stats,
            "done_line": reader.done, "timed_out": timed_out, "total_s": round(total, 4),
            "waited_s": round(waited, 4), "own_s": round(total - waited, 4),
            "own_cpu_s": round(time.process_time() - c0, 4),
        }
        with open(self.dir / "log.jsonl", "a") as f:
            f.write(json.dumps(self.last) + "\n")
        self.generation = g + 1
        return resp if self.n_outputs > 1 else resp[:, 0]

    def describe(self) -> str:
        return f"rig:{self.dir.name}(presentations={self.repeats}, channels={self.n_outputs}, timeout={self.timeout_s:g}s)"


@stimopt.hookimpl
def register_targets(register):
    register("rig", RigTarget)


@stimopt.hookimpl
def register_config_dirs(register):
    register(str(Path(__file__).parent / "conf"))
