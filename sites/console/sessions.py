"""Console sessions, CSRF tokens and login rate limiting (in the site process's memory).

A session is a random 256-bit token in an `HttpOnly`, `SameSite=Strict` cookie
(`Secure` under TLS) mapped here to the reviewer account that logged in and the
session's own CSRF token; it ends after `idle` without a request, after
`ABSOLUTE` in any case, at logout, or when the site restarts. The login form has
a CSRF token of its own (double submit: a pre-session cookie and a hidden field
must match). Login attempts are limited per client address, on top of the
per-account lock-out kept in the governance database (`sites.governance.reviewers`).

Never log a token; never keep a password.
"""

from __future__ import annotations

import hmac
import ipaddress
import secrets
import threading
import time
from collections import deque
from dataclasses import dataclass, field

#: Longest a session lives, however active.
ABSOLUTE = 12 * 3600.0
#: Login attempts one client address may make per `WINDOW` seconds.
ATTEMPTS_PER_WINDOW = 10
WINDOW = 300.0


def token() -> str:
    return secrets.token_urlsafe(32)


def same(a: str | None, b: str | None) -> bool:
    """Constant-time comparison of two tokens (False when either is missing)."""
    return bool(a) and bool(b) and hmac.compare_digest(str(a), str(b))


@dataclass
class Session:
    email: str
    name: str
    credential: str = ""  # the account's password tag at login (Reviewer.credential)
    csrf: str = field(default_factory=token)
    created: float = field(default_factory=time.monotonic)
    seen: float = field(default_factory=time.monotonic)
    flash: dict | None = None  # one message for the next page (the result of a decision)


class Sessions:
    """Live sessions by cookie token."""

    def __init__(self, idle: float) -> None:
        self.idle = idle
        self._by_token: dict[str, Session] = {}
        self._lock = threading.Lock()

    def open(self, email: str, name: str, credential: str = "") -> tuple[str, Session]:
        key, session = token(), Session(email=email, name=name, credential=credential)
        with self._lock:
            self._by_token[key] = session
        return key, session

    def get(self, key: str | None) -> Session | None:
        if not key:
            return None
        now = time.monotonic()
        with self._lock:
            session = self._by_token.get(key)
            if session is None:
                return None
            if now - session.seen > self.idle or now - session.created > ABSOLUTE:
                del self._by_token[key]
                return None
            session.seen = now
            return session

    def close(self, key: str | None) -> None:
        with self._lock:
            self._by_token.pop(key or "", None)

    def close_all(self, email: str) -> None:
        """End every session of an account (disabled, or its password reset)."""
        with self._lock:
            for key in [k for k, s in self._by_token.items() if s.email == email]:
                del self._by_token[key]


def limit_key(addr: str) -> str:
    """The allowance an address draws on (see `LoginLimiter`)."""
    try:
        ip = ipaddress.ip_address(addr)
    except ValueError:
        return addr
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
        ip = ip.ipv4_mapped
    if ip.is_loopback:
        return "loopback"
    if isinstance(ip, ipaddress.IPv6Address):
        return str(ipaddress.ip_network(f"{ip}/64", strict=False))
    return str(ip)


class LoginLimiter:
    """At most `ATTEMPTS_PER_WINDOW` login attempts per client address per `WINDOW`.

    Addresses one person can pick freely share one allowance: all of loopback
    (127.0.0.0/8 and ::1: a local user can connect from any of them) and each IPv6 /64."""

    def __init__(self, attempts: int = ATTEMPTS_PER_WINDOW, window: float = WINDOW) -> None:
        self.attempts, self.window = attempts, window
        self._seen: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def allow(self, client: str) -> bool:
        client = limit_key(client)
        now = time.monotonic()
        with self._lock:
            q = self._seen.setdefault(client, deque())
            while q and now - q[0] > self.window:
                q.popleft()
            if len(q) >= self.attempts:
                return False
            q.append(now)
            if len(self._seen) > 10_000:  # forget idle addresses
                for addr in [a for a, d in self._seen.items() if not d]:
                    del self._seen[addr]
            return True
