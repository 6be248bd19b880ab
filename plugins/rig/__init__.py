"""``target=rig``: the closed loop with a real presentation/recording rig, through files.

Protocol ``stimopt-rig/1`` (full text in docs/neural_targets.md), in ``rig_dir``:

1. Generation ``g`` (0, 1, 2, ...): stimopt publishes ``outbox/gen_<g:06d>/`` atomically (written
   as a hidden temporary folder, then renamed): ``img_<i:04d>.png`` (or one ``images.npy``
   [B,H,W,3] uint8 with ``image_format=npy``) and ``manifest.json`` (protocol, generation,
   request_id, the image files, repeats wanted, channels, inbox file, deadline).
2. The lab presents each image ``repeats`` times (``target.presentations``) and appends one JSON
   line per trial to ``inbox/gen_<g:06d>.jsonl``::

       {"generation": 12, "index": 3, "repeat": 0, "counts": [5, 0, 2]}   # one value per channel
       {"generation": 12, "done": true}                                   # optional: that is all

3. stimopt polls the inbox file until every image has ``repeats`` valid trials, a ``done`` line,
   or ``timeout_s`` passed (it never waits longer). Response = mean over the first ``repeats``
   valid trials of each image; an image with none is NaN (recorded as missing). What makes a line
   valid, and what happens to the others, is the parser's doc (``inbox.py``): each line on its
   own, integers that are integers, counts finite and in ``0..1e6``; every line not used is
   counted in ``log.jsonl`` and written to ``rejected.jsonl`` with its line number and reason.

``stimopt-rig/2`` (``target.window`` set): a line may carry spike times (``"spikes": [[t, ...], ...]``,
seconds after onset, per channel) instead of counts; they are counted in ``target.window`` (the
response) and ``target.baseline_window`` (recorded in ``log.jsonl``). ``target.transport=zmq``
(``zmqlink.py``): the manifest goes out and the trial lines come back as ZeroMQ messages, journalled
into the same inbox file, so every rule above holds unchanged.

The rig folder is shared with the lab's software: nothing is written, moved or read outside it
(``paths.py``: a symlink that leaves it is refused in one line, a named pipe or a folder where a
file is expected is never opened as one, whatever sits at ``outbox/gen_<g>`` is moved aside).

Resume: the target's state is the generation counter, checkpointed with the run. After a kill,
the engine re-asks the same codes (optimizers are deterministic), so the same images come back
for generation ``g``: when ``outbox/gen_g`` already holds a manifest with the same request_id
(a hash of the images), it is not written again, so the lab does not present it again, and the
answers already in the inbox count. Different images (or ``represent=true``) move the old folder
and inbox file to ``outbox/stale/`` and ``inbox/stale/`` and publish afresh.
"""
from __future__ import annotations

from pathlib import Path

import stimopt

from .images import encode_pngs, images_to_uint8, request_id, write_images
from .inbox import InboxReader
from .paths import RigFolder, UnsafePath
from .target import PROTOCOL, RigTarget, gen_name

__all__ = ["PROTOCOL", "InboxReader", "RigFolder", "RigTarget", "UnsafePath", "encode_pngs", "gen_name",
           "images_to_uint8", "request_id", "write_images"]


@stimopt.hookimpl
def register_targets(register):
    register("rig", RigTarget)


@stimopt.hookimpl
def register_config_dirs(register):
    register(str(Path(__file__).parent / "conf"))
