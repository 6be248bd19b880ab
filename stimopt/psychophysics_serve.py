"""The psychophysics collection server (``stimopt-psychophysics build ... --serve --port N``): the
experiment folder served on 127.0.0.1 only, and ``POST /results`` saving each participant's result
file into ``OUT/results/``. Nothing else is written; requests are bounded in size and time."""
from __future__ import annotations

import json
import re
import time
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from stimopt.localserver import HOST, listen, serve_until_interrupted

MAX_BODY = 2 * 1024 * 1024


class Handler(SimpleHTTPRequestHandler):
    timeout = 30

    def do_POST(self):  # noqa: N802 (http.server's name)
        if self.path.split("?", 1)[0] != "/results":
            return self._json(404, {"error": "not found"})
        length = int(self.headers.get("Content-Length") or 0)
        if not 0 < length <= MAX_BODY:
            return self._json(413, {"error": f"a result file is 1 byte to {MAX_BODY} bytes"})
        try:
            result = json.loads(self.rfile.read(length))
            assert isinstance(result, dict) and isinstance(result.get("trials"), list)
        except (ValueError, AssertionError):
            return self._json(400, {"error": "not a psychophysics result"})
        who = re.sub(r"[^A-Za-z0-9_-]", "_", str(result.get("participant", "anonymous")))[:40] or "anonymous"
        folder = Path(self.directory) / "results"
        folder.mkdir(exist_ok=True)
        name = f"{who}-{result.get('condition', 'x')}-{time.strftime('%Y%m%d-%H%M%S')}-{time.time_ns() % 10**6:06d}.json"
        (folder / name).write_text(json.dumps(result, indent=1) + "\n")
        self._json(200, {"saved": f"results/{name}"})

    def _json(self, code: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def list_directory(self, path):  # no folder listings (results/ holds other participants' files)
        self.send_error(404, "not found")
        return None

    def log_message(self, *args) -> None:
        pass


def make_server(folder: Path, port: int) -> ThreadingHTTPServer:
    server = ThreadingHTTPServer((HOST, int(port)), partial(Handler, directory=str(folder)))
    server.daemon_threads = True
    return server


def serve(folder: Path, port: int) -> None:
    server = listen(lambda: make_server(folder, port), port)
    serve_until_interrupted(server, f"serving the experiment at http://{HOST}:{server.server_address[1]}/index.html; "
                                    f"results go to {folder}/results/")
