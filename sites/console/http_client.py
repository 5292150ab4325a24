"""Drive a site's web console over HTTP as a reviewer: log in, approve, deny.

What a steward's script (and the demo) uses to decide through exactly the code the
page uses: the same login (lock-out, rate limit), CSRF token and routes. Holds the
password only for the login call; never prints it.
"""

from __future__ import annotations

import re
from typing import Any

import httpx

from policies.contract.errors import MedsyftError

_CSRF = re.compile(r'name="csrf" value="([^"]+)"')


class ConsoleRefused(MedsyftError, RuntimeError):
    """The console refused a login or a decision; the message is the console's."""


class ConsoleSession:
    """One reviewer's session with a site's web console."""

    def __init__(self, url: str, verify_tls: bool | str = True, timeout_s: float = 120.0
                 ) -> None:
        self.url = url.rstrip("/")
        self._http = httpx.Client(base_url=self.url, verify=verify_tls, timeout=timeout_s,
                                  follow_redirects=False)
        self._csrf: str | None = None

    def __enter__(self) -> ConsoleSession:
        return self

    def __exit__(self, *exc: Any) -> None:
        self._http.close()

    def login(self, email: str, password: str) -> ConsoleSession:
        form = self._http.get("/login")
        match = _CSRF.search(form.text)
        if match is None:
            raise ConsoleRefused(f"{self.url}/login: no login form")
        r = self._http.post("/login", data={"email": email, "password": password,
                                            "csrf": match.group(1)})
        if r.status_code != 303:
            error = re.search(r'id="login-error">([^<]+)<', r.text)
            raise ConsoleRefused(f"login as {email} refused: "
                                 f"{error.group(1) if error else r.status_code}")
        self._csrf = self._http.get("/requests", headers={"accept": "application/json"}
                                    ).headers.get("x-csrf-token")
        return self

    def requests(self) -> list[dict]:
        """The requests page as JSON: pending first."""
        return self._json(self._http.get("/requests", headers={"accept": "application/json"}))

    def request(self, request_id: str) -> dict:
        return self._json(self._http.get(f"/requests/{request_id}",
                                         headers={"accept": "application/json"}))

    def approve(self, request_id: str, note: str = "", override_reason: str | None = None
                ) -> dict:
        data = {"csrf": self._csrf or "", "note": note}
        if override_reason is not None:
            data |= {"override": "yes", "reason": override_reason}
        return self._decision(f"/requests/{request_id}/approve", data)

    def deny(self, request_id: str, reason: str) -> dict:
        return self._decision(f"/requests/{request_id}/deny",
                              {"csrf": self._csrf or "", "reason": reason})

    def _decision(self, path: str, data: dict) -> dict:
        return self._json(self._http.post(path, data=data,
                                          headers={"accept": "application/json"}))

    @staticmethod
    def _json(r: httpx.Response) -> Any:
        if r.status_code >= 400:
            try:
                message = r.json().get("error", r.text)
            except ValueError:
                message = r.text
            raise ConsoleRefused(f"{r.request.method} {r.request.url.path}: {message}")
        return r.json()
