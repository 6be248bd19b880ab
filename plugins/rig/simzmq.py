"""The simulator's side of ``target.transport=zmq`` (``stimopt-rig-sim --transport zmq``).

It binds a ROUTER socket at ``--endpoint`` and waits for manifests. A manifest it has not
presented: the images are read from the shared folder (``manifest["folder"]``), each trial line
is sent back to the sender as one message, ``done`` last, and the generation is appended to
``sim_presented.jsonl``. A manifest it already presented (a resumed stimopt sends it again): the
same lines are sent again at once (they are seeded by seed, generation and request), nothing is
presented again. ``--truncate G`` sends G's last line cut in half (one malformed message).
"""
from __future__ import annotations

import json
import time

from .sim import LabSim


def serve_zmq(sim: LabSim, endpoint: str, idle_exit: float = 30.0, max_generations: int | None = None,
              poll_s: float = 0.02) -> int:
    import zmq

    ctx = zmq.Context.instance()
    sock = ctx.socket(zmq.ROUTER)
    sock.setsockopt(zmq.LINGER, 1000)
    sock.bind(endpoint)
    served, last = 0, time.monotonic()
    root = sim.dir.resolve()
    try:
        while True:
            if (sim.dir / "STOP").exists():
                return served
            if max_generations is not None and served >= max_generations:
                return served
            if time.monotonic() - last > idle_exit:
                return served
            if not sock.poll(int(poll_s * 1000)):
                continue
            frames = sock.recv_multipart()
            if len(frames) != 2:
                continue
            ident, payload = frames
            try:
                manifest = json.loads(payload)
                g, rid = int(manifest["generation"]), manifest["request_id"]
                folder = (sim.dir / manifest["folder"]).resolve()
                if root not in folder.parents:
                    continue  # the images must be in the shared folder
            except (ValueError, KeyError, TypeError):
                continue
            last = time.monotonic()
            replay = (g, rid) in sim.presented
            counts, lines, truncate = sim.answer(folder, manifest)
            if not replay:
                time.sleep(sim.latency + (sim.late_s if g in sim.late else 0.0))
            for k, line in enumerate(lines):
                if truncate and k == len(lines) - 1:
                    line = line[: len(line) // 2]
                sock.send_multipart([ident, line.encode()])
                if sim.trial_s and not replay:
                    time.sleep(sim.trial_s)
            if not replay:
                sim._presented(g, rid, len(counts))
                served += 1
            last = time.monotonic()
    finally:
        sock.close()
