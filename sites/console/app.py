"""The web approval console: FastAPI routes over server-rendered Jinja2 pages.

Every page is HTML, or JSON at the same path with `Accept: application/json`.
Only reviewer accounts log in (`sites.governance.reviewers`: named accounts with
Argon2id hashes and a lock-out; researchers cannot); every decision is taken by
the same functions as the CLI console (`sites.review.console.approve` / `deny`)
as the logged-in account, so four-eyes counts two accounts. Nothing changes on a
GET: decisions, logout and the audit check are POSTs that carry the session's
CSRF token. Every response carries a strict Content-Security-Policy and the other
headers in `SECURITY_HEADERS`; pages use no script at all.

The console holds the site's admin client in memory (the password comes from the
site process, never from a file). It must never read or show a private value:
no voxel, no label, no subject identifier.
"""

from __future__ import annotations

import logging
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Form, Request
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, RedirectResponse
from fastapi.responses import Response as FastResponse
from fastapi.templating import Jinja2Templates
from pydantic import BaseModel
from pygments import highlight
from pygments.formatters import HtmlFormatter
from pygments.lexers import PythonLexer

from policies.contract.errors import MedsyftError
from sites.console import pages
from sites.console.sessions import LoginLimiter, Session, Sessions, same, token
from sites.governance.reviewers import LoginRefused, Reviewer, Reviewers
from sites.governance.store import Governance
from sites.operator.config import LOOPBACK, load_site
from sites.review import console

log = logging.getLogger("medsyft.console")

HERE = Path(__file__).resolve().parent
SESSION_COOKIE = "medsyft_console"
LOGIN_COOKIE = "medsyft_login"
CSP = ("default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; "
       "frame-ancestors 'none'; base-uri 'none'")
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",  # no-referrer would make a browser send Origin: null
    "Cache-Control": "no-store",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
    "Permissions-Policy": "camera=(), microphone=(), geolocation=()",
}
HSTS = "max-age=31536000"
#: How long the pending-request count in the navigation bar is reused.
BADGE_TTL_S = 5.0


class AdminLink:
    """The site's admin syft client, logged in once and shared (one call at a time)."""

    def __init__(self, login: Callable[[], Any]) -> None:
        self._login = login
        self._client: Any = None
        self._lock = threading.RLock()

    @contextmanager
    def client(self) -> Iterator[Any]:
        with self._lock:
            if self._client is None:
                self._client = self._login()
            try:
                yield self._client
            except console.ConsoleError:
                raise
            except Exception:
                self._client = None  # a stale login: the next call logs in again
                raise


def _wants_json(request: Request) -> bool:
    accept = request.headers.get("accept", "")
    return "application/json" in accept and "text/html" not in accept


def _foreign_origin(request: Request) -> bool:
    """Whether a POST names an Origin other than the console's own. "null" (a sandboxed
    frame, a data: page) is not ours either; no Origin at all is a non-browser client."""
    origin = request.headers.get("origin")
    if origin is None:
        return False
    return origin == "null" or urllib.parse.urlsplit(origin).netloc != request.headers.get("host")


def _client_addr(request: Request) -> str:
    return request.client.host if request.client else "?"


def _fmt_time(ts: float | None) -> str:
    return datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S") if ts else "—"


def _fmt_age(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f} {unit}"
    return f"{seconds:.0f} s"


class NotLoggedIn(MedsyftError):
    """No valid session (never opened, expired, logged out, or its account changed)."""


class BadCsrf(MedsyftError):
    """A POST without the session's CSRF token, or from another origin."""


