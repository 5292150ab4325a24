"""Quiet, lazy access to the syft 0.9.5 client.

`import syft` costs seconds and prints banners and progress bars on stdout, so
every use goes through here: imported only when needed, with TQDM disabled and
syft's stdout captured. This module never logs credentials.
"""

from __future__ import annotations

import contextlib
import io
import os
import sys
import threading
from collections.abc import Iterator
from typing import Any, TextIO

from policies.contract.errors import MedsyftError


class _ThreadRouter(io.TextIOBase):
    """sys.stdout stand-in: threads inside `quiet()` write to their own buffer.

    `contextlib.redirect_stdout` is not thread-safe (concurrent users restore
    each other's buffers and can leave stdout swallowed for good); the federated
    round loop calls syft from one thread per site, so capture is per thread.
    """

    def __init__(self, target: TextIO) -> None:
        super().__init__()
        self.target = target
        self.local = threading.local()

    def _dest(self) -> TextIO:
        return getattr(self.local, "buf", None) or self.target

    def write(self, s: str) -> int:
        return self._dest().write(s)

    def flush(self) -> None:
        self._dest().flush()

    def isatty(self) -> bool:
        return self.target.isatty()

    def fileno(self) -> int:
        return self.target.fileno()

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return getattr(self.target, "encoding", "utf-8")


_router_lock = threading.Lock()


@contextlib.contextmanager
def quiet() -> Iterator[io.StringIO]:
    """Capture what syft prints on stdout in this thread (banners, success messages)."""
    with _router_lock:
        router = sys.stdout
        if not isinstance(router, _ThreadRouter):
            router = _ThreadRouter(sys.stdout)
            sys.stdout = router
    buf = io.StringIO()
    previous = getattr(router.local, "buf", None)
    router.local.buf = buf
    try:
        yield buf
    finally:
        router.local.buf = previous


def syft() -> Any:
    os.environ.setdefault("TQDM_DISABLE", "1")
    with quiet():
        import syft as sy
    return sy


class LoginFailed(MedsyftError, RuntimeError):
    pass


def login(host: str, port: int, email: str, password: str) -> Any:
    """A logged-in syft client; raises LoginFailed with a message naming the site."""
    sy = syft()
    try:
        with quiet():
            client = sy.login(url=f"http://{host}", port=port, email=email, password=password,
                              cache=False)
    except Exception as exc:  # syft raises several types; none carries secrets
        msg = getattr(exc, "public_message", None) or type(exc).__name__
        raise LoginFailed(f"login to {host}:{port} as {email} failed: {msg}") from None
    if client is None or not hasattr(client, "api"):
        raise LoginFailed(f"login to {host}:{port} as {email} failed")
    return client


def server_metadata(host: str, port: int, timeout: float = 2.0) -> dict | None:
    """The datasite's public metadata (id, name, version), or None if it does not answer."""
    import json
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://{host}:{port}/api/v2/metadata",
                                    timeout=timeout) as resp:
            return json.loads(resp.read())
    except (urllib.error.URLError, OSError, ValueError):
        return None
