"""`medsyft site doctor SITE_DIR`: is this site safe to run, and what is there to fix?

Each check says pass, warn or fail, with the fix in one line. The checks that would
make a start unsafe or doomed (`START_CHECKS`) also run in `site up`, before anything
is started: the keyring, the site's secrets, the database, its schema and server id,
syft's store, the policy, the audit chain, disk space, TLS certificates, the GPU when
`device: cuda`, and the ports. The sandbox is checked but does not stop a start: a
site without it still serves reviews and its console, and refuses researcher code.

Read-only: must never change the site, start it, or print a secret (a secret is
checked for presence, never shown).
"""

from __future__ import annotations

import datetime as dt
import shutil
import sqlite3
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field

from policies.schema import PolicyError
from sites.common import keychain
from sites.governance import audit, schema
from sites.governance.store import DB_FILE
from sites.operator import syft_store
from sites.operator.config import LOOPBACK, SiteConfig, load_site
from sites.operator.lifecycle import _read_pid, port_in_use, sandbox_state, site_service

Status = Literal["pass", "warn", "fail"]
GIB = 1 << 30
DISK_FAIL, DISK_WARN = 1 * GIB, 10 * GIB
CERT_WARN_DAYS = 30


class Check(BaseModel):
    name: str
    status: Status
    detail: str
    fix: str | None = Field(None, description="what to do, when it is not a pass")


class DoctorReport(BaseModel):
    site: str
    site_dir: str
    running: bool
    checks: list[Check]
    ok: bool = Field(description="no check failed")


def _ok(name: str, detail: str) -> Check:
    return Check(name=name, status="pass", detail=detail)


def _warn(name: str, detail: str, fix: str) -> Check:
    return Check(name=name, status="warn", detail=detail, fix=fix)


def _fail(name: str, detail: str, fix: str) -> Check:
    return Check(name=name, status="fail", detail=detail, fix=fix)


def check_keyring(site_dir: Path, cfg: SiteConfig) -> Check:
    try:
        verdict = keychain.check_backend()
    except keychain.KeyringRefused as e:
        return _fail("keyring", str(e).splitlines()[0],
                     "keep the secrets in medsyft's encrypted keyring file (README, "
                     "'Keyring'), or unlock the system keyring")
    except keychain.KeyringUnavailable as e:
        return _fail("keyring", str(e).splitlines()[0], "see README, 'Keyring'")
    backend = keychain.active_backend()
    check = getattr(backend, "check", None)
    if callable(check):
        try:
            check()  # the encrypted file: the passphrase opens it, every entry verifies
        except Exception as e:  # noqa: BLE001 - the message names the file, never a secret
            return _fail("keyring", f"{verdict.backend}: {e}",
                         "give the passphrase the file was made with, or restore the file")
    if verdict.plaintext:
        return _warn("keyring", f"{verdict.backend} keeps secrets in CLEAR (allowed for "
                     "this process only)", "a real site uses an encrypted keyring")
    return _ok("keyring", f"{verdict.backend} ({verdict.description})")


def check_secrets(site_dir: Path, cfg: SiteConfig) -> Check:
    service = site_service(cfg.name)
    try:
        missing = [k for k in ("signing-key", "admin-password")
                   if keychain.get_secret(service, k) is None]
    except keychain.KeyringUnavailable as e:
        return _fail("secrets", f"cannot read the keyring: {str(e).splitlines()[0]}",
                     "fix the keyring first")
    if missing:
        return _fail("secrets", f"the keyring holds no {', '.join(missing)} for site "
                     f"{cfg.name}", "use the keyring this site was created with, or restore "
                     "it from a backup made with --include-secrets")
    return _ok("secrets", f"signing key and admin password of {cfg.name} present")


def check_database(site_dir: Path, cfg: SiteConfig) -> Check:
    db = site_dir / DB_FILE
    if not db.exists():
        return _ok("database", f"{db.name} is created at the first start")
    try:
        st = schema.state(db)
    except sqlite3.DatabaseError as e:
        return _fail("database", f"{db}: {e}", "restore the site from a backup")
    if not st.known:
        return _fail("database", schema.mismatch_message(db, st, site_dir).splitlines()[0],
                     "run the release that wrote it, or restore a backup")
    if not st.up_to_date:
        return _fail("database", f"schema {st.current}, this release needs {schema.head()}",
                     f"medsyft site upgrade {site_dir}")
    return _ok("database", f"{db.name} at schema {st.current}")


def _ro(db: Path) -> sqlite3.Connection:
    return sqlite3.connect(f"file:{db}?mode=ro", uri=True)


