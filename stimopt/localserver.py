"""The one way stimopt's pages are served: on 127.0.0.1 only, until Ctrl-C."""
from __future__ import annotations

from typing import Callable

from stimopt.errors import StimoptError

HOST = "127.0.0.1"  # never any other interface


def listen(make: Callable[[], object], port: int):
    """``make()`` builds the server bound to (HOST, port); a port that cannot be bound is one clear line."""
    try:
        return make()
    except (OSError, OverflowError) as exc:
        raise StimoptError(f"cannot listen on {HOST}:{port} ({getattr(exc, 'strerror', None) or exc}); "
                           "choose another --port") from None


def serve_until_interrupted(server, banner: str) -> None:
    """Print where the page is, serve until Ctrl-C, then close the socket."""
    print(f"{banner} (Ctrl-C stops)", flush=True)
    try:
        server.serve_forever(poll_interval=0.5)
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
