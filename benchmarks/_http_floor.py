"""The floor under any weights transport, for `round_overhead.py`: plain stdlib HTTP.

`python _http_floor.py PORT` serves one "site": `PUT /w` keeps the body in memory, `GET /w`
sends it back. `http_round(ports, blob)` is one round against several such sites at
once (upload, then download, per site in a thread of its own), as fast as Python's
standard library moves bytes over loopback. No authentication, no checks, no storage:
what is left of a round's cost when everything medsyft adds is taken away.
"""

from __future__ import annotations

import http.client
import sys
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

CHUNK = 4 << 20


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    blob = b""

    def do_PUT(self) -> None:  # noqa: N802
        n = int(self.headers["Content-Length"])
        buf = bytearray(n)
        view, got = memoryview(buf), 0
        while got < n:
            got += self.rfile.readinto(view[got:got + CHUNK])
        type(self).blob = bytes(buf)
        self.send_response(201)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_GET(self) -> None:  # noqa: N802
        self.send_response(200)
        self.send_header("Content-Length", str(len(self.blob)))
        self.end_headers()
        self.wfile.write(self.blob)

    def log_message(self, *args: object) -> None:
        pass


def _one(port: int, blob: bytes) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    try:
        conn.request("PUT", "/w", body=blob, headers={"Content-Length": str(len(blob))})
        conn.getresponse().read()
        conn.request("GET", "/w")
        resp = conn.getresponse()
        out = bytearray(int(resp.headers["Content-Length"]))
        view, got = memoryview(out), 0
        while got < len(out):
            got += resp.readinto(view[got:got + CHUNK])
        return got
    finally:
        conn.close()


def http_round(ports: list[int], blob: bytes) -> int:
    """One round: the blob to every site and back, concurrently; bytes received."""
    with ThreadPoolExecutor(max_workers=len(ports)) as pool:
        return sum(pool.map(lambda p: _one(p, blob), ports))


if __name__ == "__main__":
    ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), _Handler).serve_forever()
