"""Tests of data_prep/, all offline, and what they share: a local HTTP server on 127.0.0.1."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Server:
    """A local HTTP server for a few files ({name: bytes}), honouring Range requests unless told not to.
    ``seen`` records the Range header of every request (None without one)."""

    def __init__(self, files: dict[str, bytes], ranges: bool = True):
        outer = self
        self.files, self.ranges, self.seen = files, ranges, []

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                payload = outer.files.get(self.path.lstrip("/"))
                if payload is None:
                    self.send_error(404)
                    return
                outer.seen.append(self.headers.get("Range"))
                start = 0
                if outer.ranges and self.headers.get("Range"):
                    start = int(self.headers["Range"].removeprefix("bytes=").rstrip("-"))
                    if start >= len(payload):
                        self.send_response(416)
                        self.end_headers()
                        return
                    self.send_response(206)
                else:
                    self.send_response(200)
                body = payload[start:]
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base = f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def url(self, name: str) -> str:
        return f"{self.base}/{name}"

    def __enter__(self):
        threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True).start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()
