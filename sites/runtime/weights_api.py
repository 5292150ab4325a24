"""The site's weights endpoint: a round's weights stream here beside syft, not through it.

Two routes on the site's own port (in front of syft's app, `sites.operator.server_main`):

* `PUT /medsyft/v1/weights/<plan>/<round>/<sha256>`: the global weights a researcher
  will train from, as one safetensors file. Stored (`sites.runtime.uploads`) only once
  its bytes are the signed digest; the layout is checked against the approved plan's
  graph from the safetensors header, before any tensor byte is written.
* `GET /medsyft/v1/releases/<plan>/<round>/<sha256>`: the weights a round released
  (`sites.runtime.releases`), byte for byte, to the researcher whose round it was.

Every request carries an Ed25519 signature by the researcher's syft signing key over
`policies.contract.transfer.signed_message`; the site checks it with the verify key it
recorded for the account (`Registry`, never syft's editable profile), refuses a time
more than `MAX_SKEW_S` away and any nonce it has seen (kept in the governance store, so
a restart does not reopen a replay). A refusal is JSON `{"error": code, "message": ...}`
with an HTTP status; every reason is one of the fixed codes below.

Must never serve a file but a released one to its own researcher, never store an
upload it has not checked, and never read, name or write anything private.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from policies.contract import transfer
from policies.contract.errors import MedsyftError, Refused
from policies.contract.plan import DISCRIMINATOR_PREFIX, TrainingPlan
from policies.contract.transfer import TransferRefused
from policies.schema import PolicyError
from sites.governance.registry import Registry
from sites.operator.site import Site
from sites.runtime import graphs, releases, uploads

log = logging.getLogger("medsyft.transfer")

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict]]
Send = Callable[[dict], Awaitable[None]]

#: HTTP status of each refusal.
STATUS = {
    "unsigned": 401, "bad_signature": 401, "unknown_account": 401, "stale": 401,
    "replayed": 401, "not_found": 404, "not_yours": 404, "not_approved": 403,
    "bad_round": 400, "length_required": 411, "too_large": 413, "truncated": 400,
    "malformed": 400, "wrong_names": 422, "wrong_shape": 422, "wrong_dtype": 422,
    "digest_mismatch": 400, "timeout": 408, "busy": 503, "method": 405, "use_tls": 421,
}
_HEX = r"[0-9a-f]{64}"
UPLOAD = re.compile(rf"^{re.escape(transfer.PREFIX)}/weights/({_HEX})/([0-9]{{1,6}})/({_HEX})$")
RELEASE = re.compile(rf"^{re.escape(transfer.PREFIX)}/releases/({_HEX})/([0-9]{{1,6}})/"
                     rf"({_HEX})$")
#: What a download hands the server at a time (what a client that stops reading leaves
#: in the server's buffer).
CHUNK = 256 << 10
#: Bytes a plan's safetensors header may take: per tensor its name and about 90 bytes of
#: dtype, shape and offsets (room for 8 dimensions of 10 digits), plus padding.
HEADER_PER_TENSOR = 256
HEADER_SLACK = 64
#: Transfers one researcher may have in progress at once at a site.
MAX_ACTIVE = 4


@dataclass(frozen=True)
class Caller:
    email: str
    verify_key: str
    nonce: str


def _layouts(site: Site, plan: TrainingPlan) -> list[dict[str, tuple[int, ...]]]:
    """The name → shape maps an upload for `plan` may have: its model's parameters, and for
    a GAN plan also those with the discriminator's initial parameters beside them."""
    gov = site.governance()
    try:
        policy, _ = site.policy()
    except PolicyError:
        raise TransferRefused("not_approved", "the site's policy file is invalid") from None
    rules = policy.for_dataset(plan.dataset)
    dataset = gov.dataset(plan.dataset)
    if rules is None or dataset is None or not dataset.get("volume_shape"):
        raise TransferRefused("not_approved", "the plan's dataset is not published here")
    shape = graphs.input_shape(plan, [int(s) for s in dataset["volume_shape"].split(",")])
    try:
        pg = graphs.plan_graph(gov, site.config, plan, shape, rules.training.max_parameters,
                               int(dataset.get("mask_classes") or 0))
    except Refused as exc:
        raise TransferRefused("not_approved", f"the plan's model: {exc}") from None
    model = {p.name: tuple(p.shape) for p in pg.graph.params}
    if pg.discriminator is None:
        return [model]
    disc = {DISCRIMINATOR_PREFIX + p.name: tuple(p.shape) for p in pg.discriminator.params}
    return [model, {**model, **disc}]


