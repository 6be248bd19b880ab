"""The lab's side of stimopt's file protocol (``stimopt-rig/1``) with PsychoPy, step by step.

Run it on the presentation machine, with the rig folder shared with stimopt::

    python psychopy_client.py /data/rig/session_12 --screen 1 --stim-s 0.2 --iti-s 0.3

Steps (docs/neural_targets.md, "The protocol"):

1. ``pending()``: look in ``RIG_DIR/outbox/`` for ``gen_NNNNNN/manifest.json``. stimopt publishes
   a generation atomically (a folder renamed into place), so a manifest that is there is complete.
   A (generation, request_id) already presented (listed in ``RIG_DIR/client_presented.txt``) is
   skipped, so a restarted client presents nothing twice.
2. ``load_images()``: the manifest's image files (``img_0000.png``, ...), as PsychoPy textures.
3. ``present_generation()``: every image once per repeat, ``manifest["repeats"]`` times; each trial
   is ``display.show(image)`` (PsychoPy: an ``ImageStim`` drawn and flipped, held ``--stim-s``,
   then a blank ``--iti-s``) and ``recorder(index, repeat)``, the spike counts of that trial, one
   per channel (``manifest["n_channels"]``). THIS IS WHERE YOUR ACQUISITION GOES: replace
   ``FakeRecorder`` by a function that reads the counts of the stimulus window from your
   recording system (or returns ``{"spikes": [[t, ...], ...]}``, spike times in seconds after
   onset per channel, for ``stimopt-rig/2``: stimopt counts them in ``target.window``).
4. ``trial_line()``: after each trial, one JSON line appended to the manifest's inbox file::

       {"generation": 12, "index": 3, "repeat": 0, "counts": [5]}

   and, after the last trial, ``{"generation": 12, "done": true}``. A trial that failed (broken
   fixation) is not written, or written later with the same repeat number; stimopt uses the first
   valid trial per (index, repeat) and records an image with none as missing (NaN).
5. ``serve()``: repeat until ``RIG_DIR/STOP`` exists or ``--idle-exit`` seconds pass without work.

PsychoPy is imported only by ``PsychoPyDisplay`` (``pip install psychopy``); everything else is
plain Python, so the protocol part runs (and is tested) without it.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def trial_line(generation: int, index: int, repeat: int, answer) -> str:
    """One inbox line: ``answer`` is a list of counts (one per channel) or {"spikes": [[t, ...], ...]}."""
    rec = {"generation": int(generation), "index": int(index), "repeat": int(repeat)}
    if isinstance(answer, dict):
        rec["spikes"] = [[float(t) for t in train] for train in answer["spikes"]]
    else:
        rec["counts"] = [float(c) for c in answer]
    return json.dumps(rec) + "\n"


def done_line(generation: int) -> str:
    return json.dumps({"generation": int(generation), "done": True}) + "\n"


def read_presented(rig_dir: Path) -> set[str]:
    path = Path(rig_dir) / "client_presented.txt"
    return set(path.read_text().split("\n")) - {""} if path.exists() else set()


def pending(rig_dir: Path, presented: set[str]) -> list[tuple[Path, dict]]:
    """Step 1: the published generations not presented yet, in order."""
    out = []
    for manifest in sorted(Path(rig_dir).glob("outbox/gen_*/manifest.json")):
        try:
            m = json.loads(manifest.read_text())
            key = f"{int(m['generation'])} {m['request_id']}"
        except (OSError, ValueError, KeyError, TypeError):
            continue  # not a manifest stimopt published
        if key not in presented:
            out.append((manifest.parent, m))
    return out


def load_images(folder: Path, manifest: dict) -> list[Path]:
    """Step 2: the image files, in index order (PsychoPy loads a path as a texture)."""
    return [Path(folder) / im["file"] for im in sorted(manifest["images"], key=lambda im: im["index"])]


def present_generation(rig_dir: Path, folder: Path, manifest: dict, display, recorder) -> int:
    """Steps 3-4: present every image ``repeats`` times, append a line per trial, then done."""
    g = int(manifest["generation"])
    images = load_images(folder, manifest)
    inbox = Path(rig_dir) / manifest["inbox"]
    n = 0
    for repeat in range(int(manifest.get("repeats", 1))):
        for index, image in enumerate(images):
            display.show(image)
            answer = recorder(index, repeat)
            if answer is None:  # the trial failed: not written
                continue
            with open(inbox, "a") as f:  # appended and closed each trial: stimopt reads as they come
                f.write(trial_line(g, index, repeat, answer))
            n += 1
    with open(inbox, "a") as f:
        f.write(done_line(g))
    with open(Path(rig_dir) / "client_presented.txt", "a") as f:
        f.write(f"{g} {manifest['request_id']}\n")
    return n


def serve(rig_dir, display, recorder, idle_exit: float = 60.0, poll_s: float = 0.05, max_generations=None) -> int:
    """Step 5: the loop."""
    rig_dir, presented, served, last = Path(rig_dir), read_presented(rig_dir), 0, time.monotonic()
    while not (rig_dir / "STOP").exists() and time.monotonic() - last < idle_exit:
        if max_generations is not None and served >= max_generations:
            break
        todo = pending(rig_dir, presented)
        for folder, manifest in todo:
            present_generation(rig_dir, folder, manifest, display, recorder)
            presented.add(f"{int(manifest['generation'])} {manifest['request_id']}")
            served += 1
            last = time.monotonic()
        if not todo:
            time.sleep(poll_s)
    return served


class PsychoPyDisplay:
    """Shows one image per trial in a PsychoPy window: stimulus ``stim_s``, then blank ``iti_s``."""

    def __init__(self, screen: int = 0, size_px: int = 224, stim_s: float = 0.2, iti_s: float = 0.3, fullscr: bool = False):
        from psychopy import core, visual  # pip install psychopy

        self.core, self.stim_s, self.iti_s = core, stim_s, iti_s
        self.win = visual.Window(screen=screen, fullscr=fullscr, color=(0, 0, 0), units="pix")
        self.stim = visual.ImageStim(self.win, size=(size_px, size_px))
        self.onsets: list[float] = []  # flip times: align your spike times to these

    def show(self, image: Path) -> None:
        self.stim.image = str(image)
        self.stim.draw()
        self.onsets.append(self.win.flip())
        self.core.wait(self.stim_s)
        self.win.flip()  # blank
        self.core.wait(self.iti_s)

    def close(self) -> None:
        self.win.close()


class FakeRecorder:
    """A stand-in for the acquisition: a fixed count per channel (replace by your recording system)."""

    def __init__(self, n_channels: int = 1, count: float = 5.0):
        self.n_channels, self.count = n_channels, count

    def __call__(self, index: int, repeat: int):
        return [self.count] * self.n_channels


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description="The lab's side of stimopt's rig protocol, with PsychoPy.")
    p.add_argument("rig_dir")
    p.add_argument("--screen", type=int, default=0)
    p.add_argument("--size-px", type=int, default=224)
    p.add_argument("--stim-s", type=float, default=0.2)
    p.add_argument("--iti-s", type=float, default=0.3)
    p.add_argument("--fullscr", action="store_true")
    p.add_argument("--channels", type=int, default=1)
    p.add_argument("--idle-exit", type=float, default=600.0)
    a = p.parse_args(argv)
    display = PsychoPyDisplay(a.screen, a.size_px, a.stim_s, a.iti_s, a.fullscr)
    try:
        n = serve(a.rig_dir, display, FakeRecorder(a.channels), a.idle_exit)
    finally:
        display.close()
    print(f"presented {n} generations")


if __name__ == "__main__":
    main()
