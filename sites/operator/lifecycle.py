"""Create, start, stop and inspect a site: `medsyft site init|up|down|status`.

Secrets are created here and go straight to the keyring; the server process
receives them on its stdin. `up` returns only once the server answers with the
site's own uid, and fails loudly (with the log's tail) otherwise.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

from nacl.encoding import HexEncoder
from nacl.signing import SigningKey

from policies.contract.errors import MedsyftError
from sites.common import keychain
from sites.common.keyring_policy import BackendVerdict
from sites.common.syft_client import server_metadata
from sites.governance.store import Governance
from sites.operator.config import (
    ConsoleConfig,
    SiteConfig,
    load_site,
    save_site,
    valid_site_name,
)

PID_FILE = "run/server.pid"
KEYRING_FILE = "run/keyring.json"  # which backend the running site's secrets came from
DEFAULT_POLICY = """\
# Site policy. Nothing can be approved until you list datasets and researchers.
# See `medsyft policy --help` and the examples shipped in policies/. Reviewers are the
# names of the accounts `medsyft site add-reviewer` creates.
version: 1
approval: manual
reviewers: [data-owner]
datasets: {}
"""


class SiteError(MedsyftError, RuntimeError):
    pass


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def port_in_use(host: str, port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex((host, port)) == 0


def site_service(name: str) -> str:
    return keychain.SITE_SERVICE.format(name=name)


def init_site(name: str, site_dir: Path, port: int | None = None, host: str = "127.0.0.1",
              device: str = "auto", policy_file: Path | None = None,
              admin_email: str | None = None, train_threads: int = 0) -> SiteConfig:
    if not valid_site_name(name):
        raise SiteError(f"site name {name!r}: use 2-40 lowercase letters, digits and '-', "
                        "starting with a letter")
    site_dir = site_dir.resolve()
    if (site_dir / "site.yaml").exists():
        raise SiteError(f"{site_dir / 'site.yaml'} already exists; refusing to overwrite")
    keychain.check_backend()  # a refused keyring: the steps, before anything is written
    service = site_service(name)
    if keychain.get_secret(service, "signing-key") is not None:
        raise SiteError(f"the keyring already holds secrets for a site named {name!r}")
    site_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    site_dir.chmod(0o700)  # imaging, ledgers and logs: the site's user only
    for sub in ("logs", "run", "storage", "runs"):
        (site_dir / sub).mkdir(exist_ok=True, mode=0o700)
    if policy_file is not None:
        shutil.copyfile(policy_file, site_dir / "policy.yaml")
    else:
        (site_dir / "policy.yaml").write_text(DEFAULT_POLICY)
    port = port or free_port(host)
    console_port = free_port("127.0.0.1")
    while console_port == port:
        console_port = free_port("127.0.0.1")
    cfg = SiteConfig(name=name, host=host, port=port, device=device,
                     console=ConsoleConfig(port=console_port),
                     server_uid=uuid.uuid4().hex,
                     admin_email=admin_email or f"admin@{name}.medsyft.org",
                     train_threads=train_threads)
    keychain.set_secret(service, "signing-key",
                        SigningKey.generate().encode(encoder=HexEncoder).decode())
    keychain.set_secret(service, "admin-password", keychain.generate_password())
    save_site(site_dir, cfg)
    Governance(site_dir).bind_server(cfg.server_uid, actor="operator")
    return cfg


def admin_password(cfg: SiteConfig) -> str:
    return keychain.require_secret(site_service(cfg.name), "admin-password")


def _read_pid(site_dir: Path) -> int | None:
    try:
        pid = int((site_dir / PID_FILE).read_text().strip())
    except (OSError, ValueError):
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass
    return pid


@dataclass
class SiteStatus:
    name: str
    site_dir: str
    url: str
    server_uid: str
    pid: int | None
    answering: bool
    identity_ok: bool
    running: bool
    sandbox: str = ""
    console_url: str | None = None  # None: the web console is off in site.yaml
    console_answering: bool = False
    keyring: str = ""  # the backend the running site's secrets came from, and whether in clear
    keyring_plaintext: bool = False


def console_answers(cfg: SiteConfig) -> bool:
    """Whether the site's web console answers its health check."""
    import ssl
    import urllib.request

    if not cfg.console.enabled:
        return False
    context = None
    if cfg.console.tls:
        context = ssl.create_default_context()
        context.check_hostname = False  # our own certificate, on our own machine
        context.verify_mode = ssl.CERT_NONE
    try:
        with urllib.request.urlopen(f"{cfg.console_url}/healthz", timeout=2,
                                    context=context) as r:
            return r.status == 200
    except Exception:
        return False


def sandbox_state(cfg: SiteConfig) -> str:
    """How researcher code is confined here, in words: `sealed`, `relaxed (missing: …)`
    or `unavailable (missing: …)`, in which case the site refuses to run it."""
    from sites.sandbox.confine import missing_features

    missing = missing_features()
    if not missing:
        return "sealed" + (" (sandbox: relaxed is set, but nothing is missing)"
                           if cfg.sandbox == "relaxed" else "")
    gaps = ", ".join(missing)
    if cfg.sandbox == "relaxed":
        return f"relaxed (missing: {gaps}): researcher code runs less confined"
    return f"unavailable (missing: {gaps}): researcher code is refused"