class WeightsAPI:
    """The ASGI app of the two routes (any other path is not ours: 404)."""

    def __init__(self, site_dir: Path, moved_to: str | None = None) -> None:
        """`moved_to`: the TLS endpoint's URL, where this one (on the syft port) only says
        to go there: with a certificate, weights never travel in clear."""
        self.site_dir = Path(site_dir)
        self.moved_to = moved_to
        self._layouts: dict[tuple[str, str], list[dict[str, tuple[int, ...]]]] = {}
        self._active: dict[str, int] = {}  # transfers in progress per researcher

    @contextlib.contextmanager
    def _slot(self, caller: Caller) -> Iterator[None]:
        """One of the researcher's `MAX_ACTIVE` transfers at a time, or refused as busy:
        connections held open (a stalled upload, a download never read) cannot pile up."""
        if self._active.get(caller.email, 0) >= MAX_ACTIVE:
            raise TransferRefused("busy", f"{MAX_ACTIVE} transfers of yours are in progress "
                                          "here; try again when one ends", retry=True)
        self._active[caller.email] = self._active.get(caller.email, 0) + 1
        try:
            yield
        finally:
            self._active[caller.email] -= 1
            if not self._active[caller.email]:
                del self._active[caller.email]

    def site(self) -> Site:
        return Site.open(self.site_dir)

    # -- authentication -------------------------------------------------------
    def authenticate(self, method: str, path: str, digest: str, plan_hash: str,
                     round_no: int, headers: dict[str, str]) -> Caller:
        """The registered researcher who signed this request, or `TransferRefused`."""
        key, at, nonce, sig = (headers.get(h.lower(), "") for h in transfer.HEADERS)
        if not (key and at and nonce and sig):
            raise TransferRefused("unsigned", "the request is not signed (X-Medsyft-* headers)")
        if not (transfer.HEX64.fullmatch(key) and transfer.NONCE.fullmatch(nonce)
                and re.fullmatch(r"[0-9]{1,12}", at) and re.fullmatch(r"[0-9a-f]{128}", sig)):
            raise TransferRefused("bad_signature", "malformed signature headers")
        message = transfer.signed_message(method, path, digest, plan_hash, round_no,
                                          int(at), nonce, self.site().name)
        if not transfer.verify_signature(key, sig, message):
            raise TransferRefused("bad_signature", "the signature does not verify")
        skew = int(at) - time.time()
        if abs(skew) > transfer.MAX_SKEW_S:
            raise TransferRefused("stale", f"the request's time is {skew:+.0f} s from the "
                                           f"site's clock (at most ±{transfer.MAX_SKEW_S} s)")
        gov = self.site().governance()
        record = Registry(gov).by_verify_key(key)
        if record is None:
            raise TransferRefused("unknown_account", "no researcher of this site signs with "
                                                     "this key")
        if not gov.use_nonce(nonce, 4 * transfer.MAX_SKEW_S):
            raise TransferRefused("replayed", "this request was seen before (nonce reused)")
        return Caller(record.email, key, nonce)

    def upload_target(self, caller: Caller, plan_hash: str, round_no: int
                      ) -> list[dict[str, tuple[int, ...]]]:
        """What an upload of `caller` for that plan and round may hold, or refused."""
        site = self.site()
        gov = site.governance()
        approval = gov.approval(plan_hash)
        plan_doc = gov.decided_plan(plan_hash) if approval is not None else None
        if approval is None or plan_doc is None or approval.researcher != caller.email:
            raise TransferRefused("not_approved", "no plan of yours with this hash has an "
                                                  "approval at this site (pending, denied "
                                                  "or unknown)")
        try:
            plan = TrainingPlan.model_validate(plan_doc)
        except ValidationError:
            raise TransferRefused("not_approved", "the plan's record is invalid") from None
        if not 1 <= round_no <= plan.rounds:
            raise TransferRefused("bad_round", f"round {round_no} is not one of the plan's "
                                               f"{plan.rounds}")
        _, policy_hash = site.policy()
        key = (plan_hash, policy_hash)
        if key not in self._layouts:
            self._layouts[key] = _layouts(site, plan)
        return self._layouts[key]

    def release_file(self, caller: Caller, plan_hash: str, round_no: int, digest: str
                     ) -> Path:
        """The released file the caller may fetch, or refused as not found (the same answer
        for another's plan and for no release: nothing is learnt about other plans)."""
        site = self.site()
        released = site.governance().released_weights(plan_hash, round_no)
        path = releases.path_of(site.folder, plan_hash, round_no)
        if (released is None or released[0] != caller.email or released[1] != digest
                or path is None):
            raise TransferRefused("not_yours", "no released weights of yours at this path")
        return path

    # -- ASGI -----------------------------------------------------------------
    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        path, method = scope["path"], scope["method"]
        headers = {k.decode("latin-1").lower(): v.decode("latin-1")
                   for k, v in scope.get("headers", [])}
        t0 = time.perf_counter()
        try:
            if self.moved_to is not None:
                await self._spend(method, path, headers)
                raise TransferRefused("use_tls", f"this site takes weights over TLS only, at "
                                                 f"{self.moved_to}")
            if (m := UPLOAD.fullmatch(path)) is not None:
                if method != "PUT":
                    raise TransferRefused("method", "use PUT to upload weights")
                size = await self._upload(m.group(1), int(m.group(2)), m.group(3), path,
                                          headers, receive)
                await _json(send, 201, {"sha256": m.group(3), "bytes": size})
                log.info("upload for plan %s round %s: %d bytes in %.3f s", m.group(1)[:12],
                         m.group(2), size, time.perf_counter() - t0)
            elif (m := RELEASE.fullmatch(path)) is not None:
                if method != "GET":
                    raise TransferRefused("method", "use GET to fetch released weights")
                caller = await _thread(self.authenticate, "GET", path, m.group(3), m.group(1),
                                       int(m.group(2)), headers)
                with self._slot(caller):
                    file = await _thread(self.release_file, caller, m.group(1),
                                         int(m.group(2)), m.group(3))
                    try:
                        size = await _send_file(send, file, m.group(3),
                                                self.site().config.transfer.idle_timeout_s)
                    except _Stalled:
                        # the connection cannot be closed while its buffer is full: it keeps
                        # the researcher's slot until the client goes (red team, issue 18)
                        log.warning("GET %s: the client stopped reading; cut off",
                                    _escaped(path))
                        await _until_disconnect(receive)
                        return
                log.info("release of plan %s round %s fetched: %d bytes in %.3f s",
                         m.group(1)[:12], m.group(2), size, time.perf_counter() - t0)
            else:
                raise TransferRefused("not_found", "no such medsyft endpoint")
        except TransferRefused as exc:
            # the path and the message quote what the client sent: escaped, one log line
            log.warning("%s %s refused: %s", _escaped(method), _escaped(path), _escaped(exc))
            await _json(send, STATUS.get(exc.code, 400),
                        {"error": exc.code, "message": str(exc)})
        except Exception:
            log.exception("weights endpoint: internal error on %s", _escaped(path))
            await _json(send, 500, {"error": "internal", "message": "internal error at the "
                                                                     "site; see its log"})

    async def _spend(self, method: str, path: str, headers: dict[str, str]) -> None:
        """A signed request sent in clear to a site that takes weights over TLS only: its
        nonce is used up here, so that whoever saw it on the wire cannot replay it to the
        TLS port (red team, issue 18)."""
        m = UPLOAD.fullmatch(path) or RELEASE.fullmatch(path)
        if m is None:
            return
        try:
            await _thread(self.authenticate, method, path, m.group(3), m.group(1),
                          int(m.group(2)), headers)
        except TransferRefused:
            pass

    async def _upload(self, plan_hash: str, round_no: int, digest: str, path: str,
                      headers: dict[str, str], receive: Receive) -> int:
        caller = await _thread(self.authenticate, "PUT", path, digest, plan_hash, round_no,
                               headers)
        with self._slot(caller):
            return await self._receive(caller, plan_hash, round_no, digest, headers, receive)

    async def _receive(self, caller: Caller, plan_hash: str, round_no: int, digest: str,
                       headers: dict[str, str], receive: Receive) -> int:
        layouts = await _thread(self.upload_target, caller, plan_hash, round_no)
        length = headers.get("content-length", "")
        if not length.isdigit():
            raise TransferRefused("length_required", "an upload states its Content-Length")
        declared = int(length)
        largest = max(sum(4 * _numel(s) for s in lay.values()) for lay in layouts)
        if declared > 8 + transfer.MAX_HEADER_BYTES + largest:
            raise TransferRefused("too_large", f"{declared} bytes is more than the plan's "
                                               "weights can be")
        cfg = self.site().config.transfer
        deadline = time.monotonic() + cfg.idle_timeout_s + declared / (cfg.min_rate_mib_s
                                                                       * 2**20)
        body = _Body(receive, cfg.idle_timeout_s, deadline, declared)
        head = await body.read_exactly(8)
        n = transfer.header_length(head)
        most = max(HEADER_SLACK + sum(len(k) + HEADER_PER_TENSOR for k in lay)
                   for lay in layouts)
        if n > most:  # what the plan's own header can take, not safetensors' 100 MB
            raise TransferRefused("malformed", f"a safetensors header of {n} bytes; the "
                                               f"plan's takes at most {most}")
        header = await body.read_exactly(n)
        data = await _thread(transfer.check_header, header, layouts)  # off the event loop
        if declared != 8 + n + data:
            raise TransferRefused("too_large" if declared > 8 + n + data else "truncated",
                                  f"Content-Length {declared} is not the {8 + n + data} bytes "
                                  "the header describes")
        upload = uploads.Upload(self.site_dir, plan_hash, digest, round_no, caller.nonce)
        try:
            upload.write(head + header)
            async for chunk in body.rest():
                upload.write(chunk)
            await _thread(upload.finish)
        except BaseException:
            upload.abort()
            raise
        return declared


