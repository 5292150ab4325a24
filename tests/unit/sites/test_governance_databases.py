"""The governance store on each database it supports (SQLite, and a real PostgreSQL 15
server): the audit chain holds and catches an edit, timestamps keep every bit (the
chain hashes repr(time)), decisions make approvals, the schema check refuses another
revision without showing the database password, and a database stays with its site."""

from __future__ import annotations

import time

import pytest

from sites.governance import schema
from sites.governance.store import Governance, SiteMismatch


def test_the_audit_chain_holds_and_catches_an_edit(open_governance):
    gov = open_governance()
    for i in range(30):
        gov.audit("test", "thing.happened", f"s{i}", n=i, at_ns=time.time_ns())
    ok, n, message = gov.verify_audit()
    assert ok and n == 30, message
    with gov._connect() as db:
        db.execute("UPDATE audit SET subject = ? WHERE seq = ?", ("forged", 7))
    ok, _, message = gov.verify_audit()
    assert not ok and "entry 7 was altered" in message


def test_timestamps_keep_every_bit(open_governance):
    gov = open_governance()
    gov.audit("test", "precise", "x")
    with gov._connect(immediate=False) as db:
        stored = db.execute("SELECT at FROM audit").fetchone()[0]
    assert isinstance(stored, float) and len(repr(stored)) > 12  # not a 4-byte REAL
    if open_governance.database == "postgres":
        with gov._connect(immediate=False) as db:
            kinds = {r[0] for r in db.execute(
                "SELECT data_type FROM information_schema.columns WHERE table_schema = "
                "'public' AND data_type IN "
                "('real', 'double precision')").fetchall()}
        assert kinds == {"double precision"}


def test_decisions_make_an_approval(open_governance):
    gov = open_governance()
    for reviewer in ("dpo", "caldicott"):
        gov.record_decision(request_id="r1", plan_hash="p" * 64, researcher="ada@x.org",
                            dataset="brain", decision="approved", policy_hash="h",
                            reviewer=reviewer, actor=reviewer, note="", method="manual",
                            plan_json="{}", approvals_required=2)
    approval = gov.approval("p" * 64)
    assert approval is not None and approval.reviewers == ("dpo", "caldicott")
    with pytest.raises(ValueError, match="already approved"):
        gov.record_decision(request_id="r1", plan_hash="p" * 64, researcher="ada@x.org",
                            dataset="brain", decision="approved", policy_hash="h",
                            reviewer="dpo", actor="dpo", note="", method="manual",
                            plan_json="{}", approvals_required=2)


def test_a_nonce_is_used_once(open_governance):
    gov = open_governance()
    assert gov.use_nonce("n-1", 60.0) is True
    assert gov.use_nonce("n-1", 60.0) is False


def test_another_sites_database_is_refused(open_governance):
    gov = open_governance()
    gov.bind_server("a" * 32, actor="test")
    gov.bind_server("a" * 32, actor="test")  # the same site: fine
    with pytest.raises(SiteMismatch, match="belongs to the site with server id"):
        gov.bind_server("b" * 32, actor="test")


@pytest.mark.postgres
def test_a_postgres_database_at_another_revision_is_refused_without_its_password(
        postgres_server, tmp_path):
    url = postgres_server.new_database()
    gov = Governance(tmp_path, url=url)
    with gov._connect() as db:
        db.execute("UPDATE alembic_version SET version_num = ?", ("0099_later",))
    with pytest.raises(schema.SchemaMismatch) as info:
        Governance(tmp_path, url=url)
    text = str(info.value)
    assert "0099_later" in text and "does not know" in text
    assert postgres_server.password not in text and "***" in text
