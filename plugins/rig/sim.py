"""``stimopt-rig-sim``: plays the lab's side of the rig protocol with a model neuron.

A separate process that watches ``RIG_DIR/outbox`` for generations it has not presented, "shows"
each image ``repeats`` times (the manifest's, or ``--repeats``), draws Poisson spike counts from
a CNN unit's response (rate = baseline + gain x softplus(response)), and appends one JSON line
per trial to the generation's inbox file, then a ``done`` line. Faults for testing:
``--latency`` (seconds before the first answer), ``--trial-s`` (per trial), ``--drop P``
(dropped trials), ``--duplicate P`` (trials written twice), ``--late G,...`` (answer generation
G only after ``--late-s``), ``--truncate G,...`` (the last trial of G cut mid-line, no done line),
``--old-lines G,...`` (lines of generation G-1 written first into G's file), ``--reorder``
(trial lines shuffled), ``--spikes`` (spike times in the manifest's window, stimopt-rig/2).
``--transport zmq --endpoint tcp://127.0.0.1:PORT``: the same over ZeroMQ (``simzmq.py``).

What it presented is appended to ``RIG_DIR/sim_presented.jsonl`` (and read back on start, so a
restarted simulator does not present a generation twice). Spike counts are seeded by (seed,
generation, request_id): the same images in the same generation get the same counts, so a killed
and resumed run ends exactly as an uninterrupted one. It stops after ``--idle-exit`` seconds
without a new generation, after ``--max-generations``, or when ``RIG_DIR/STOP`` exists.

    stimopt-rig-sim RIG_DIR --model resnet18 --weights random --layer layer2 --input-size 32
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from stimopt.errors import StimoptError


def _ints(text: str | None) -> set[int]:
    return {int(v) for v in text.split(",") if v.strip()} if text else set()


class LabSim:
    """The lab's side: ``step()`` presents every new generation in the outbox."""

    def __init__(self, rig_dir, model: str | torch.nn.Module = "resnet18", layer: str = "layer2", unit: int = 0,
                 weights: str = "random", input_size: int = 32, n_channels: int = 1, repeats: int | None = None,
                 baseline: float = 2.0, gain: float = 5.0, latency: float = 0.0, trial_s: float = 0.0,
                 drop: float = 0.0, duplicate: float = 0.0, late=(), late_s: float = 2.0, truncate=(),
                 old_lines=(), seed: int = 0, reorder: bool = False, spikes: bool = False):
        from stimopt_plugins.cnn import CNNUnit

        self.dir = Path(rig_dir)
        (self.dir / "inbox").mkdir(parents=True, exist_ok=True)
        (self.dir / "outbox").mkdir(parents=True, exist_ok=True)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)  # random-weight models: the same neuron in every process
            self.units = [CNNUnit(model, layer, unit + c, input_size=input_size, weights=weights, device="cpu")
                          for c in range(n_channels)]
        self.n_channels, self.repeats = n_channels, repeats
        self.baseline, self.gain, self.latency, self.trial_s = baseline, gain, latency, trial_s
        self.drop, self.duplicate, self.late, self.late_s = drop, duplicate, set(late), late_s
        self.truncate, self.old_lines, self.seed = set(truncate), set(old_lines), seed
        self.reorder, self.spikes = bool(reorder), bool(spikes)
        self.log_path = self.dir / "sim_presented.jsonl"
        self.presented: set[tuple[int, str]] = set()
        if self.log_path.exists():
            for line in self.log_path.read_text().splitlines():
                try:  # a line cut by a kill of the simulator: that generation was not fully presented
                    rec = json.loads(line)
                    self.presented.add((rec["generation"], rec["request_id"]))
                except (ValueError, KeyError, TypeError):
                    continue

    def pending(self) -> list[tuple[Path, dict]]:
        out = []
        for manifest in sorted(self.dir.glob("outbox/gen_*/manifest.json")):
            try:
                m = json.loads(manifest.read_text())
                key = (m["generation"], m["request_id"])
            except (OSError, ValueError, KeyError, TypeError):  # not a manifest stimopt published
                continue
            if key not in self.presented:
                out.append((manifest.parent, m))
        return out

    def load_images(self, folder: Path, manifest: dict) -> torch.Tensor:
        files = [im["file"] for im in manifest["images"]]
        if files and files[0].startswith("images.npy"):
            pixels = np.load(folder / "images.npy")
        else:
            from PIL import Image

            pixels = np.stack([np.asarray(Image.open(folder / f).convert("RGB")) for f in files])
        return torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 255.0

    def rates(self, images: torch.Tensor) -> np.ndarray:
        with torch.no_grad():
            r = torch.stack([u.evaluate(images) for u in self.units], dim=1)  # [B, channels]
        return (self.baseline + self.gain * F.softplus(r)).double().numpy()

    def _spike_line(self, g: int, i: int, rep: int, counts: np.ndarray, window, baseline_window, rng) -> dict:
        """Spike times (s after onset): ``counts`` spikes in the window, Poisson(baseline) in the baseline window."""
        trains = []
        for c in counts:
            t = list(rng.uniform(window[0], window[1], int(c)))
            if baseline_window:
                t += list(rng.uniform(baseline_window[0], baseline_window[1], rng.poisson(self.baseline)))
            trains.append(sorted(round(float(v), 6) for v in t))
        return {"generation": g, "index": i, "repeat": rep, "spikes": trains}

    def answer(self, folder: Path, manifest: dict) -> tuple[np.ndarray, list[str], bool]:
        """One generation's trial lines (deterministic in seed, generation, request), the counts
        [B, repeats, channels] (NaN = dropped) and whether the last line is to be cut."""
        g, rid = int(manifest["generation"]), manifest["request_id"]
        repeats = int(self.repeats or manifest.get("repeats", 1))
        rate = self.rates(self.load_images(folder, manifest))
        rng = np.random.default_rng([self.seed, g, int(rid[:8], 16)])
        counts = rng.poisson(rate[:, None, :], size=(len(rate), repeats, rate.shape[1])).astype(np.float64)
        dropped = rng.random((len(rate), repeats)) < self.drop
        dup = rng.random((len(rate), repeats)) < self.duplicate
        counts[dropped] = np.nan
        window = manifest.get("window") if self.spikes else None
        lines = []
        if g in self.old_lines:
            lines += [json.dumps({"generation": g - 1, "index": i, "repeat": 0, "counts": [99.0] * rate.shape[1]}) for i in range(len(rate))]
        for rep in range(repeats):  # trials in presentation order: every image once per repeat
            for i in range(len(rate)):
                if dropped[i, rep]:
                    continue
                rec = (self._spike_line(g, i, rep, counts[i, rep], window, manifest.get("baseline_window"), rng) if window
                       else {"generation": g, "index": i, "repeat": rep, "counts": counts[i, rep].tolist()})
                line = json.dumps(rec)
                lines += [line, line] if dup[i, rep] else [line]
        if self.reorder:  # the trial lines in another order (the stale ones stay first)
            n_old = len(rate) if g in self.old_lines else 0
            head, tail = lines[:n_old], lines[n_old:]
            lines = head + [tail[j] for j in rng.permutation(len(tail))]
        truncate = g in self.truncate
        if not truncate:
            lines.append(json.dumps({"generation": g, "done": True}))
        return counts, lines, truncate

    def _presented(self, g: int, rid: str, n: int) -> None:
        with open(self.log_path, "a") as f:
            f.write(json.dumps({"generation": g, "request_id": rid, "n": n, "time": time.time()}) + "\n")
        self.presented.add((g, rid))

    def present(self, folder: Path, manifest: dict) -> np.ndarray:
        """Answer one generation into its inbox file; returns the counts [B, repeats, channels]."""
        g, rid = int(manifest["generation"]), manifest["request_id"]
        counts, lines, truncate = self.answer(folder, manifest)
        time.sleep(self.latency + (self.late_s if g in self.late else 0.0))
        path = self.dir / manifest.get("inbox", f"inbox/gen_{g:06d}.jsonl")
        with open(path, "a") as f:
            for k, line in enumerate(lines):
                if truncate and k == len(lines) - 1:
                    f.write(line[: len(line) // 2])  # cut mid-line: the rig crashed while writing
                    f.flush()
                    break
                f.write(line + "\n")
                f.flush()
                if self.trial_s:
                    time.sleep(self.trial_s)
        self._presented(g, rid, len(counts))
        return counts

    def step(self) -> int:
        todo = self.pending()
        for folder, manifest in todo:
            self.present(folder, manifest)
        return len(todo)

    def serve(self, idle_exit: float = 30.0, max_generations: int | None = None, poll_s: float = 0.02) -> int:
        served, last = 0, time.monotonic()
        while True:
            if (self.dir / "STOP").exists():
                return served
            n = self.step()
            served += n
            if n:
                last = time.monotonic()
            if max_generations is not None and served >= max_generations:
                return served
            if time.monotonic() - last > idle_exit:
                return served
            time.sleep(poll_s)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="stimopt-rig-sim", description="Simulate the lab's side of the stimopt rig protocol.")
    p.add_argument("rig_dir")
    p.add_argument("--model", default="resnet18", help="torchvision/timm model of the simulated neuron")
    p.add_argument("--layer", default="layer2")
    p.add_argument("--unit", type=int, default=0)
    p.add_argument("--weights", default="random", help="pretrained | random | PATH")
    p.add_argument("--input-size", type=int, default=32)
    p.add_argument("--channels", type=int, default=1, help="recorded channels (units unit, unit+1, ...)")
    p.add_argument("--repeats", type=int, default=None, help="default: the manifest's")
    p.add_argument("--baseline", type=float, default=2.0)
    p.add_argument("--gain", type=float, default=5.0)
    p.add_argument("--latency", type=float, default=0.0)
    p.add_argument("--trial-s", type=float, default=0.0)
    p.add_argument("--drop", type=float, default=0.0)
    p.add_argument("--duplicate", type=float, default=0.0)
    p.add_argument("--late", default="", help="generations answered only after --late-s (comma list)")
    p.add_argument("--late-s", type=float, default=2.0)
    p.add_argument("--truncate", default="", help="generations whose last line is cut (comma list)")
    p.add_argument("--old-lines", default="", help="generations whose file starts with lines of the previous one")
    p.add_argument("--reorder", action="store_true", help="trial lines in a shuffled order")
    p.add_argument("--spikes", action="store_true", help="spike times in the manifest's window instead of counts")
    p.add_argument("--transport", choices=("file", "zmq"), default="file")
    p.add_argument("--endpoint", default=None, help="--transport zmq: where to bind, e.g. tcp://127.0.0.1:5555")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--idle-exit", type=float, default=30.0)
    p.add_argument("--max-generations", type=int, default=None)
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    try:
        sim = LabSim(a.rig_dir, a.model, a.layer, a.unit, a.weights, a.input_size, a.channels, a.repeats, a.baseline,
                     a.gain, a.latency, a.trial_s, a.drop, a.duplicate, _ints(a.late), a.late_s, _ints(a.truncate),
                     _ints(a.old_lines), a.seed, a.reorder, a.spikes)
        if a.transport == "zmq":
            from .zmqlink import _zmq, check_endpoint

            check_endpoint(a.endpoint)
            _zmq()
    except StimoptError as exc:
        print(f"stimopt-rig-sim: error: {exc}", file=sys.stderr)
        sys.exit(2)
    print(f"stimopt-rig-sim: serving {a.rig_dir}" + (f" on {a.endpoint}" if a.transport == "zmq" else ""),
          file=sys.stderr, flush=True)
    if a.transport == "zmq":
        from .simzmq import serve_zmq

        n = serve_zmq(sim, a.endpoint, a.idle_exit, a.max_generations)
    else:
        n = sim.serve(a.idle_exit, a.max_generations)
    print(f"stimopt-rig-sim: presented {n} generations", file=sys.stderr)