def _escaped(value: object, limit: int = 200) -> str:
    """`value` as one printable line for the site log (a newline in a path cannot forge a
    log entry)."""
    return str(value)[:limit].encode("unicode_escape").decode("ascii")


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for s in shape:
        n *= int(s)
    return n


class _Body:
    """The request body as it streams, under an idle timeout and an overall deadline."""

    def __init__(self, receive: Receive, idle_s: float, deadline: float, length: int) -> None:
        self.receive, self.idle_s, self.deadline = receive, idle_s, deadline
        self.left = length
        self.buf = b""
        self.done = False

    async def _next(self) -> bytes:
        if self.done:
            return b""
        wait = min(self.idle_s, self.deadline - time.monotonic())
        if wait <= 0:
            raise TransferRefused("timeout", "the upload took longer than the site allows")
        try:
            msg = await asyncio.wait_for(self.receive(), wait)
        except asyncio.TimeoutError:
            raise TransferRefused("timeout", "the upload stalled; cut off") from None
        if msg["type"] == "http.disconnect":
            raise TransferRefused("truncated", "the client went away during the upload")
        chunk = msg.get("body", b"")
        self.done = not msg.get("more_body", False)
        if len(chunk) > self.left:
            raise TransferRefused("too_large", "the body is longer than its Content-Length")
        self.left -= len(chunk)
        if self.done and self.left:
            raise TransferRefused("truncated", "the body ended before its Content-Length")
        return chunk

    async def read_exactly(self, n: int) -> bytes:
        parts = [self.buf]
        have = len(self.buf)
        while have < n:
            chunk = await self._next()
            if not chunk and self.done:
                raise TransferRefused("truncated", "the body ended inside the header")
            parts.append(chunk)
            have += len(chunk)
        joined = b"".join(parts)
        self.buf = joined[n:]
        return joined[:n]

    async def rest(self):  # noqa: ANN201 - an async iterator of bytes
        if self.buf:
            yield self.buf
            self.buf = b""
        while not self.done:
            chunk = await self._next()
            if chunk:
                yield chunk


