"""The web console's own surface, over FastAPI's test client on a site folder: login,
sessions, CSRF, lock-out, rate limiting, security headers, JSON variants and the pages
that need no syft call (ledger, plans, audit, policy). The pages that talk to syft are
tested against a real site in tests/integration/test_console_site.py."""

from __future__ import annotations

import re
import sqlite3

import pytest
from fastapi.testclient import TestClient

from sites.console import app as console_app
from sites.console.app import SECURITY_HEADERS, AdminLink, create_app
from sites.governance.registry import Registry
from sites.governance.reviewers import MAX_FAILURES, Reviewers
from sites.governance.store import Governance
from sites.operator.config import load_site, save_site


def _no_syft():
    raise ConnectionError("no datasite in this test")


@pytest.fixture()
def site(site_dir):
    _, password = Reviewers(Governance(site_dir)).add("dpo@h.test", "dpo", actor="test")
    return {"dir": site_dir, "password": password}


def _client(site_dir, host: str = "127.0.0.1") -> TestClient:
    return TestClient(create_app(site_dir, AdminLink(_no_syft)), base_url=f"http://{host}")


def _csrf(html: str) -> str:
    return re.search(r'name="csrf" value="([^"]+)"', html).group(1)


def _login(c: TestClient, email: str, password: str):
    form = c.get("/login")
    return c.post("/login", data={"email": email, "password": password,
                                  "csrf": _csrf(form.text)}, follow_redirects=False)


def test_login_sets_a_strict_http_only_session_cookie_and_pages_need_it(site):
    c = _client(site["dir"])
    assert c.get("/ledger", follow_redirects=False).headers["location"] == "/login"
    assert c.get("/ledger", headers={"accept": "application/json"}).status_code == 401
    r = _login(c, "dpo@h.test", site["password"])
    assert r.status_code == 303 and r.headers["location"] == "/requests"
    cookie = r.headers["set-cookie"]
    assert "medsyft_console=" in cookie and "HttpOnly" in cookie
    assert "SameSite=strict" in cookie and "Secure" not in cookie  # no TLS here
    assert c.get("/ledger").status_code == 200


def test_session_cookie_is_secure_under_tls(site):
    d, cfg = load_site(site["dir"])
    save_site(d, cfg.model_copy(update={"console": cfg.console.model_copy(
        update={"tls_cert": "cert.pem", "tls_key": "key.pem"})}))
    c = _client(site["dir"])
    r = _login(c, "dpo@h.test", site["password"])
    assert "Secure" in r.headers["set-cookie"]
    assert r.headers["strict-transport-security"].startswith("max-age=")


def test_login_without_its_form_token_is_refused(site):
    c = _client(site["dir"])
    r = c.post("/login", data={"email": "dpo@h.test", "password": site["password"],
                               "csrf": "forged"}, follow_redirects=False)
    assert r.status_code == 403 and "medsyft_console=" not in r.headers.get("set-cookie", "")


def test_every_post_needs_the_session_csrf_token(site):
    c = _client(site["dir"])
    _login(c, "dpo@h.test", site["password"])
    token = c.get("/audit").headers["x-csrf-token"]
    for path, data in (("/audit/verify", {}), ("/logout", {}),
                       ("/requests/abcd1234/approve", {"note": "x"}),
                       ("/requests/abcd1234/deny", {"reason": "x"})):
        assert c.post(path, data=data | {"csrf": "wrong"}).status_code == 403, path
        assert c.post(path, data=data).status_code == 403, path
    # a form posted from another origin, even carrying the token, is refused
    r = c.post("/audit/verify", data={"csrf": token},
               headers={"origin": "http://evil.example"})
    assert r.status_code == 403
    assert c.post("/audit/verify", data={"csrf": token}).status_code == 200


def test_nothing_is_decided_by_get(site):
    c = _client(site["dir"])
    _login(c, "dpo@h.test", site["password"])
    for path in ("/requests/abcd1234/approve", "/requests/abcd1234/deny", "/logout",
                 "/audit/verify"):
        assert c.get(path).status_code == 405, path


def test_every_response_carries_the_security_headers(site):
    c = _client(site["dir"])
    responses = [c.get("/login"), c.get("/healthz"), c.get("/static/console.css"),
                 c.get("/nowhere"), c.get("/ledger", follow_redirects=False)]
    _login(c, "dpo@h.test", site["password"])
    responses += [c.get(p) for p in ("/ledger", "/plans", "/audit", "/policy",
                                     "/audit/export")]
    responses.append(c.post("/audit/verify", data={"csrf": "bad"}))
    for r in responses:
        for header, value in SECURITY_HEADERS.items():
            assert r.headers.get(header) == value, (r.url, header)
    csp = SECURITY_HEADERS["Content-Security-Policy"]
    assert "default-src 'none'" in csp and "script-src" not in csp and "unsafe" not in csp
    page = c.get("/policy").text
    assert "<script" not in page and " style=" not in page  # nothing the CSP would block


