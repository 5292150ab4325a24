"""Serve the web console from the site process: a uvicorn server in a thread of its own.

Started by `sites.operator.server_main` after syft's own server is configured; logs
in to syft as the site admin with the password the site process holds in memory
(never read from a file here). TLS when site.yaml gives `console.tls_cert` and
`console.tls_key`. Must never print: the site process's output is its log.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

from sites.common.syft_client import login, server_metadata
from sites.console.app import AdminLink, create_app
from sites.operator.config import load_site

log = logging.getLogger("medsyft.console")


def build_server(site_dir: Path, admin_password: str):  # noqa: ANN201 - uvicorn.Server
    """The console's uvicorn server (not started), or None when site.yaml turns it off.

    Proxy headers are ignored: uvicorn would otherwise take `X-Forwarded-For` from any
    loopback client as the client's address, and the per-address login limit with it."""
    import uvicorn

    site_dir, cfg = load_site(site_dir)
    if not cfg.console.enabled:
        log.info("web console: off (site.yaml console.enabled: false)")
        return None

    def admin_login():  # noqa: ANN202 - a syft client
        deadline = time.monotonic() + 120
        while server_metadata(cfg.host, cfg.port) is None and time.monotonic() < deadline:
            time.sleep(0.5)
        return login(cfg.host, cfg.port, cfg.admin_email, admin_password)

    app = create_app(site_dir, AdminLink(admin_login))
    ssl = {}
    if cfg.console.tls:
        ssl = {"ssl_certfile": str(cfg.path(site_dir, cfg.console.tls_cert)),
               "ssl_keyfile": str(cfg.path(site_dir, cfg.console.tls_key))}
    return uvicorn.Server(uvicorn.Config(
        app, host=cfg.console.host, port=cfg.console_port, log_level="warning",
        access_log=False, server_header=False, proxy_headers=False,
        forwarded_allow_ips="", **ssl))


def start(site_dir: Path, admin_password: str) -> threading.Thread | None:
    """Start the console (unless site.yaml turns it off); returns its thread."""
    server = build_server(site_dir, admin_password)
    if server is None:
        return None
    thread = threading.Thread(target=server.run, name="medsyft-console", daemon=True)
    thread.start()
    log.info("web console: %s", load_site(site_dir)[1].console_url)
    return thread
