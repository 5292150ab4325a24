"""The web approval console of a real datasite (four-eyes policy), served by `site up` on
its own port: over HTTP with the console's own client, from the CLI with the reviewer's
own credential, and in a real headless Chromium (Debian's `chromium` and
`chromium-driver`, driven by Selenium; skipped with a message where they are missing).

Screenshots go to $MEDSYFT_TEST_OUTPUT/browser (default: test-output/browser)."""

from __future__ import annotations

import http.server
import json
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from researcher.federation import initial_weights
from sites.console.http_client import ConsoleRefused, ConsoleSession
from sites.governance.reviewers import Reviewers
from sites.governance.store import Governance
from sites.operator import lifecycle
from sites.review import console
from tests.support.plans import make_plan
from tests.support.sites import one_site, wait_for

pytestmark = pytest.mark.integration

EMAIL = "ada@lovelace-institute.org"
PASSWORD = "console-site-pw-1"
SHAPE = (8, 8, 8)
SITE = "foxtrot"


class _Hook(http.server.BaseHTTPRequestHandler):
    received: list[dict] = []

    def do_POST(self):  # noqa: N802 - http.server's name
        body = self.rfile.read(int(self.headers["Content-Length"]))
        _Hook.received.append(json.loads(body))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args):  # quiet
        pass


@pytest.fixture(scope="module")
def webhook():
    server = http.server.HTTPServer(("127.0.0.1", 0), _Hook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}/medsyft"
    server.shutdown()


@pytest.fixture(scope="module")
def site(tmp_path_factory, memory_keyring, repo_root, webhook):
    with one_site(tmp_path_factory.mktemp("console"), SITE,
                  repo_root / "tests" / "policies" / "console.yaml", EMAIL, PASSWORD, n=40,
                  seed=5, shape=SHAPE, console={"webhook_url": webhook}) as env:
        accounts = Reviewers(Governance(env["dir"]))
        env["reviewers"] = {}
        for name in ("dpo", "second-dpo"):
            account, password = accounts.add(f"{name}@st-test.example", name, actor="test")
            env["reviewers"][name] = (account.email, password)
        env["url"] = lifecycle.status(env["dir"]).console_url
        yield env


def _pending(site, plan) -> str:
    """The plan's request id once the site's steward has reviewed it."""
    d, bound = site["dir"], site["fed"].bind(plan)
    view = wait_for(lambda: next((v for v in console.list_requests(d) if v.plan == bound
                                  and Governance(d).verdict_seen(v.id, v.policy_hash)), None),
                    timeout_s=90)
    return view.id


def _session(site, who: str) -> ConsoleSession:
    email, password = site["reviewers"][who]
    return ConsoleSession(site["url"]).login(email, password)


def test_site_status_prints_the_console_url(site):
    medsyft = str(Path(sys.executable).parent / "medsyft")
    result = subprocess.run([medsyft, "site", "status", str(site["dir"]), "--json"],
                            capture_output=True, text=True, timeout=60)
    st = json.loads(result.stdout)
    words = subprocess.run([medsyft, "site", "status", str(site["dir"])],
                           capture_output=True, text=True, timeout=60).stdout
    assert f"approval console: {site['url']}" in words
    assert st["console_url"] == site["url"] and st["console_answering"] is True
    assert site["url"].startswith("http://127.0.0.1:")
    # the backend the running site's secrets came from (the tests' in-memory one)
    assert st["keyring"].startswith("sites.common.keyring_backends.MemoryKeyring")
    assert st["keyring_plaintext"] is False and "keyring: " in words