async def _thread(fn: Callable[..., Any], *args: Any) -> Any:
    return await asyncio.get_running_loop().run_in_executor(None, fn, *args)


async def _json(send: Send, status: int, doc: dict) -> None:
    body = json.dumps(doc).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close" if status >= 400 else b"keep-alive")]})
    await send({"type": "http.response.body", "body": body})


async def _send_file(send: Send, path: Path, digest: str, idle_s: float) -> int:
    """Stream the file; a client that takes nothing for `idle_s` is cut off (raising after
    the response began makes the server close the connection)."""
    size = path.stat().st_size
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/octet-stream"),
                            (b"content-length", str(size).encode()),
                            (b"x-medsyft-sha256", digest.encode())]})
    with path.open("rb") as f:
        while True:
            chunk = f.read(CHUNK)
            more = len(chunk) == CHUNK
            try:
                await asyncio.wait_for(send({"type": "http.response.body", "body": chunk,
                                             "more_body": more}), idle_s)
            except asyncio.TimeoutError:
                raise _Stalled() from None
            if not more:
                break
    return size


class _Stalled(MedsyftError):
    """A download's client stopped reading."""


async def _until_disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


def tls_url(site: Site) -> str | None:
    """The TLS endpoint's URL when site.yaml gives the endpoint a certificate, else None."""
    cfg = site.config.transfer
    if not cfg.tls:
        return None
    host = f"[{cfg.host}]" if ":" in cfg.host else cfg.host
    return f"https://{host}:{cfg.port}"