def test_lock_out_after_repeated_wrong_passwords_is_audited(site):
    c = _client(site["dir"])
    for _ in range(MAX_FAILURES):
        r = _login(c, "dpo@h.test", "guess")
        assert r.status_code == 401
    assert "locked" not in r.text  # a guesser is not told (that would say the account exists)
    r = _login(c, "dpo@h.test", site["password"])
    assert r.status_code == 401 and "locked" in r.text
    events = [e for e in Governance(site["dir"]).audit_entries()
              if e["event"] in ("reviewer.login_failed", "reviewer.locked")]
    assert [e["event"] for e in events].count("reviewer.locked") == 1
    assert all(e["details"]["source"].startswith("web ") for e in events)
    assert all(site["password"] not in str(e) for e in events)


def test_login_attempts_are_rate_limited_per_address(site, monkeypatch):
    from sites.console import sessions

    monkeypatch.setattr(console_app, "LoginLimiter", lambda: sessions.LoginLimiter(3, 300))
    c = _client(site["dir"])
    codes = [_login(c, f"nobody{i}@h.test", "x").status_code for i in range(4)]
    assert codes == [401, 401, 401, 429]
    assert _login(c, "dpo@h.test", site["password"]).status_code == 429  # even the right one
    assert "reviewer.login_throttled" in {e["event"] for e in
                                          Governance(site["dir"]).audit_entries()}


def test_a_researcher_account_cannot_log_in(site):
    gov = Governance(site["dir"])
    Registry(gov).add(user_id="u1", verify_key="k1", email="ada@lovelace-institute.org",
                      name="Ada", institution="Lovelace", actor="test")
    c = _client(site["dir"])
    r = _login(c, "ada@lovelace-institute.org", "the researcher's syft password")
    assert r.status_code == 401 and "medsyft_console=" not in r.headers.get("set-cookie", "")


def test_logout_ends_the_session(site):
    c = _client(site["dir"])
    _login(c, "dpo@h.test", site["password"])
    token = c.get("/plans").headers["x-csrf-token"]
    assert c.post("/logout", data={"csrf": token}, follow_redirects=False).status_code == 303
    assert c.get("/plans", follow_redirects=False).status_code == 303