def test_four_eyes_needs_two_accounts_over_the_served_console(site, webhook):
    fed, d = site["fed"], site["dir"]
    plan = make_plan(rounds=1, version=11)
    fed.submit(plan)
    rid = _pending(site, plan)
    with _session(site, "dpo") as a:
        first = a.approve(rid, note="looks right")
        assert first["status"] == "awaiting second approval"
        assert first["approvals"] == ["dpo@st-test.example"] and "1 of 2" in first["message"]
        with pytest.raises(ConsoleRefused, match="different reviewer"):
            a.approve(rid, note="me again")
        detail = a.request(rid)
        assert detail["row"]["approvals"] == ["dpo@st-test.example"]
    assert fed.status(plan)[SITE].status == "pending"
    assert Governance(d).approval(fed.bind(plan).plan_hash) is None
    with _session(site, "second-dpo") as b:
        second = b.approve(rid)
    assert second["status"] == "approved"
    approval = Governance(d).approval(fed.bind(plan).plan_hash)
    assert set(approval.reviewers) == {"dpo@st-test.example", "second-dpo@st-test.example"}
    actors = [e["actor"] for e in Governance(d).audit_entries()
              if e["event"] == "request.approved" and e["subject"] == rid]
    assert actors and all("via web console" in a for a in actors)
    wait_for(lambda: fed.status(plan)[SITE].status == "approved")
    bound = fed.bind(plan)
    results, errors = fed.run_round(bound, initial_weights(bound), retries=0)
    assert set(results) == {SITE}, errors
    with _session(site, "dpo") as a:
        ledger = a._json(a._http.get("/ledger", headers={"accept": "application/json"}))
        assert [(e["researcher"], e["adjacency"]) for e in ledger] == [(EMAIL, "replace_one")]
        assert 0 < ledger[0]["spent"] <= 8.0 and ledger[0]["cap"] == 100.0
        curve = a._json(a._http.get("/ledger/curve", params={
            "researcher": EMAIL, "dataset": "brain-mri-pet"},
            headers={"accept": "application/json"}))
        assert [round(p["epsilon"], 6) for p in curve] == [round(ledger[0]["spent"], 6)]
        png = a._http.get("/ledger/curve", params={"researcher": EMAIL,
                                                   "dataset": "brain-mri-pet"})
        assert png.headers["content-type"] == "image/png" and png.content[:4] == b"\x89PNG"
        plans = a._json(a._http.get("/plans", headers={"accept": "application/json"}))
        mine = next(p for p in plans if p["progress"]["plan_hash"] == fed.bind(plan).plan_hash)
        assert mine["progress"]["rounds_done"] == 1 and mine["last_release"] is not None
    # the webhook heard of the request when it arrived: ids and verdict, no code, no data
    hook = wait_for(lambda: next((m for m in _Hook.received if m["request_id"] == rid), None))
    assert hook["site"] == SITE and hook["researcher"] == EMAIL
    assert hook["dataset"] == "brain-mri-pet" and hook["verdict"]["failed"] == []
    assert "class Tiny" not in json.dumps(hook) and "source" not in json.dumps(hook)


XSS = '<script>alert(1)</script><img src=x onerror=alert(2)>'


def test_request_pages_show_the_verdict_graph_and_highlighted_source(site):
    fed = site["fed"]
    source = make_plan().model.source.replace(
        "class Tiny(nn.Module):", f"class Tiny(nn.Module):  # {XSS}")
    plan = make_plan(rounds=1, version=12, source=source)
    fed.submit(plan)
    rid = _pending(site, plan)
    with _session(site, "dpo") as a:
        rows = a.requests()
        assert rows[0]["status"] == "pending"  # pending first
        row = next(r for r in rows if r["id"] == rid)
        assert row["researcher"] == EMAIL and row["rounds"] == 1 and row["needs_action"]
        detail = a.request(rid)
        rules = {c["rule"]: c["status"] for c in detail["checks"]}
        assert rules["code.template"] == "pass" and rules["training.rounds"] == "pass"
        assert detail["operators"] and detail["n_parameters"] > 0
        assert detail["noise_multiplier"] > 0
        html = a._http.get(f"/requests/{rid}").text
        assert '<div class="source">' in html and 'class="k"' in html  # Pygments tokens
        # what the researcher wrote is shown as text, never as markup
        assert "<script" not in html and "<img" not in html and "&lt;script&gt;" in html
        first = a.approve(rid, note=XSS)  # a reviewer's note is escaped as well
        assert first["status"] == "awaiting second approval"
        for page in (f"/requests/{rid}", "/audit"):
            html = a._http.get(page).text
            assert "<script" not in html and "<img" not in html, page
            assert "&lt;img src=x onerror=alert(2)&gt;" in html, page