def status(site_dir: Path) -> SiteStatus:
    site_dir, cfg = load_site(site_dir)
    pid = _read_pid(site_dir)
    meta = server_metadata(cfg.host, cfg.port)
    identity_ok = bool(meta) and str(meta.get("id", "")).replace("-", "") == cfg.server_uid
    keyring_used = _keyring_record(site_dir) if pid is not None else {}
    return SiteStatus(cfg.name, str(site_dir), f"http://{cfg.host}:{cfg.port}", cfg.server_uid,
                      pid, meta is not None, identity_ok, pid is not None and identity_ok,
                      sandbox_state(cfg),
                      cfg.console_url if cfg.console.enabled else None,
                      pid is not None and console_answers(cfg),
                      keyring_used.get("summary", ""), bool(keyring_used.get("plaintext")))


def _keyring_summary(verdict: BackendVerdict) -> str:
    if verdict.plaintext:
        return (f"{verdict.backend}: secrets in CLEAR, allowed with --allow-plaintext-keyring "
                "(demo only)")
    return f"{verdict.backend} ({verdict.description})"


def _keyring_record(site_dir: Path) -> dict:
    try:
        return json.loads((site_dir / KEYRING_FILE).read_text())
    except (OSError, ValueError):
        return {}


def _log_tail(site_dir: Path, lines: int = 15) -> str:
    try:
        text = (site_dir / "logs" / "server.log").read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:])
    except OSError:
        return "(no server log)"


def up(site_dir: Path, timeout_s: float = 120.0,
       allow_plaintext_keyring: bool = False) -> SiteStatus:
    """Start the site, after the doctor's start checks (`sites.operator.doctor`): any that
    fails stops it here with its fix. A keyring backend medsyft refuses is named with the
    steps to a safe one; `allow_plaintext_keyring` (the demo) lets a plaintext one through
    and is recorded in `site status`, the site log and the audit log."""
    if allow_plaintext_keyring:
        keychain.allow_plaintext_keyring()
    site_dir, cfg = load_site(site_dir)
    current = status(site_dir)
    if current.running:
        return current
    verdict = keychain.check_backend()  # refused: the steps to a safe one (HEADLESS_STEPS)
    from sites.operator.doctor import diagnose

    failed = [c for c in diagnose(site_dir, for_start=True).checks if c.status == "fail"]
    if failed:
        raise SiteError(f"site {cfg.name} not started; `medsyft site doctor {site_dir}` "
                        "found:\n" + "\n".join(f"  {c.name}: {c.detail}\n    fix: {c.fix}"
                                                for c in failed))
    # a database at another schema (SchemaMismatch names the command) or another site's
    gov = Governance(site_dir)
    gov.bind_server(cfg.server_uid, actor="site")
    service = site_service(cfg.name)
    secrets = json.dumps({
        "signing_key": keychain.require_secret(service, "signing-key"),
        "admin_password": keychain.require_secret(service, "admin-password"),
        "keyring": verdict.model_dump(),
    })
    (site_dir / "logs").mkdir(exist_ok=True)
    (site_dir / "run").mkdir(exist_ok=True)
    (site_dir / KEYRING_FILE).write_text(json.dumps(
        {"summary": _keyring_summary(verdict), **verdict.model_dump()}))
    env = {k: v for k, v in os.environ.items()
           if k not in ("SERVER_PRIVATE_KEY", "DEFAULT_ROOT_PASSWORD", "SERVER_UID")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "sites.operator.server_main", str(site_dir)],
        stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        cwd=site_dir, env=env, start_new_session=True)
    assert proc.stdin is not None
    proc.stdin.write(secrets.encode() + b"\n")
    proc.stdin.close()
    del secrets
    (site_dir / PID_FILE).write_text(str(proc.pid))
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SiteError(f"site {cfg.name} exited during start-up (code {proc.returncode}); "
                            f"last lines of {site_dir / 'logs' / 'server.log'}:\n"
                            f"{_log_tail(site_dir)}")
        st = status(site_dir)
        if st.answering and not st.identity_ok:
            down(site_dir)
            raise SiteError(f"site {cfg.name} answers with a different server id than "
                            f"site.yaml's {cfg.server_uid}: refusing to run it")
        if st.running and (st.console_answering or not cfg.console.enabled):
            return st
        time.sleep(0.5)
    down(site_dir)
    raise SiteError(f"site {cfg.name} did not answer on {cfg.host}:{cfg.port} within "
                    f"{timeout_s:.0f}s; last lines of the log:\n{_log_tail(site_dir)}")


def down(site_dir: Path, timeout_s: float = 15.0) -> bool:
    """Stop the site's server (and its training children). True if one was running."""
    site_dir, _ = load_site(site_dir)
    pid = _read_pid(site_dir)
    if pid is None:
        (site_dir / PID_FILE).unlink(missing_ok=True)
        return False
    for sig, wait in ((signal.SIGTERM, timeout_s), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            break
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            try:
                waited, _ = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                waited = 0
                try:
                    os.kill(pid, 0)
                except ProcessLookupError:
                    waited = pid
            if waited == pid:
                break
            time.sleep(0.2)
        else:
            continue
        break
    (site_dir / PID_FILE).unlink(missing_ok=True)
    return True


def status_dict(st: SiteStatus) -> dict:
    return asdict(st)