def test_a_disabled_account_loses_its_session(site):
    c = _client(site["dir"])
    _login(c, "dpo@h.test", site["password"])
    token = c.get("/plans").headers["x-csrf-token"]
    Reviewers(Governance(site["dir"])).set_disabled("dpo@h.test", True, actor="test")
    r = c.post("/requests/abcd1234/deny", data={"csrf": token, "reason": "x"},
               follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/login"
    assert c.get("/ledger", headers={"accept": "application/json"}).status_code == 401


def test_a_password_reset_elsewhere_ends_the_sessions_opened_with_the_old_one(site):
    """`medsyft site reset-reviewer` runs in another process: the page must notice."""
    c = _client(site["dir"])
    _login(c, "dpo@h.test", site["password"])
    assert c.get("/plans", headers={"accept": "application/json"}).status_code == 200
    new = Reviewers(Governance(site["dir"])).reset_password("dpo@h.test", actor="owner")
    assert c.get("/plans", headers={"accept": "application/json"}).status_code == 401
    fresh = _client(site["dir"])
    _login(fresh, "dpo@h.test", new)
    assert fresh.get("/plans", headers={"accept": "application/json"}).status_code == 200


def test_a_post_from_a_null_or_foreign_origin_is_refused_even_with_the_token(site):
    c = _client(site["dir"])
    _login(c, "dpo@h.test", site["password"])
    token = c.get("/plans").headers["x-csrf-token"]
    for origin in ("null", "http://attacker.example", "http://127.0.0.1.attacker.example"):
        r = c.post("/audit/verify", data={"csrf": token}, headers={"origin": origin})
        assert r.status_code == 403, origin
    assert c.post("/audit/verify", data={"csrf": token},
                  headers={"origin": "http://127.0.0.1"}).status_code == 200


def test_a_login_from_another_origin_is_refused_even_with_a_planted_form_cookie(site):
    """A page on another port of this host can plant the login cookie (cookies do not keep
    ports apart) and post the form: its Origin gives it away (red team, issue 16)."""
    c = _client(site["dir"])
    form = c.get("/login")
    data = {"email": "dpo@h.test", "password": site["password"], "csrf": _csrf(form.text)}
    for origin in ("http://127.0.0.1:9999", "null"):
        r = c.post("/login", data=data, headers={"origin": origin}, follow_redirects=False)
        assert r.status_code == 403 and "medsyft_console=" not in r.headers.get("set-cookie",
                                                                                 "")
    data["csrf"] = _csrf(c.get("/login").text)  # each form has its own token
    r = c.post("/login", data=data, headers={"origin": "http://127.0.0.1"},
               follow_redirects=False)
    assert r.status_code == 303


def test_every_loopback_address_and_each_ipv6_64_share_one_login_allowance():
    from sites.console.sessions import LoginLimiter, limit_key

    assert limit_key("127.0.0.1") == limit_key("127.0.0.2") == limit_key("::1") \
        == limit_key("::ffff:127.0.0.9")
    assert limit_key("2001:db8::1") == limit_key("2001:db8::ffff")
    assert limit_key("2001:db8::1") != limit_key("2001:db8:0:1::1")
    assert limit_key("10.0.0.1") != limit_key("10.0.0.2")
    limiter = LoginLimiter(3, 300)
    assert [limiter.allow(f"127.0.0.{i}") for i in range(1, 5)] == [True, True, True, False]
    assert limiter.allow("10.0.0.1")


def test_unknown_host_header_is_refused_on_loopback(site):
    c = _client(site["dir"], host="attacker.example")  # DNS rebinding onto loopback
    assert c.get("/login").status_code == 421


def test_json_variants_of_the_pages(site):
    c = _client(site["dir"])
    _login(c, "dpo@h.test", site["password"])
    j = {"accept": "application/json"}
    assert c.get("/ledger", headers=j).json() == []
    assert c.get("/plans", headers=j).json() == []
    policy = c.get("/policy", headers=j).json()
    assert policy["policy_hash"] and policy["explained"] and policy["error"] is None
    audit = c.get("/audit", headers=j).json()
    assert audit["head_hash"] and audit["entries"][0]["event"] == "reviewer.login"
    verified = c.post("/audit/verify", data={"csrf": c.get("/plans").headers["x-csrf-token"]},
                      headers=j).json()
    assert verified["ok"] is True


def test_audit_page_names_the_first_broken_entry_and_exports_json_lines(site):
    c = _client(site["dir"])
    _login(c, "dpo@h.test", site["password"])
    export = c.get("/audit/export")
    lines = export.text.splitlines()
    assert export.headers["content-disposition"].startswith("attachment;")
    assert len(lines) >= 2 and all('"hash"' in x for x in lines)
    db = sqlite3.connect(site["dir"] / "governance.sqlite")
    db.execute("UPDATE audit SET subject = 'someone-else' WHERE seq = 1")
    db.commit()
    db.close()
    token = c.get("/plans").headers["x-csrf-token"]
    page = c.post("/audit/verify", data={"csrf": token}).text
    assert "BROKEN" in page and "entry 1" in page


def test_policy_page_states_the_policy_in_plain_words(site):
    c = _client(site["dir"])
    _login(c, "dpo@h.test", site["password"])
    page = c.get("/policy").text
    assert "One reviewer&#39;s approval is enough" in page or "One reviewer's" in page
    assert "epsilon_total" in page  # the file itself, shown as text


def test_the_served_console_ignores_forwarded_for_so_the_login_limit_holds(site):
    """Through the real uvicorn server the site runs: a client on loopback that invents an
    `X-Forwarded-For` per attempt is still one address to the login limiter."""
    import threading

    import httpx

    from sites.console import serve
    from sites.console.sessions import ATTEMPTS_PER_WINDOW

    server = serve.build_server(site["dir"], "unused: no syft call is made here")
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        url = load_site(site["dir"])[1].console_url
        with httpx.Client(base_url=url, timeout=30) as c:
            wait = c.get  # the server needs a moment to bind
            for _ in range(100):
                try:
                    wait("/healthz")
                    break
                except httpx.TransportError:
                    threading.Event().wait(0.1)
            codes = []
            for i in range(ATTEMPTS_PER_WINDOW + 2):
                form = c.get("/login")
                codes.append(c.post("/login", headers={"x-forwarded-for": f"10.9.8.{i}"},
                                    data={"email": "nobody@h.test", "password": "guess",
                                          "csrf": _csrf(form.text)}).status_code)
        assert codes[:ATTEMPTS_PER_WINDOW] == [401] * ATTEMPTS_PER_WINDOW
        assert codes[ATTEMPTS_PER_WINDOW:] == [429, 429]
        sources = {e["details"].get("source") for e in Governance(site["dir"]).audit_entries()
                   if e["event"].startswith("reviewer.login")}
        assert sources == {"web 127.0.0.1"}
    finally:
        server.should_exit = True
        thread.join(timeout=10)