# -- the same flows in a real browser ------------------------------------------------------

def _browser_paths() -> tuple[str, str] | None:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    return (chromium, driver) if chromium and driver else None


@pytest.fixture(scope="module")
def browser(repo_root):
    paths = _browser_paths()
    if paths is None:
        pytest.skip("browser tests skipped: Chromium and its driver are not installed "
                    "(apt-get install chromium chromium-driver; .ci/run does)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = paths[0]
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                "--window-size=1400,1100", "--disable-gpu"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(executable_path=paths[1]), options=options)
    driver.set_page_load_timeout(120)
    out = Path(os.environ.get("MEDSYFT_TEST_OUTPUT", repo_root / "test-output")) / "browser"
    out.mkdir(parents=True, exist_ok=True)
    driver.shots = out  # type: ignore[attr-defined]
    yield driver
    driver.quit()


def _after_submit(driver, element_id: str):
    """The element on the page a form's submission leads to (a decision may take seconds:
    the site reviews the request again and tells syft)."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, 90).until(ec.presence_of_element_located((By.ID, element_id)))


def _shot(driver, name: str) -> None:
    driver.save_screenshot(str(driver.shots / f"{name}.png"))


def _log_in(driver, site, who: str) -> None:
    from selenium.webdriver.common.by import By

    email, password = site["reviewers"][who]
    driver.get(site["url"] + "/login")
    driver.find_element(By.ID, "email").send_keys(email)
    driver.find_element(By.ID, "password").send_keys(password)
    driver.find_element(By.ID, "login-button").click()
    assert _after_submit(driver, "me").text.endswith(f"<{email}>")


def _log_out(driver) -> None:
    from selenium.webdriver.common.by import By

    driver.find_element(By.CSS_SELECTOR, "form.logout button").click()
    _after_submit(driver, "login-button")


def test_browser_four_eyes_approval(site, browser):
    from selenium.webdriver.common.by import By

    fed = site["fed"]
    plan = make_plan(rounds=1, version=21)
    fed.submit(plan)
    rid = _pending(site, plan)
    _log_in(browser, site, "dpo")
    assert int(browser.find_element(By.ID, "pending-badge").text) >= 1
    _shot(browser, "01-requests-pending")
    browser.find_element(By.CSS_SELECTOR, f'a[href="/requests/{rid}"]').click()
    verdict = {row.find_elements(By.TAG_NAME, "td")[0].text:
               row.find_elements(By.TAG_NAME, "td")[1].text
               for row in browser.find_elements(By.CSS_SELECTOR, "#verdict tbody tr")}
    assert verdict["code.template"] == "pass" and verdict["training.rounds"] == "pass"
    assert "0 of 2" in browser.find_element(By.ID, "approvals").text
    _shot(browser, "02-request-verdict")
    browser.find_element(By.ID, "approve-note").send_keys("reviewed the model and the noise")
    browser.find_element(By.ID, "approve-button").click()
    assert "1 of 2" in _after_submit(browser, "flash").text
    assert "1 of 2" in browser.find_element(By.ID, "approvals").text
    assert not browser.find_elements(By.ID, "approve-button")  # not twice by one account
    _shot(browser, "03-first-approval")
    _log_out(browser)
    assert fed.status(plan)[SITE].status == "pending"
    _log_in(browser, site, "second-dpo")
    browser.get(f"{site['url']}/requests/{rid}")
    browser.find_element(By.ID, "approve-button").click()
    assert "2 of 2" in _after_submit(browser, "flash").text
    assert browser.find_element(By.ID, "runnable").text == "The plan is approved and can run."
    _shot(browser, "04-second-approval-runnable")
    wait_for(lambda: fed.status(plan)[SITE].status == "approved")
    _log_out(browser)


def test_browser_denial_reaches_the_researcher(site, browser):
    from selenium.webdriver.common.by import By

    fed = site["fed"]
    plan = make_plan(rounds=1, version=22)
    fed.submit(plan)
    rid = _pending(site, plan)
    _log_in(browser, site, "second-dpo")
    browser.get(f"{site['url']}/requests/{rid}")
    reason = "cohort reserved for the stroke study until March"
    browser.find_element(By.ID, "deny-reason").send_keys(reason)
    browser.find_element(By.ID, "deny-button").click()
    assert "denied" in _after_submit(browser, "flash").text
    assert "denied" in browser.find_element(By.ID, "status").text
    _shot(browser, "05-denied")
    status = wait_for(lambda: (s := fed.status(plan)[SITE]).status == "denied" and s)
    assert reason in (status.reason or "")
    _log_out(browser)


def test_browser_ledger_plans_policy_and_audit_verification(site, browser):
    from selenium.webdriver.common.by import By

    _log_in(browser, site, "dpo")
    browser.get(site["url"] + "/plans")
    assert browser.find_elements(By.CSS_SELECTOR, "#plans tbody tr")
    _shot(browser, "06-plans")
    browser.get(site["url"] + "/ledger")
    assert float(browser.find_element(By.CSS_SELECTOR, "td.spent").text) > 0
    curve = browser.find_element(By.CSS_SELECTOR, "img.curve")
    assert browser.execute_script("return arguments[0].naturalWidth", curve) > 100
    _shot(browser, "07-ledger")
    browser.get(site["url"] + "/policy")
    assert "Two different reviewers must approve" in browser.page_source
    _shot(browser, "08-policy")
    browser.get(site["url"] + "/audit")
    head = browser.find_element(By.ID, "head-hash").text
    assert len(head) == 64
    browser.find_element(By.ID, "verify-button").click()
    assert _after_submit(browser, "verify-result").text.startswith("Intact")
    _shot(browser, "09-audit-verified")
    _log_out(browser)


# -- last: its denial holds this researcher's later plans of the same model for review --

def test_cli_decisions_need_the_reviewers_own_password(site):
    from typer.testing import CliRunner

    from sites.entrypoint import app

    fed = site["fed"]
    plan = make_plan(rounds=1, version=13)
    fed.submit(plan)
    rid = _pending(site, plan)
    email, password = site["reviewers"]["dpo"]
    runner = CliRunner(mix_stderr=False)
    args = ["console", "deny", rid[:8], "--site", str(site["dir"]), "--reason",
            "not this quarter", "--reviewer", email, "--password-stdin"]
    wrong = runner.invoke(app, args, input="not-the-password\n")
    assert wrong.exit_code == 2 and "login refused" in wrong.stderr
    assert fed.status(plan)[SITE].status == "pending"
    no_account = runner.invoke(app, args[:-2] + ["--reviewer", "mallory@st-test.example",
                                                 "--password-stdin"], input="x\n")
    assert no_account.exit_code == 2
    right = runner.invoke(app, args, input=password + "\n")
    assert right.exit_code == 0, right.stdout + right.stderr
    assert password not in right.stdout + right.stderr + wrong.stdout + wrong.stderr
    denied = [d for d in Governance(site["dir"]).decisions() if d["request_id"] == rid]
    assert [(d["decision"], d["reviewer"]) for d in denied] == [("denied", email)]
    assert "via CLI" in denied[0]["actor"]
    wait_for(lambda: fed.status(plan)[SITE].status == "denied")
