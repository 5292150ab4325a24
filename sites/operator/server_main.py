"""Process entry of one datasite: `python -m sites.operator.server_main SITE_DIR`.

Reads the site's secrets (server signing key, admin password) as one JSON line
on stdin, never from argv, files or the inherited environment; sets the
variables syft 0.9.5 reads once at import (stable server uid + key so a
restart keeps users, datasets, requests and approvals; admin account; storage
inside the site folder); then serves syft's FastAPI app with uvicorn in this
very process, and the web approval console (`sites.console`) on its own port.
Once the server object exists the secrets are removed from
`os.environ`. stdout/stderr go to the site log; nothing is printed.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path

SECRET_ENV = ("SERVER_PRIVATE_KEY", "DEFAULT_ROOT_PASSWORD")


def _redirect_output(log_file: Path) -> None:
    log_file.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(log_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    sys.stdout = os.fdopen(1, "w", buffering=1)
    sys.stderr = os.fdopen(2, "w", buffering=1)


def _raise_file_limit() -> None:
    """Open files up to the hard limit: every connection to the site holds one, and the
    soft default (often 1024) is what a crowd of idle connections exhausts first."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def _configure_logging(site_dir: Path, cfg) -> None:
    """medsyft's own records go to logs/site.log (rotated by size, text or JSON lines as
    site.yaml says); uvicorn's and syft's to stderr (server.log)."""
    from sites.operator.site_logging import handler

    medsyft = logging.getLogger("medsyft")
    for old in medsyft.handlers:
        old.close()
    medsyft.handlers[:] = [handler(site_dir / "logs" / "site.log", cfg)]
    medsyft.setLevel(getattr(logging, cfg.log_level.upper()))
    medsyft.propagate = False


def _record_keyring(site_dir: Path, name: str, verdict: dict) -> None:
    """The keyring backend the secrets came from goes to the site log; a plaintext one
    (allowed only with --allow-plaintext-keyring) also to the audit log, at every start."""
    from sites.governance.store import Governance

    site_log = logging.getLogger("medsyft.site")
    backend = verdict.get("backend", "unknown")
    if verdict.get("plaintext"):
        site_log.warning("keyring: %s keeps this site's secrets in CLEAR; allowed with "
                         "--allow-plaintext-keyring (demo only, never a real site)", backend)
        Governance(site_dir).audit("site", "keyring.plaintext_allowed", name, backend=backend)
    else:
        site_log.info("keyring: %s (%s)", backend, verdict.get("description", ""))


def app_factory():  # called by uvicorn
    from syft.server.uvicorn import app_factory as syft_app_factory

    from sites.common.syft_guard import apply as apply_syft_guard
    from sites.common.syft_patches import apply as apply_syft_patches
    from sites.operator.config import load_site
    from sites.review.researcher_api import refusal
    from sites.runtime.rounds import SITE_DIR_ENV

    patched = apply_syft_patches()
    guarded = apply_syft_guard(refusal)  # raises if it cannot be installed: no unguarded site
    app = syft_app_factory()
    site_dir, cfg = load_site(os.environ[SITE_DIR_ENV])
    _configure_logging(site_dir, cfg)  # after syft, which configures logging too
    site_log = logging.getLogger("medsyft.site")
    site_log.info("syft speed patches: %s", ", ".join(patched) or "none")
    site_log.info("syft request guard: %s", ", ".join(guarded))
    from sites.operator.lifecycle import sandbox_state
    from sites.operator.site import Site
    from sites.runtime.rounds import training_processes

    site = Site(site_dir, cfg)
    state = sandbox_state(cfg)
    if state.startswith("sealed"):
        site_log.info("sandbox: %s", state)
        training_processes(site).prestart()
    else:
        site_log.warning("sandbox: %s", state)
        site.governance().audit("site", "sandbox." + state.split()[0], cfg.name, state=state)
        if cfg.sandbox == "relaxed":
            training_processes(site).prestart()
    for key in SECRET_ENV:
        os.environ.pop(key, None)
    import syft.server.server as syft_server

    syft_server.default_root_password = None
    from sites.runtime.weights_api import mount, start_tls

    start_tls(site_dir)  # with a certificate, the weights endpoint on its own TLS port
    return mount(app, site_dir)  # the weights endpoint in front of syft, on its port


def main() -> int:
    site_dir = Path(sys.argv[1]).resolve()
    secrets = json.loads(sys.stdin.readline())
    sys.stdin.close()

    from sites.governance.store import Governance
    from sites.operator.config import load_site
    from sites.runtime.rounds import SITE_DIR_ENV

    site_dir, cfg = load_site(site_dir)
    _raise_file_limit()
    from sites.operator.site_logging import rotate_at_start

    rotate_at_start(site_dir / "logs" / "server.log", cfg)
    _redirect_output(site_dir / "logs" / "server.log")
    _configure_logging(site_dir, cfg)
    _record_keyring(site_dir, cfg.name, secrets.get("keyring") or {})
    aborted = Governance(site_dir).abort_running(actor="site")
    if aborted:
        logging.getLogger("medsyft.site").warning("%d run(s) left by a crash marked aborted",
                                                  aborted)
    from sites.runtime import discriminators, uploads

    uploads.sweep(site_dir, at_start=True)  # what a crash left half-written, or unclaimed
    swept = discriminators.sweep(site_dir, Governance(site_dir), at_start=True)
    if swept:
        logging.getLogger("medsyft.site").info(
            "deleted %d discriminator(s) of GAN plans that cannot run again", len(swept))
    storage = cfg.path(site_dir, cfg.storage)
    storage.mkdir(parents=True, exist_ok=True)
    os.environ.update({
        "SERVER_UID": cfg.server_uid,
        "SERVER_PRIVATE_KEY": secrets["signing_key"],
        "DEFAULT_ROOT_EMAIL": cfg.admin_email,
        "DEFAULT_ROOT_USERNAME": f"{cfg.name} data owner",
        "DEFAULT_ROOT_PASSWORD": secrets["admin_password"],
        "SYFT_TEMP_ROOT": str(storage),
        "TQDM_DISABLE": "1",
        SITE_DIR_ENV: str(site_dir),
        # syft's AppSettings (read by app_factory)
        "SYFT_NAME": cfg.name,
        "SYFT_SERVER_TYPE": "datasite",
        "SYFT_DEV_MODE": "False",
        "SYFT_RESET": "False",
        "SYFT_N_CONSUMERS": "0",
        "SYFT_CREATE_PRODUCER": "False",
        "SYFT_IN_MEMORY_WORKERS": "True",
        "SYFT_ENABLE_WARNINGS": "False",
    })
    from sites.review.steward import Steward

    Steward(site_dir, secrets["admin_password"]).start()
    from sites.console.serve import start as start_console

    start_console(site_dir, secrets["admin_password"])
    del secrets
    import uvicorn

    uvicorn.run("sites.operator.server_main:app_factory", factory=True, host=cfg.host,
                port=cfg.port, log_level=cfg.log_level, access_log=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
