"""``stimopt-watch RUN_DIR --port N``: a live, read-only page for a running session.

A small server (the standard library's ThreadingHTTPServer) on 127.0.0.1 only, at the port the
user names; nothing listens unless this command is started. The page polls ``/state.json`` and
redraws as generations commit: the current best stimuli, the trajectory, missing trials and time
per generation. Everything is read through stimopt.run_reader (read-only SQLite connections, a
short busy timeout, one short read per poll), so the run is never blocked; the watcher itself
keeps to one CPU thread. A run that is killed and resumed is simply read again: the page shows how
long ago the last generation committed and goes on when the resumed run commits the next.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sqlite3
import sys
import threading
import time
from collections import OrderedDict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np

from stimopt import html_images, run_reader
from stimopt.errors import StimoptError
from stimopt.html_templates import environment
from stimopt.localserver import HOST, listen, serve_until_interrupted

N_BEST = 8
CACHE = 256  # rendered stimuli kept in memory


def _code_tag(code) -> str:
    return hashlib.blake2b(np.asarray(code).tobytes(), digest_size=4).hexdigest()


class Watcher:
    """What the page shows, read from the run directory on demand."""

    def __init__(self, run_dir: Path, k: int = N_BEST, images: bool = True):
        self.run_dir, self.k, self.images = Path(run_dir), int(k), images
        self._generator = None
        self._generator_error: str | None = None
        self._png: OrderedDict[str, bytes] = OrderedDict()
        self._lock = threading.Lock()

    def state(self) -> dict:
        store = run_reader.store_path(self.run_dir)
        out = {"run": self.run_dir.name, "run_dir": str(self.run_dir), "server_time": time.time()}
        if not store.exists():
            return {**out, "status": "waiting", "message": f"waiting for the run to start ({store} does not exist yet)"}
        try:
            snap = run_reader.snapshot(self.run_dir, k=self.k, worst=False)
        except sqlite3.Error as exc:  # busy or mid-creation: the page keeps what it has and asks again
            return {**out, "status": "retry", "message": f"store not readable this moment ({exc})"}
        wal = store.with_name(store.name + "-wal")
        wal_stat = wal.stat() if wal.exists() else None  # (a reader may leave an empty one: not a write)
        last_write = max(store.stat().st_mtime, wal_stat.st_mtime if wal_stat and wal_stat.st_size else 0.0)
        cfg = snap["meta"].get("config") or {}
        return {
            **out,
            "status": snap["meta"].get("status", "?"),
            "direction": snap["direction"],
            "budget": cfg.get("budget"),
            "n_evaluations": snap["n_evaluations"],
            "best_response": snap["best_response"],
            "evaluations_to_best": snap["evaluations_to_best"],
            "n_missing": snap["n_missing"],
            "n_generations": len(snap["generations"]),
            "seconds_since_write": round(time.time() - last_write, 1),
            "generations": [
                {k: g[k] for k in ("generation", "n_evaluations", "best_so_far", "best_response", "mean_response",
                                   "n_missing", "wall_s")} for g in snap["generations"]
            ],
            "best": [
                {"id": b["id"], "generation": b["generation"], "response": b["response"],
                 "src": f"stimulus/{b['id']}-{_code_tag(b['code'])}.png" if self.images else None}
                for b in snap["best"]
            ],
            "images_note": self._generator_error,
        }

    def stimulus_png(self, name: str) -> bytes | None:
        """PNG of ``ID-TAG.png`` (TAG: the code's hash, so a new run in the same folder never shows a
        cached image of the old one); rendered once by the run's generator rebuilt on the CPU."""
        if not self.images:
            return None
        try:
            eval_id, tag = name.removesuffix(".png").split("-")
            eval_id = int(eval_id)
        except ValueError:
            return None
        with self._lock:
            if name in self._png:
                self._png.move_to_end(name)
                return self._png[name]
            code = run_reader.code_of(self.run_dir, eval_id)
            if code is None or _code_tag(code) != tag:
                return None
            generator = self._get_generator()
            if generator is None:
                return None
            png = html_images.png_bytes(html_images.render(generator, [code])[0])
            self._png[name] = png
            while len(self._png) > CACHE:
                self._png.popitem(last=False)
            return png

    def _get_generator(self):
        if self._generator is None and self._generator_error is None:
            try:
                import torch

                torch.set_num_threads(1)  # rendering a stimulus now and then must not take the run's cores
                snap_meta = run_reader.snapshot(self.run_dir, k=0, worst=False)["meta"]
                self._generator = html_images.rebuild_generator(snap_meta["config"])
            except Exception as exc:
                self._generator_error = f"stimuli cannot be rendered here ({type(exc).__name__}: {exc})"
        return self._generator