def check_server_id(site_dir: Path, cfg: SiteConfig) -> Check:
    db = site_dir / DB_FILE
    if not db.exists() or not schema.state(db).up_to_date:
        return _ok("server id", "checked once the database is current")
    con = _ro(db)
    try:
        row = con.execute("SELECT value FROM site_meta WHERE key='server_uid'").fetchone()
    finally:
        con.close()
    if row is None:
        return _ok("server id", f"{cfg.server_uid} (recorded at the next start)")
    if row[0] != cfg.server_uid:
        return _fail("server id", f"the database belongs to server {row[0]}, site.yaml says "
                     f"{cfg.server_uid}", "this database is another site's: restore this "
                     "site's own backup")
    return _ok("server id", f"{cfg.server_uid}, as the database records")


def check_syft_store(site_dir: Path, cfg: SiteConfig) -> Check:
    storage = cfg.path(site_dir, cfg.storage)
    db = syft_store.database(storage, cfg.server_uid)
    gov = site_dir / DB_FILE
    datasets = 0
    if gov.exists() and schema.state(gov).up_to_date:
        con = _ro(gov)
        try:
            datasets = con.execute("SELECT count(*) FROM datasets").fetchone()[0]
        finally:
            con.close()
    if not db.exists():
        if datasets:
            return _fail("syft store", f"{db} is missing, yet {datasets} dataset(s) are "
                         "published: the site would come up on an empty store",
                         "restore the site from a backup (or fix `storage:` in site.yaml)")
        return _ok("syft store", "created at the first start")
    if not syft_store.is_sqlite(db):
        return _fail("syft store", f"{db} is not an SQLite database", "restore a backup")
    return _ok("syft store", f"{db.relative_to(site_dir) if db.is_relative_to(site_dir) else db}")


def check_policy(site_dir: Path, cfg: SiteConfig) -> Check:
    from sites.operator.site import Site

    try:
        policy, digest = Site(site_dir, cfg).policy()
    except PolicyError as e:
        return _fail("policy", str(e).splitlines()[0], "fix the policy file "
                     "(`medsyft policy validate FILE` names each error)")
    return _ok("policy", f"version {policy.version}, {len(policy.datasets)} dataset rule(s), "
               f"sha256 {digest[:12]}")


def check_audit(site_dir: Path, cfg: SiteConfig) -> Check:
    db = site_dir / DB_FILE
    if not db.exists() or not schema.state(db).up_to_date:
        return _ok("audit chain", "checked once the database is current")
    con = _ro(db)
    try:
        ok, n, message = audit.verify(con)
    finally:
        con.close()
    if not ok:
        return _fail("audit chain", message, "the record was altered: keep the file as "
                     "evidence, investigate, and restore the last good backup")
    return _ok("audit chain", message)


def check_disk(site_dir: Path, cfg: SiteConfig) -> Check:
    storage = cfg.path(site_dir, cfg.storage)
    where = storage if storage.exists() else site_dir
    free = shutil.disk_usage(where).free
    detail = f"{free / GIB:.1f} GiB free for blobs and runs ({where})"
    if free < DISK_FAIL:
        return _fail("disk", detail, "free space on that filesystem (at least 1 GiB)")
    if free < DISK_WARN:
        return _warn("disk", detail, "plan more space: a published cohort and its runs grow")
    return _ok("disk", detail)


def _cert_days(path: Path) -> float:
    from cryptography import x509

    cert = x509.load_pem_x509_certificate(path.read_bytes())
    return (cert.not_valid_after_utc - dt.datetime.now(dt.UTC)).total_seconds() / 86400


def check_tls(site_dir: Path, cfg: SiteConfig) -> Check:
    certs = [("console", cfg.console.tls_cert, cfg.console.tls_key),
             ("weights endpoint", cfg.transfer.tls_cert, cfg.transfer.tls_key)]
    exposed = [h for h in (cfg.host, cfg.console.host, cfg.transfer.host) if h not in LOOPBACK]
    found, worst = [], None
    for what, cert, key in certs:
        if cert is None:
            continue
        cpath, kpath = cfg.path(site_dir, cert), cfg.path(site_dir, key or "")
        if not cpath.is_file() or not kpath.is_file():
            return _fail("tls", f"{what}: {cpath if not cpath.is_file() else kpath} is "
                         "missing", "put the certificate and key where site.yaml says")
        try:
            days = _cert_days(cpath)
        except (ValueError, OSError) as e:
            return _fail("tls", f"{what}: {cpath} is not a PEM certificate ({e})",
                         "give a PEM certificate")
        if kpath.stat().st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            return _fail("tls", f"{what}: private key {kpath} is readable by others",
                         f"chmod 600 {kpath}")
        found.append(f"{what} certificate expires in {days:.0f} days")
        if days <= 0:
            return _fail("tls", f"{what}: certificate {cpath} expired {-days:.0f} days ago",
                         "renew the certificate")
        worst = days if worst is None else min(worst, days)
    if worst is not None and worst < CERT_WARN_DAYS:
        return _warn("tls", "; ".join(found), "renew the certificate before it expires")
    if found:
        return _ok("tls", "; ".join(found))
    if exposed:
        return _warn("tls", f"listening beyond loopback ({', '.join(exposed)}) with no "
                     "certificate on syft's port", "put syft's port behind a TLS proxy, or "
                     "bind it to 127.0.0.1")
    return _ok("tls", "loopback only: no certificate needed")


