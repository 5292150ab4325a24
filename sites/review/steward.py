"""The site steward: a thread in the datasite process that watches new requests.

For every request it has not seen under the current policy it computes the
verdict report and records it (audit: request.received, request.verdict).
A request that fails a hard check (one no override can pass: not the exact
plan request, not a registered account, a review that could not complete) is
refused at once with its reasons, whatever the approval mode. Under
`approval: auto` a request whose verdict has no failure is approved at once,
recorded as automatic; anything else waits for a reviewer. Each request is
reviewed on its own, so one that cannot be reviewed never stops the sweep, and
requests are taken in fair turns (one per researcher, the researcher served
longest ago first), so nobody's flood of requests holds up another's. It
also keeps
the public-policy endpoint registered. It holds the admin password in memory
only (handed over by `server_main`), never logs it, and never reads private
data.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Any

from policies.schema import PolicyError
from sites.common.syft_client import login, quiet, server_metadata
from sites.governance.store import AUTO_REVIEWER, Governance
from sites.operator.config import load_site
from sites.operator.site import Site
from sites.review import console, notify
from sites.review import public_endpoint as public_policy
from sites.runtime import discriminators, uploads

log = logging.getLogger("medsyft.steward")


def fair_turn(waiting: list[Any], served: dict[str, float]) -> list[Any]:
    """One request per researcher, oldest first, researchers served longest ago (or never)
    first: a researcher with many requests (or slow ones: each review may build a model
    for up to `review_timeout_s`) delays another's by at most one review."""
    def submitted(req: Any) -> float:
        return float(getattr(req.request_time, "utc_timestamp", 0.0))

    heads: dict[str, Any] = {}
    for req in sorted(waiting, key=lambda r: (submitted(r), str(r.id))):
        heads.setdefault(str(req.requesting_user_verify_key), req)
    return sorted(heads.values(), key=lambda r: (served.get(
        str(r.requesting_user_verify_key), 0.0), submitted(r)))


class Steward(threading.Thread):
    def __init__(self, site_dir: Path, admin_password: str, interval_s: float = 2.0) -> None:
        super().__init__(name="medsyft-steward", daemon=True)
        self.site_dir = site_dir
        self._password = admin_password
        self.interval_s = interval_s
        self.stop_event = threading.Event()
        self._policy_hash: str | None = None
        self._served: dict[str, float] = {}  # researcher's verify key -> last turn served

    def run(self) -> None:
        site_dir, cfg = load_site(self.site_dir)
        while server_metadata(cfg.host, cfg.port) is None:
            if self.stop_event.wait(0.5):
                return
        client = None
        while not self.stop_event.is_set():
            try:
                if client is None:
                    client = login(cfg.host, cfg.port, cfg.admin_email, self._password)
                    public_policy.register(client)
                if self.sweep(client):
                    continue  # more requests wait: next turn at once
            except Exception:
                log.exception("steward sweep failed; retrying")
                client = None
            self.stop_event.wait(self.interval_s)

    def sweep(self, client) -> bool:
        """Review one turn of waiting requests; True when more are waiting."""
        site_dir, cfg = load_site(self.site_dir)
        try:
            policy, policy_hash = Site(site_dir, cfg).policy()
        except PolicyError:
            log.error("policy file is invalid; requests wait for a valid policy")
            return
        gov = Governance(site_dir)
        uploads.sweep(site_dir)  # uploads no round claimed within their time
        for plan_hash in discriminators.sweep(site_dir, gov):
            gov.audit("steward", "discriminator.deleted", plan_hash,
                      reason="the plan cannot run another round here")
        if policy_hash != self._policy_hash:
            last = [e for e in gov.audit_entries() if e["event"] == "policy.loaded"]
            if not last or last[-1]["details"].get("policy_hash") != policy_hash:
                gov.audit("steward", "policy.loaded", cfg.policy, policy_hash=policy_hash,
                          previous=last[-1]["details"].get("policy_hash") if last else None)
            self._policy_hash = policy_hash
        # syft works out which requests are pending on its side (reading each request's
        # status through the client would cost two calls per request ever made)
        with quiet():
            pending = client.api.services.request.get_all_pending()
        waiting = [r for r in pending
                   if not gov.verdict_seen(str(r.id).replace("-", ""), policy_hash)]
        if not waiting:
            return False
        context = console._context(client)
        turn = fair_turn(waiting, self._served)
        for req in turn:
            request_id = str(req.id).replace("-", "")
            try:
                self._decide(site_dir, cfg, gov, policy, policy_hash, req, request_id, context)
            except Exception:  # this request only; the sweep goes on with the others
                log.exception("request %s: steward could not act on it", request_id[:8])
            self._served[str(req.requesting_user_verify_key)] = time.monotonic()
        return len(turn) < len(waiting)

    def _decide(self, site_dir: Path, cfg, gov: Governance, policy, policy_hash: str, req,
                request_id: str, context: console.ReviewContext) -> None:
        view = console.review_request(site_dir, cfg, req, context)
        arrived = gov.record_verdict(request_id, view.plan.plan_hash if view.plan else "",
                                     policy_hash, [c.model_dump() for c in view.checks],
                                     researcher=view.researcher)
        if arrived and cfg.console.webhook_url:
            notify.request_arrived(cfg.console.webhook_url, cfg.name, view)
        if view.hard_failures:
            console.refuse_view(site_dir, cfg, req, view, AUTO_REVIEWER)
            log.info("request %s refused: %s", request_id[:8],
                     ", ".join(c.rule for c in view.hard_failures))
        elif policy.approval == "auto" and not view.needs_reviewer:
            console.approve_view(site_dir, cfg, req, view, AUTO_REVIEWER,
                                 note="all rules pass; approved automatically by policy",
                                 method="auto")
            log.info("request %s approved automatically", request_id[:8])
