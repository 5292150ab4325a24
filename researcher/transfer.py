"""The researcher's side of the weights endpoint: signed uploads and downloads, streamed.

A round's global weights go to each site as one safetensors file (`PUT`), and the
released weights come back the same way (`GET`), beside syft, which carries only their
digests. Each request is signed with the researcher's syft signing key
(`policies.contract.transfer.sign_headers`); nothing else authenticates it, and no new
secret exists. An upload asks `Expect: 100-continue`, so a site that refuses it (a
signature, a stale clock, a plan it does not know) says why before a byte of the body
is sent. A download is checked against the digest the site's round result named before
it is decoded.

Plain sockets and the standard library: this module never logs or prints the keys, and
raises `TransferFailed` (with the site's reason code when it gave one).
"""

from __future__ import annotations

import json
import select
import socket
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass

from policies.contract import transfer
from policies.contract.errors import MedsyftError

#: (bytes so far, total bytes) after each chunk.
Progress = Callable[[int, int], None]
CHUNK = 4 << 20
#: How long an upload waits for the site's 100 Continue before sending the body anyway.
CONTINUE_WAIT_S = 10.0


class TransferFailed(MedsyftError):
    """An upload or download that did not complete; `code` is the site's reason (or
    `connection`), `retry` says whether sending again may help."""

    def __init__(self, message: str, code: str = "connection", retry: bool = True) -> None:
        super().__init__(message, retry=retry)
        self.code = code


#: Site refusals that a retry of the same request can get past.
RETRYABLE = {"timeout", "busy", "truncated", "internal", "connection", "stale", "replayed"}


@dataclass(frozen=True)
class Endpoint:
    """Where a site's weights endpoint is: its syft host and port, TLS if it has one, and
    the site's name (every request is signed for that site only)."""

    site: str
    host: str
    port: int
    tls: bool = False
    ca_file: str | None = None
    timeout_s: float = 120.0

    def connect(self) -> socket.socket:
        """A connected socket (TLS-wrapped when the endpoint has TLS), or `TransferFailed`."""
        try:
            sock = socket.create_connection((self.host, self.port), timeout=self.timeout_s)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self.tls:
                ctx = ssl.create_default_context(cafile=self.ca_file)
                sock = ctx.wrap_socket(sock, server_hostname=self.host)
        except OSError as exc:
            raise TransferFailed(f"cannot reach the weights endpoint: {exc}") from None
        return sock


@dataclass(frozen=True)
class Signer:
    """The researcher's syft account key: `Signer.of(client)` for a logged-in client."""

    signing_key: object  # nacl.signing.SigningKey
    verify_key: str

    @classmethod
    def of(cls, client: object) -> Signer:
        creds = client.credentials  # type: ignore[attr-defined]
        return cls(creds.signing_key, str(creds.verify_key))

    def headers(self, method: str, path: str, digest: str, plan_hash: str, round_no: int,
                site: str) -> dict[str, str]:
        return transfer.sign_headers(self.signing_key, self.verify_key, method, path, digest,
                                     plan_hash, round_no, site=site)


def _head(method: str, path: str, host: str, headers: dict[str, str]) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}", *[f"{k}: {v}" for k, v in
                                                             headers.items()], "", ""]
    return "\r\n".join(lines).encode("latin-1")


def _read_response(reader) -> tuple[int, dict[str, str], bytes | None]:  # noqa: ANN001
    """Status and headers of one response; its body too unless it is 1xx or 200 (a 200
    body is the caller's to stream)."""
    status_line = reader.readline(65537)
    if not status_line:
        raise TransferFailed("the site closed the connection without an answer")
    parts = status_line.decode("latin-1").split(" ", 2)
    if len(parts) < 2 or not parts[1].isdigit():
        raise TransferFailed("the site's answer is not HTTP")
    status = int(parts[1])
    headers: dict[str, str] = {}
    while True:
        line = reader.readline(65537)
        if line in (b"\r\n", b"\n", b""):
            break
        k, _, v = line.decode("latin-1").partition(":")
        headers[k.strip().lower()] = v.strip()
    if status < 200 or status == 200:
        return status, headers, None
    return status, headers, reader.read(max(0, min(_length(headers), 1 << 16)))


def _length(headers: dict[str, str]) -> int:
    """The answer's Content-Length (untrusted: a site may send anything), or -1."""
    value = headers.get("content-length", "")
    return int(value) if value.isdigit() and len(value) < 16 else -1