def check_gpu(site_dir: Path, cfg: SiteConfig) -> Check:
    if cfg.device == "cpu":
        return _ok("gpu", "device: cpu")
    if cfg.device == "auto":
        return _ok("gpu", "device: auto (uses a GPU when torch sees one)")
    import torch

    if not torch.cuda.is_available():
        return _fail("gpu", "device: cuda, but torch sees no GPU",
                     "install the NVIDIA driver and a CUDA build of torch, or set device: "
                     "auto")
    names = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return _ok("gpu", f"{len(names)} GPU(s): {', '.join(names)}")


def check_ports(site_dir: Path, cfg: SiteConfig) -> Check:
    ports = [("syft", cfg.host, cfg.port)]
    if cfg.console.enabled:
        ports.append(("console", cfg.console.host, cfg.console_port))
    if cfg.transfer.tls and cfg.transfer.port is not None:
        ports.append(("weights endpoint", cfg.transfer.host, cfg.transfer.port))
    running = _read_pid(site_dir) is not None
    busy = [f"{what} {host}:{port}" for what, host, port in ports if port_in_use(host, port)]
    if running:
        from sites.operator.lifecycle import status

        st = status(site_dir)
        if st.answering and not st.identity_ok:
            return _fail("ports", f"{cfg.host}:{cfg.port} answers with another server id",
                         "another site holds this port: stop it or change `port:`")
        return _ok("ports", "served by this site (running)")
    if busy:
        return _fail("ports", f"in use by another program: {', '.join(busy)}",
                     "stop that program or change the port in site.yaml")
    return _ok("ports", ", ".join(f"{w} {h}:{p}" for w, h, p in ports) + " free")


def check_sandbox(site_dir: Path, cfg: SiteConfig) -> Check:
    state = sandbox_state(cfg)
    if state.startswith("sealed"):
        return _ok("sandbox", state)
    fix = ("allow unprivileged user namespaces (sysctl kernel.unprivileged_userns_clone=1, "
           "and on Ubuntu kernel.apparmor_restrict_unprivileged_userns=0), a kernel with "
           "seccomp and Landlock (5.13+)")
    if state.startswith("relaxed"):
        return _warn("sandbox", state, fix)
    return _fail("sandbox", state, fix)


def check_permissions(site_dir: Path, cfg: SiteConfig) -> Check:
    loose = [p for p in (site_dir, site_dir / DB_FILE, site_dir / "storage")
             if p.exists() and p.stat().st_mode & stat.S_IRWXO]
    if loose:
        return _warn("permissions", f"readable by every user: {', '.join(map(str, loose))}",
                     f"chmod -R o-rwx {site_dir}")
    return _ok("permissions", "the site folder is closed to other users")


CHECKS: list[Callable[[Path, SiteConfig], Check]] = [
    check_keyring, check_secrets, check_database, check_server_id, check_syft_store,
    check_policy, check_audit, check_disk, check_tls, check_gpu, check_ports,
    check_sandbox, check_permissions,
]


#: what `site up` runs first: a fail here would make the start unsafe or doomed
START_CHECKS = [c for c in CHECKS if c not in (check_sandbox, check_permissions)]


def diagnose(site_dir: Path, for_start: bool = False) -> DoctorReport:
    """Run every check (`for_start`: those in START_CHECKS)."""
    site_dir, cfg = load_site(site_dir)
    checks = []
    for fn in START_CHECKS if for_start else CHECKS:
        name = fn.__name__.removeprefix("check_").replace("_", " ")
        try:
            checks.append(fn(site_dir, cfg))
        except Exception as e:  # noqa: BLE001 - a check that breaks is itself a finding
            checks.append(_fail(name, f"the check itself failed: {type(e).__name__}: {e}",
                                "report this with the output of `medsyft site doctor`"))
    return DoctorReport(site=cfg.name, site_dir=str(site_dir),
                        running=_read_pid(site_dir) is not None, checks=checks,
                        ok=all(c.status != "fail" for c in checks))
