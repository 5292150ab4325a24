"""Governance schema upgrades (alembic) on a database an older release wrote
(`tests/fixtures/governance_baseline.sqlite`, see its builder): refused until upgraded,
upgraded without losing a decision, a ledger row or an audit entry, atomically, and
never downgraded."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from sites.governance import schema
from sites.governance.store import DB_FILE, Governance, SiteMismatch
from sites.operator.config import load_site
from sites.operator.upgrade import upgrade_site

FIXTURE = Path(__file__).resolve().parents[2] / "fixtures" / "governance_baseline.sqlite"
ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture()
def old_site(site_dir: Path) -> Path:
    """A site folder whose governance database an older release wrote."""
    (site_dir / DB_FILE).unlink()
    for extra in ("-wal", "-shm"):
        Path(f"{site_dir / DB_FILE}{extra}").unlink(missing_ok=True)
    shutil.copyfile(FIXTURE, site_dir / DB_FILE)
    return site_dir


def rows(db_file: Path, sql: str) -> list[tuple]:
    db = sqlite3.connect(f"file:{db_file}?mode=ro", uri=True)
    try:
        return db.execute(sql).fetchall()
    finally:
        db.close()


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_site_refuses_an_older_database_naming_both_revisions_and_the_command(old_site):
    with pytest.raises(schema.SchemaMismatch) as info:
        Governance(old_site)
    text = str(info.value)
    assert "unversioned" in text and schema.head() in text
    assert f"medsyft site upgrade {old_site}" in text


def test_the_fixture_upgrades_and_keeps_every_decision_ledger_row_and_audit_entry(old_site):
    db = old_site / DB_FILE
    decisions = rows(db, "SELECT * FROM decisions ORDER BY id")
    runs = rows(db, "SELECT * FROM runs ORDER BY id")
    audit = rows(db, "SELECT * FROM audit ORDER BY seq")
    people = rows(db, "SELECT email FROM researchers UNION ALL SELECT email FROM reviewers")
    assert len(decisions) == 4 and len(runs) == 3 and len(audit) > 10  # the fixture's

    report = upgrade_site(old_site)
    assert report.from_revision == schema.UNVERSIONED and report.to_revision == schema.head()
    assert report.applied == ["0001_baseline", "0002_site_meta"]
    assert report.audit_ok, report.audit_message
    # the backup is the database as it was, byte for byte in content
    assert rows(Path(report.backup), "SELECT * FROM audit ORDER BY seq") == audit
    assert Path(report.backup).stat().st_mode & 0o077 == 0

    gov = Governance(old_site)
    assert rows(db, "SELECT * FROM decisions ORDER BY id") == decisions
    assert rows(db, "SELECT * FROM runs ORDER BY id") == runs
    assert rows(db, "SELECT email FROM researchers UNION ALL SELECT email FROM reviewers") \
        == people
    after = rows(db, "SELECT * FROM audit ORDER BY seq")
    assert after[:len(audit)] == audit and len(after) == len(audit) + 1
    assert after[-1][3] == "schema.upgraded"
    ok, n, _ = gov.verify_audit()
    assert ok and n == len(audit) + 1
    approval = gov.approval("a" * 64)
    assert approval is not None and len(approval.reviewers) == 2
    assert gov.approval("b" * 64) is None  # denied stays denied
    assert len(gov.ledger_history("ada@uni.edu", "brain-mri")) == 3
    assert gov.server_uid() == load_site(old_site)[1].server_uid
    # the site uses it as any other: a new audit entry chains on
    gov.audit("test", "after.upgrade", "x")
    assert gov.verify_audit()[0]
    # and a second upgrade has nothing to do
    again = upgrade_site(old_site)
    assert again.applied == [] and again.backup is None


def test_a_dry_run_changes_nothing(old_site):
    before = digest(old_site / DB_FILE)
    report = upgrade_site(old_site, dry_run=True)
    assert report.dry_run and report.audit_ok and report.backup is None
    assert report.applied == ["0001_baseline", "0002_site_meta"]
    assert digest(old_site / DB_FILE) == before
    assert not (old_site / "backups").exists()


def test_a_newer_database_is_refused_and_never_downgraded(site_dir):
    db = site_dir / DB_FILE
    con = sqlite3.connect(db)
    con.execute("UPDATE alembic_version SET version_num = '0099_from_a_later_release'")
    con.commit()
    con.close()
    before = digest(db)
    with pytest.raises(schema.SchemaMismatch, match="0099_from_a_later_release.*does not know"):
        Governance(site_dir)
    r = subprocess.run([sys.executable, "-m", "sites.entrypoint", "site", "upgrade",
                        str(site_dir)], capture_output=True, text=True, cwd=ROOT,
                       timeout=120, env={**os.environ, "COLUMNS": "200"})
    assert r.returncode == 1 and "going back to an older schema is refused" in r.stderr
    assert digest(db) == before


def test_a_failed_migration_leaves_the_database_as_it_was(old_site, tmp_path, monkeypatch):
    """A release whose third migration fails half-way: nothing of the first two, nor of
    its own first statement, remains (one BEGIN IMMEDIATE transaction)."""
    migrations = tmp_path / "migrations"
    shutil.copytree(schema.MIGRATIONS, migrations,
                    ignore=shutil.ignore_patterns("__pycache__"))
    (migrations / "versions" / "0003_breaks.py").write_text(
        "from alembic import op\n"
        "revision = '0003_breaks'\ndown_revision = '0002_site_meta'\n"
        "def upgrade():\n"
        "    op.execute('CREATE TABLE half_done (x INTEGER)')\n"
        "    op.execute('INSERT INTO audit (seq) VALUES (NULL)')  # violates NOT NULL\n"
        "def downgrade():\n    raise RuntimeError\n")
    monkeypatch.setattr(schema, "MIGRATIONS", migrations)
    schema._revisions.cache_clear()
    try:
        db = old_site / DB_FILE
        tables = rows(db, "SELECT name, sql FROM sqlite_master ORDER BY name")
        audit = rows(db, "SELECT * FROM audit ORDER BY seq")
        with pytest.raises(Exception, match="NOT NULL"):
            upgrade_site(old_site)
        assert rows(db, "SELECT name, sql FROM sqlite_master ORDER BY name") == tables
        assert rows(db, "SELECT * FROM audit ORDER BY seq") == audit
        assert schema.current_revision(db) == schema.UNVERSIONED
    finally:
        schema._revisions.cache_clear()


def test_a_running_site_is_not_upgraded(old_site):
    (old_site / "run" / "server.pid").write_text(str(os.getpid()))  # a live process
    try:
        with pytest.raises(Exception, match="is running: stop it first"):
            upgrade_site(old_site)
    finally:
        (old_site / "run" / "server.pid").unlink()


def test_a_database_bound_to_another_site_is_refused(site_dir):
    gov = Governance(site_dir)
    with pytest.raises(SiteMismatch, match="belongs to the site with server id"):
        gov.bind_server("0" * 32, actor="test")


def test_upgrade_json_report(old_site):
    r = subprocess.run([sys.executable, "-m", "sites.entrypoint", "site", "upgrade",
                        str(old_site), "--dry-run", "--json"], capture_output=True, text=True,
                       cwd=ROOT, timeout=120)
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    assert report["dry_run"] is True and report["to_revision"] == schema.head()