def _refusal(status: int, body: bytes | None) -> TransferFailed:
    try:
        doc = json.loads(body or b"{}")
        code, message = str(doc.get("error", "http")), str(doc.get("message", ""))[:300]
    except ValueError:
        code, message = "http", ""
    return TransferFailed(f"HTTP {status}: {message or 'refused'}", code=code,
                          retry=code in RETRYABLE)


def upload(endpoint: Endpoint, signer: Signer, plan_hash: str, round_no: int, blob: bytes,
           progress: Progress | None = None, digest: str | None = None) -> str:
    """Send a round's global weights (safetensors bytes) to a site; returns their digest
    (`digest`, when the caller hashed them already for several sites; the site checks it).

    Raises:
        TransferFailed: the site refused the upload (its reason code in `code`) or the
            connection failed.
    """
    digest = digest or transfer.digest(blob)
    path = transfer.upload_path(plan_hash, round_no, digest)
    headers = {**signer.headers("PUT", path, digest, plan_hash, round_no, endpoint.site),
               "Content-Type": "application/octet-stream",
               "Content-Length": str(len(blob)), "Expect": "100-continue"}
    sock = endpoint.connect()
    with sock, sock.makefile("rb") as reader:
        try:
            sock.sendall(_head("PUT", path, endpoint.host, headers))
            ready, _, _ = select.select([sock], [], [], CONTINUE_WAIT_S)
            if ready:
                status, _, body = _read_response(reader)
                if status != 100:
                    raise _refusal(status, body)
            view = memoryview(blob)
            sent = 0
            while sent < len(blob):
                sock.sendall(view[sent:sent + CHUNK])
                sent = min(len(blob), sent + CHUNK)
                if progress:
                    progress(sent, len(blob))
        except OSError as exc:
            # the site may have cut the upload off with a reason before closing
            try:
                status, _, body = _read_response(reader)
            except (OSError, TransferFailed):
                raise TransferFailed(f"upload cut off: {exc}") from None
            raise _refusal(status, body) from None
        try:
            status, _, body = _read_response(reader)
        except OSError as exc:
            raise TransferFailed(f"no answer to the upload: {exc}") from None
        if status != 201:
            raise _refusal(status, body)
    return digest


def download(endpoint: Endpoint, signer: Signer, plan_hash: str, round_no: int, digest: str,
             size: int, progress: Progress | None = None) -> bytearray:
    """The bytes of the weights a site released in that round: exactly `size` of them,
    from the path that names `digest`. Their SHA-256 is checked once, by the caller that
    decodes them (`policies.contract.wire.attach_released`).

    Raises:
        TransferFailed: refused, or cut short.
    """
    path = transfer.release_path(plan_hash, round_no, digest)
    headers = signer.headers("GET", path, digest, plan_hash, round_no, endpoint.site)
    sock = endpoint.connect()
    with sock, sock.makefile("rb") as reader:
        try:
            sock.sendall(_head("GET", path, endpoint.host, headers))
            status, head, body = _read_response(reader)
            if status != 200:
                raise _refusal(status, body)
            length = _length(head)
            if length != size:
                raise TransferFailed(f"the site offers {length} bytes, its result said {size}",
                                     code="digest_mismatch", retry=False)
            out = bytearray(size)
            view = memoryview(out)
            got = 0
            while got < size:
                n = reader.readinto(view[got:got + CHUNK])
                if not n:
                    raise TransferFailed(f"download cut short at {got} of {size} bytes")
                got += n
                if progress:
                    progress(got, size)
        except OSError as exc:
            raise TransferFailed(f"download failed: {exc}") from None
    return out


class Meter:
    """Bytes moved over the weights endpoints in one round, per transfer (an upload or a
    download at one site), and the rate while they moved: for progress bars and reports.
    Each transfer writes only its own entry, so the round's threads need no lock."""

    def __init__(self) -> None:
        self._moves: dict[str, list[float]] = {}  # key -> [start, last, bytes]

    def track(self, key: str) -> Progress:
        """The progress callback of one transfer; its clock starts now."""
        move = self._moves[key] = [time.perf_counter(), time.perf_counter(), 0.0]

        def progress(done: int, _total: int) -> None:
            move[1], move[2] = time.perf_counter(), float(done)
        return progress

    @property
    def total(self) -> int:
        """Bytes moved so far, every transfer of the round together."""
        return int(sum(m[2] for m in list(self._moves.values())))

    @property
    def mb_per_s(self) -> float:
        """Mean rate of a transfer (MB/s, MB = 2**20 bytes) over the time it took."""
        rates = [m[2] / 2**20 / (m[1] - m[0]) for m in list(self._moves.values())
                 if m[2] and m[1] > m[0]]
        return sum(rates) / len(rates) if rates else 0.0
