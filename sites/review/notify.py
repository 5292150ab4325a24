"""Tell the data owner that a request arrived: a JSON POST to the webhook in site.yaml.

The message holds only what the requests page lists: site, request id, researcher
(the site's own record), dataset, plan name and the verdict summary. Never the
model source, never a value of the cohort. Sent from a thread of its own so a
slow receiver never holds up the steward; a failure is logged (without the
payload) and not retried.
"""

from __future__ import annotations

import json
import logging
import threading
import urllib.request
from typing import Any

log = logging.getLogger("medsyft.notify")
TIMEOUT_S = 10.0


def payload(site: str, view: Any) -> dict:
    """The webhook's body for a reviewed request (`sites.review.console.RequestView`)."""
    checks = view.checks
    return {
        "event": "request.received", "site": site, "request_id": view.id,
        "researcher": view.researcher,
        "dataset": view.plan.dataset if view.plan else view.input_dataset,
        "plan": f"{view.plan.name} v{view.plan.version}" if view.plan else None,
        "verdict": {"passed": sum(c.status == "pass" for c in checks),
                    "failed": [c.rule for c in checks if c.status == "fail"],
                    "warned": [c.rule for c in checks if c.status == "warn"],
                    "needs_reviewer": bool(view.needs_reviewer)},
        "status": view.status,
    }


def _post(url: str, body: bytes, request_id: str) -> None:
    req = urllib.request.Request(url, data=body, method="POST",
                                 headers={"Content-Type": "application/json",
                                          "User-Agent": "medsyft-site"})
    try:
        with urllib.request.urlopen(req, timeout=TIMEOUT_S) as r:  # noqa: S310 - http(s) only
            log.info("webhook: request %s announced (HTTP %s)", request_id[:8], r.status)
    except Exception as exc:
        log.warning("webhook: could not announce request %s: %s", request_id[:8],
                    type(exc).__name__)


def request_arrived(url: str, site: str, view: Any) -> threading.Thread:
    body = json.dumps(payload(site, view)).encode()
    t = threading.Thread(target=_post, args=(url, body, view.id), name="medsyft-webhook",
                         daemon=True)
    t.start()
    return t
