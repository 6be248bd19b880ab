"""``target.transport=zmq``: the manifest and the trial lines travel as ZeroMQ messages.

stimopt connects a DEALER socket to ``target.endpoint`` (``tcp://HOST:PORT``); the lab's software
binds a ROUTER there (it is the long-lived side; stimopt may be killed and resumed). Per
generation stimopt still writes the images and ``manifest.json`` into ``outbox/gen_<g>/`` of the
shared folder, then sends the manifest (the same JSON, plus ``"folder": "outbox/gen_<g>"``) as
one message. The lab answers with one message per trial line: exactly the bytes of an inbox
line (protocol ``stimopt-rig/1`` or ``/2``), and the ``done`` line last.

Every message received is appended, as one line, to ``inbox/gen_<g>.jsonl`` in the shared
folder (the journal), which the ordinary inbox parser reads: the rules, the NaN for a missing
trial, duplicates, stale generations and the timeout are those of the file protocol, and a killed
run finds what it had received in the journal. A message with a newline inside it cannot become
two lines: its newlines are written as NUL bytes, so it is one ``malformed`` line. A message
longer than the parser's line limit closes the connection (``MAXMSGSIZE``) and zmq reconnects.

Resume: the resumed run sends the same manifest (same ``request_id``) again; a lab that already
presented it sends its lines again instead of presenting again (the simulator does), and the
lines already in the journal come back as ``duplicates``: counted, not used twice.

The ``zmq`` import stays in this module (pyzmq, imported only with ``transport=zmq``).
"""
from __future__ import annotations

import re

from stimopt.errors import StimoptError

from .inbox import MAX_LINE_BYTES

_ENDPOINT = re.compile(r"^(tcp://[A-Za-z0-9.\-\[\]:*]+:\d{1,5}|ipc://[^\s]+)$")
MAX_MESSAGES_PER_DRAIN = 100_000


def check_endpoint(endpoint) -> str:
    if not isinstance(endpoint, str) or not _ENDPOINT.match(endpoint):
        raise StimoptError(f"target.endpoint must be tcp://HOST:PORT (or ipc://PATH) for target.transport=zmq, got {endpoint!r}")
    return endpoint


def _zmq():
    try:
        import zmq
    except ImportError:
        raise StimoptError("target.transport=zmq needs pyzmq: pip install pyzmq") from None
    return zmq


class ZmqLink:
    """stimopt's end: send manifests, collect trial messages into the journal file."""

    def __init__(self, endpoint: str):
        zmq = _zmq()
        self.endpoint = check_endpoint(endpoint)
        self.ctx = zmq.Context.instance()
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.MAXMSGSIZE, MAX_LINE_BYTES + 1)
        self.sock.setsockopt(zmq.RECONNECT_IVL, 100)
        self.sock.setsockopt(zmq.RECONNECT_IVL_MAX, 1000)
        try:
            self.sock.connect(self.endpoint)
        except zmq.ZMQError as exc:
            self.sock.close(0)
            raise StimoptError(f"target.endpoint={endpoint}: {exc}") from None
        self._zmq = zmq
        self.received = 0

    def send(self, payload: bytes) -> bool:
        """Queue one message (zmq sends it once the lab is connected). False when the queue is full."""
        try:
            self.sock.send(payload, self._zmq.NOBLOCK)
            return True
        except self._zmq.Again:
            return False

    def wait(self, timeout_s: float) -> bool:
        """Wait at most ``timeout_s`` for a message; whether one is there."""
        return bool(self.sock.poll(max(int(timeout_s * 1000), 0), self._zmq.POLLIN))

    def drain(self) -> bytes:
        """Every message waiting, as journal lines (one line per message)."""
        out = []
        for _ in range(MAX_MESSAGES_PER_DRAIN):
            try:
                frames = self.sock.recv_multipart(self._zmq.NOBLOCK)
            except self._zmq.Again:
                break
            payload = b"".join(frames)
            if payload.endswith(b"\n"):
                payload = payload[:-1]
            out.append(payload.replace(b"\n", b"\x00") + b"\n")
        self.received += len(out)
        return b"".join(out)

    def close(self) -> None:
        self.sock.close(0)