def make_server(run_dir: Path, port: int, k: int = N_BEST, images: bool = True, interval_s: float = 2.0):
    """The server (not yet serving): ``server.serve_forever()``; ``server.server_address[1]`` is the
    port (useful with port 0, which lets the system choose)."""
    from stimopt.watch_page import PAGE

    watcher = Watcher(run_dir, k=k, images=images)
    page = environment(**{"watch.html": PAGE}).get_template("watch.html").render(
        name=Path(run_dir).name, interval_ms=int(interval_s * 1000)
    ).encode()

    class Handler(BaseHTTPRequestHandler):
        timeout = 10  # a client that stalls is dropped; it never holds anything the run needs

        def do_GET(self):  # noqa: N802 (http.server's name)
            path = self.path.split("?", 1)[0]
            if path in ("/", "/index.html"):
                return self._send(200, "text/html; charset=utf-8", page)
            if path == "/state.json":
                body = json.dumps(watcher.state(), allow_nan=False, default=str).encode()
                return self._send(200, "application/json", body)
            if path.startswith("/stimulus/"):
                png = watcher.stimulus_png(path.rsplit("/", 1)[-1])
                if png is not None:
                    return self._send(200, "image/png", png, cache=True)
            self._send(404, "text/plain", b"not found\n")

        def _send(self, code: int, ctype: str, body: bytes, cache: bool = False) -> None:
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "max-age=3600" if cache else "no-store")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args) -> None:  # quiet: the lab's terminal is for the run
            pass

    server = ThreadingHTTPServer((HOST, int(port)), Handler)
    server.daemon_threads = True
    return server


def check_run_dir(run_dir: Path) -> None:
    if run_dir.exists() and not run_dir.is_dir():
        raise StimoptError(f"{run_dir} is not a run directory (it is a file)")
    from stimopt.html_sweep import is_sweep_dir

    if not run_reader.store_path(run_dir).exists() and run_dir.is_dir() and is_sweep_dir(run_dir):
        raise StimoptError(f"{run_dir} is a sweep directory; watch one of its jobs (e.g. {run_dir}/0)")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="stimopt-watch", description="Serve a live, read-only page of a run on 127.0.0.1.")
    parser.add_argument("run_dir", type=Path, help="the run directory (it may not exist yet: the page waits)")
    parser.add_argument("--port", type=int, required=True, help="TCP port on 127.0.0.1 (0: any free port)")
    parser.add_argument("--best", type=int, default=N_BEST, help=f"best stimuli shown (default {N_BEST})")
    parser.add_argument("--no-images", action="store_true", help="do not render stimuli (a generator too heavy to run twice)")
    parser.add_argument("--interval", type=float, default=2.0, help="seconds between the page's polls")
    args = parser.parse_args(argv)
    try:
        if not 0 <= args.port <= 65535:
            raise StimoptError(f"--port must be between 0 and 65535, got {args.port}")
        if args.interval <= 0:
            raise StimoptError(f"--interval must be positive, got {args.interval}")
        check_run_dir(args.run_dir)
        server = listen(lambda: make_server(args.run_dir, args.port, k=args.best, images=not args.no_images,
                                            interval_s=args.interval), args.port)
    except StimoptError as exc:
        print(f"stimopt-watch: error: {exc}", file=sys.stderr)
        sys.exit(2)
    serve_until_interrupted(server, f"watching {args.run_dir} at http://{HOST}:{server.server_address[1]}/")