def create_app(site_dir: Path, admin: AdminLink) -> FastAPI:
    """The console of the site in `site_dir`, deciding through `admin`."""
    site_dir, cfg = load_site(site_dir)
    tls = cfg.console.tls
    sessions = Sessions(idle=cfg.console.session_idle_minutes * 60.0)
    limiter = LoginLimiter()
    templates = Jinja2Templates(directory=str(HERE / "templates"))
    env = templates.env
    env.globals.update(fmt_time=_fmt_time, fmt_age=_fmt_age, site_name=cfg.name)
    formatter = HtmlFormatter(cssclass="source", linenos="table")
    pygments_css = formatter.get_style_defs(".source")
    console_css = (HERE / "static" / "console.css").read_text()
    badge: dict[str, float | int] = {"at": 0.0, "count": 0}
    allowed_hosts = ({h for h in LOOPBACK} | {cfg.console.host}
                     if cfg.console.host in LOOPBACK else None)

    app = FastAPI(title=f"medsyft console · {cfg.name}", docs_url=None, redoc_url=None,
                  openapi_url=None)

    @app.middleware("http")
    async def security_headers(request: Request, call_next):  # noqa: ANN001, ANN202
        host = (request.headers.get("host") or "").rsplit(":", 1)[0].strip("[]")
        if allowed_hosts is not None and host not in allowed_hosts:
            response: FastResponse = PlainTextResponse("unknown host", status_code=421)
        else:
            response = await call_next(request)
        for k, v in SECURITY_HEADERS.items():
            response.headers[k] = v
        if tls:
            response.headers["Strict-Transport-Security"] = HSTS
        return response

    @app.exception_handler(NotLoggedIn)
    async def not_logged_in(request: Request, exc: NotLoggedIn):  # noqa: ANN202
        if _wants_json(request):
            return JSONResponse({"error": "log in first"}, status_code=401)
        return RedirectResponse("/login", status_code=303)

    @app.exception_handler(BadCsrf)
    async def bad_csrf(request: Request, exc: BadCsrf):  # noqa: ANN202
        return PlainTextResponse("refused: the form's CSRF token is missing or wrong; reload "
                                 "the page and try again", status_code=403)

    def set_cookie(response: FastResponse, name: str, value: str, max_age: int | None) -> None:
        response.set_cookie(name, value, max_age=max_age, httponly=True, secure=tls,
                            samesite="strict", path="/")

    def current(request: Request) -> tuple[str, Session]:
        key = request.cookies.get(SESSION_COOKIE)
        session = sessions.get(key)
        if session is None:
            raise NotLoggedIn()
        account = Reviewers(Governance(site_dir)).get(session.email)
        if account is None or account.disabled or account.credential != session.credential:
            sessions.close(key)  # disabled, removed, or its password reset (maybe by the CLI)
            raise NotLoggedIn()
        return key or "", session

    def check_csrf(request: Request, session: Session, form_token: str | None) -> None:
        if _foreign_origin(request):
            raise BadCsrf()
        if not same(form_token or request.headers.get("x-csrf-token"), session.csrf):
            raise BadCsrf()

    def reviewer_of(session: Session) -> Reviewer:
        account = Reviewers(Governance(site_dir)).get(session.email)
        if account is None or account.disabled or account.credential != session.credential:
            raise NotLoggedIn()
        return account

    def pending_count() -> int:
        now = time.monotonic()
        if now - float(badge["at"]) > BADGE_TTL_S:
            try:
                with admin.client() as client:
                    pending = client.api.services.request.get_all_pending()
                badge["count"] = len(pending) if isinstance(pending, list) else 0
            except Exception:
                log.warning("console: could not count pending requests")
            badge["at"] = now
        return int(badge["count"])

    def page(request: Request, session: Session, template: str, model: BaseModel | list | dict,
             status_code: int = 200, **context: Any) -> FastResponse:
        if _wants_json(request):
            data = (model.model_dump(mode="json") if isinstance(model, BaseModel)
                    else [m.model_dump(mode="json") if isinstance(m, BaseModel) else m
                          for m in model] if isinstance(model, list) else model)
            response: FastResponse = JSONResponse(data, status_code=status_code)
        else:
            flash, session.flash = session.flash, None
            response = templates.TemplateResponse(request, template, {
                "me": session, "csrf": session.csrf, "pending": pending_count(),
                "model": model, "flash": flash, **context}, status_code=status_code)
        response.headers["X-CSRF-Token"] = session.csrf
        return response

    def flash(session: Session, kind: str, text: str) -> None:
        session.flash = {"kind": kind, "text": text}

    # -- static and health ------------------------------------------------------------
    @app.get("/healthz", include_in_schema=False)
    def healthz() -> PlainTextResponse:
        return PlainTextResponse("ok")

    @app.get("/static/console.css", include_in_schema=False)
    def css() -> FastResponse:
        return FastResponse(console_css + "\n" + pygments_css, media_type="text/css")

    # -- login ----------------------------------------------------------------------
    def login_page(request: Request, error: str | None = None, status_code: int = 200
                   ) -> FastResponse:
        form_token = token()
        response = templates.TemplateResponse(request, "login.html", {
            "csrf": form_token, "error": error, "me": None}, status_code=status_code)
        set_cookie(response, LOGIN_COOKIE, form_token, 600)
        return response

    @app.get("/login", response_class=HTMLResponse)
    def login_form(request: Request) -> FastResponse:
        if sessions.get(request.cookies.get(SESSION_COOKIE)):
            return RedirectResponse("/requests", status_code=303)
        return login_page(request)

    @app.post("/login")
    def login(request: Request, email: str = Form(""), password: str = Form(""),
              csrf: str = Form("")) -> FastResponse:
        # a page on another port of this host can set the login cookie (cookies do not keep
        # ports apart), not the Origin its browser sends (red team, issue 16)
        if _foreign_origin(request) or not same(csrf, request.cookies.get(LOGIN_COOKIE)):
            return login_page(request, "the login form expired; please try again", 403)
        addr = _client_addr(request)
        if not limiter.allow(addr):
            Governance(site_dir).audit("console", "reviewer.login_throttled", email[:254],
                                       source=f"web {addr}")
            return login_page(request, "too many login attempts from this address; wait a "
                              "few minutes", 429)
        try:
            account = Reviewers(Governance(site_dir)).authenticate(
                email[:254], password[:1024], source=f"web {addr}")
        except LoginRefused as exc:
            return login_page(request, str(exc), 401)
        key, session = sessions.open(account.email, account.name, account.credential)
        response = RedirectResponse("/requests", status_code=303)
        set_cookie(response, SESSION_COOKIE, key, None)
        set_cookie(response, LOGIN_COOKIE, "", 0)
        return response

    @app.post("/logout")
    def logout(request: Request, csrf: str = Form("")) -> FastResponse:
        key, session = current(request)
        check_csrf(request, session, csrf)
        sessions.close(key)
        Governance(site_dir).audit("console", "reviewer.logout", session.email,
                                   source=f"web {_client_addr(request)}")
        response = RedirectResponse("/login", status_code=303)
        set_cookie(response, SESSION_COOKIE, "", 0)
        return response

    @app.get("/")
    def home(request: Request) -> FastResponse:
        current(request)
        return RedirectResponse("/requests", status_code=303)

    # -- requests -----------------------------------------------------------------------
    @app.get("/requests")
    def requests_page(request: Request) -> FastResponse:
        _, session = current(request)
        with admin.client() as client:
            views = console.list_requests(site_dir, client)
        rows = pages.request_rows(views)
        badge.update(at=time.monotonic(), count=sum(r.status == "pending" for r in rows))
        return page(request, session, "requests.html", rows, rows=rows,
                    waiting=sum(r.needs_action for r in rows))

    def detail_response(request: Request, session: Session, request_id: str,
                        status_code: int = 200) -> FastResponse:
        with admin.client() as client:
            try:
                view = console.show(site_dir, request_id, client)
            except console.ConsoleError as exc:
                return page(request, session, "error.html", {"error": str(exc)}, 404,
                            message=str(exc))
        detail = pages.request_detail(site_dir, view)
        source_html = (highlight(detail.model_source, PythonLexer(), formatter)
                       if detail.model_source else "")
        discriminator_html = (highlight(detail.discriminator_source, PythonLexer(), formatter)
                              if detail.discriminator_source else "")
        gov = Governance(site_dir)
        approval = gov.approval(view.plan.plan_hash) if view.plan else None
        return page(request, session, "request.html", detail, status_code, d=detail,
                    source_html=source_html, discriminator_html=discriminator_html,
                    runnable=approval is not None
                    and approval.request_id == view.id,
                    mine_approved=session.email in view.approvers)

    @app.get("/requests/{request_id}")
    def request_page(request: Request, request_id: str) -> FastResponse:
        _, session = current(request)
        return detail_response(request, session, request_id)

    def decide(request: Request, request_id: str, csrf: str, act: Callable[[Reviewer, Any],
               console.RequestView]) -> FastResponse:
        _, session = current(request)
        check_csrf(request, session, csrf)
        account = reviewer_of(session)
        try:
            with admin.client() as client:
                view = act(account, client)
        except (console.ConsoleError, MedsyftError) as exc:
            if _wants_json(request):
                return JSONResponse({"error": str(exc)}, status_code=409)
            flash(session, "error", str(exc))
            return RedirectResponse(f"/requests/{urllib.parse.quote(request_id)}",
                                    status_code=303)
        badge["at"] = 0.0
        if view.status == "approved":
            text = (f"approved: {len(view.approvers)} of {view.approvals_required} "
                    "approvals; the plan can run")
        elif view.status == "denied":
            text = "denied; the researcher receives your reason"
            if view.also_revoked:
                text += (" (also revoked: " + ", ".join(r[:8] for r in view.also_revoked)
                         + ")")
        else:
            text = (f"your approval is recorded: {len(view.approvers)} of "
                    f"{view.approvals_required}; a second, different reviewer must approve")
        if _wants_json(request):
            return JSONResponse({"id": view.id, "status": view.status,
                                 "approvals": view.approvers,
                                 "approvals_required": view.approvals_required,
                                 "message": text})
        flash(session, "ok", text)
        return RedirectResponse(f"/requests/{view.id}", status_code=303)

    @app.post("/requests/{request_id}/approve")
    def approve(request: Request, request_id: str, csrf: str = Form(""),
                note: str = Form(""), override: str = Form(""),
                reason: str = Form("")) -> FastResponse:
        with_override = override == "yes"
        text = (reason if with_override else note)[:2000]
        return decide(request, request_id, csrf, lambda who, client: console.approve(
            site_dir, request_id, who, note=text, override=with_override, client=client,
            via=f"web console {_client_addr(request)}"))

    @app.post("/requests/{request_id}/deny")
    def deny(request: Request, request_id: str, csrf: str = Form(""),
             reason: str = Form("")) -> FastResponse:
        return decide(request, request_id, csrf, lambda who, client: console.deny(
            site_dir, request_id, reason[:2000], who, client=client,
            via=f"web console {_client_addr(request)}"))

    # -- ledger and plans ---------------------------------------------------------------
    @app.get("/ledger")
    def ledger_page(request: Request) -> FastResponse:
        _, session = current(request)
        entries = pages.ledgers(site_dir)
        return page(request, session, "ledger.html", entries, entries=entries,
                    quote=urllib.parse.quote)

    @app.get("/ledger/curve")
    def ledger_curve(request: Request, researcher: str, dataset: str) -> FastResponse:
        _, session = current(request)
        points = pages.ledger_curve(site_dir, researcher, dataset)
        if _wants_json(request):
            return page(request, session, "", [p.model_dump() for p in points])
        entry = next((e for e in pages.ledgers(site_dir)
                      if e.researcher == researcher and e.dataset == dataset), None)
        from sites.console.plots import ledger_png

        png = ledger_png(points, entry.cap if entry else None,
                         entry.guarantee if entry else "")
        return FastResponse(png, media_type="image/png")

    @app.get("/plans")
    def plans_page(request: Request) -> FastResponse:
        _, session = current(request)
        rows = pages.plan_rows(site_dir)
        return page(request, session, "plans.html", rows, rows=rows)

    # -- audit ----------------------------------------------------------------------
    @app.get("/audit")
    def audit_page(request: Request, event: str = "", actor: str = "", subject: str = "",
                   since: str = "") -> FastResponse:
        _, session = current(request)
        try:
            start = datetime.fromisoformat(since).timestamp() if since else 0.0
            error = None
        except ValueError:
            start, error = 0.0, f"since {since!r}: use an ISO date such as 2026-11-23"
        view = pages.audit_view(site_dir, event[:80], actor[:80], subject[:120], start)
        return page(request, session, "audit.html", view, v=view, error=error,
                    filters={"event": event, "actor": actor, "subject": subject,
                             "since": since}, result=None)

    @app.post("/audit/verify")
    def audit_verify(request: Request, csrf: str = Form("")) -> FastResponse:
        _, session = current(request)
        check_csrf(request, session, csrf)
        result = pages.verify(site_dir)
        Governance(site_dir).audit("console", "audit.verified", session.email, ok=result.ok,
                                   entries=result.entries)
        view = pages.audit_view(site_dir)
        if _wants_json(request):
            return page(request, session, "", result)
        return page(request, session, "audit.html", view, v=view, error=None,
                    filters={}, result=result)

    @app.get("/audit/export")
    def audit_export(request: Request) -> FastResponse:
        _, session = current(request)
        Governance(site_dir).audit("console", "audit.exported", session.email)
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        return FastResponse(pages.audit_lines(site_dir), media_type="application/x-ndjson",
                            headers={"Content-Disposition": f'attachment; filename='
                                     f'"{cfg.name}-audit-{stamp}.jsonl"'})

    # -- policy -----------------------------------------------------------------------
    @app.get("/policy")
    def policy_page(request: Request) -> FastResponse:
        _, session = current(request)
        view = pages.policy_view(site_dir)
        return page(request, session, "policy.html", view, v=view)

    return app
