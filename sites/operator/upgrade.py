"""`medsyft site upgrade SITE_DIR [--dry-run]`: bring the governance database to this
code's schema, safely.

The site must be stopped. The database is first copied with SQLite's online backup
(consistent, unlike a file copy of a WAL database) to `backups/`; the migrations run in
one transaction; the audit chain must verify afterwards, with every earlier entry
unchanged. `--dry-run` does all of it on a temporary copy and leaves the site untouched.
A database newer than the code is refused: going back is a restore, not a migration.
Must never delete a backup or touch the keyring.
"""

from __future__ import annotations

import hashlib
import shutil
import sqlite3
import tempfile
import time
from pathlib import Path

from pydantic import BaseModel, Field

from sites.governance import schema
from sites.governance.store import DB_FILE, Governance
from sites.operator.config import load_site
from sites.operator.lifecycle import SiteError, _read_pid


class UpgradeReport(BaseModel):
    """What `site upgrade` did (or, with --dry-run, would do)."""

    site: str
    database: str
    from_revision: str | None
    to_revision: str
    applied: list[str] = Field(description="revisions applied, oldest first")
    dry_run: bool
    backup: str | None = Field(None, description="the copy taken before (not on a dry run)")
    backup_sha256: str | None = None
    audit_ok: bool
    audit_entries: int
    audit_message: str


def snapshot(db_file: Path, out: Path) -> str:
    """A consistent copy of a (possibly live, WAL) SQLite database; returns its SHA-256."""
    out.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    src = sqlite3.connect(f"file:{db_file}?mode=ro", uri=True, timeout=30)
    dst = sqlite3.connect(out)
    try:
        src.backup(dst)
        dst.execute("PRAGMA journal_mode=DELETE")  # one self-contained file
    finally:
        dst.close()
        src.close()
    out.chmod(0o600)
    return hashlib.sha256(out.read_bytes()).hexdigest()


def _audit_prefix(db_file: Path) -> list[tuple]:
    db = sqlite3.connect(f"file:{db_file}?mode=ro", uri=True)
    try:
        return db.execute("SELECT seq, hash FROM audit ORDER BY seq").fetchall()
    finally:
        db.close()


def upgrade_site(site_dir: Path, dry_run: bool = False) -> UpgradeReport:
    site_dir, cfg = load_site(site_dir)
    db_file = site_dir / DB_FILE
    if not db_file.exists():
        raise SiteError(f"{db_file} does not exist: nothing to upgrade (a new site's "
                        "database is created at this code's schema)")
    if _read_pid(site_dir) is not None:
        raise SiteError(f"site {cfg.name} is running: stop it first "
                        f"(`medsyft site down {site_dir}`)")
    st = schema.state(db_file)
    if not st.known:
        raise SiteError(schema.mismatch_message(db_file, st, site_dir))
    before = _audit_prefix(db_file) if st.current is not None else []
    backup = backup_sha = None
    if dry_run:
        work = Path(tempfile.mkdtemp(prefix="medsyft-upgrade-"))
        target = work / DB_FILE
        snapshot(db_file, target)
    else:
        work, target = None, db_file
        if not st.up_to_date:
            stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
            name = (st.current or "empty").split()[0]
            backup_path = site_dir / "backups" / f"governance-{name}-{stamp}.sqlite"
            backup_sha = snapshot(db_file, backup_path)
            backup = str(backup_path)
    try:
        from_rev, to_rev = schema.upgrade(target, actor="operator:site-upgrade",
                                          server_uid=cfg.server_uid)
        gov = Governance(target.parent)
        ok, n, message = gov.verify_audit()
        after = _audit_prefix(target)
        if after[:len(before)] != before:
            ok, message = False, "an audit entry from before the upgrade changed"
        if not ok and not dry_run:
            message += f"; restore {backup} (copy it over {db_file}) and report this"
        return UpgradeReport(site=cfg.name, database=str(db_file), from_revision=from_rev,
                             to_revision=to_rev, applied=list(st.pending) if
                             not st.up_to_date else [], dry_run=dry_run, backup=backup,
                             backup_sha256=backup_sha, audit_ok=ok, audit_entries=n,
                             audit_message=message)
    finally:
        if work is not None:
            shutil.rmtree(work, ignore_errors=True)