def start_tls(site_dir: Path) -> Any:
    """Serve the endpoint alone on its TLS port, in a thread of its own (when site.yaml
    gives it a certificate); returns the thread, or None."""
    import threading

    import uvicorn

    site = Site.open(site_dir)
    cfg = site.config.transfer
    if not cfg.tls:
        return None
    assert cfg.tls_cert is not None and cfg.tls_key is not None and cfg.port is not None
    server = uvicorn.Server(uvicorn.Config(
        WeightsAPI(site.folder), host=cfg.host, port=cfg.port, log_level="warning",
        access_log=False, server_header=False, proxy_headers=False, forwarded_allow_ips="",
        lifespan="off", ssl_certfile=str(site.path(cfg.tls_cert)),
        ssl_keyfile=str(site.path(cfg.tls_key))))
    thread = threading.Thread(target=server.run, name="medsyft-weights-tls", daemon=True)
    thread.start()
    log.info("weights endpoint: %s (TLS)", tls_url(site))
    return thread


def mount(app: Any, site_dir: Path) -> Callable[[Scope, Receive, Send], Awaitable[None]]:
    """`app` (syft's) with the weights endpoint in front of it: paths under
    `transfer.PREFIX` go to the endpoint, everything else to syft. With a certificate
    the endpoint is on its TLS port instead, and the path here only says where."""
    api = WeightsAPI(site_dir, moved_to=tls_url(Site.open(site_dir)))
    prefix = transfer.PREFIX + "/"

    async def medsyft_site(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"].startswith(prefix):
            await api(scope, receive, send)
        else:
            await app(scope, receive, send)

    return medsyft_site
