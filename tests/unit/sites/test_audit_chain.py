"""The audit log is a hash chain: any one-byte change, removal or reordering is found."""

from __future__ import annotations

import sqlite3

import pytest

from sites.governance.store import Governance

COLUMNS = ["at", "actor", "event", "subject", "details", "prev_hash", "hash"]


@pytest.fixture()
def gov(tmp_path):
    g = Governance(tmp_path)
    for i in range(5):
        g.audit(f"actor-{i}", "test.event", f"subject-{i}", value=i, text="ünïcode")
    return g


def _flip_one_byte(path, seq: int, column: str) -> None:
    db = sqlite3.connect(path)
    (value,) = db.execute(f"SELECT {column} FROM audit WHERE seq = ?", (seq,)).fetchone()
    if isinstance(value, float):
        new = value + 1e-6
    else:
        text = str(value)
        ch = text[len(text) // 2]
        new = text[:len(text) // 2] + ("0" if ch != "0" else "1") + text[len(text) // 2 + 1:]
    db.execute(f"UPDATE audit SET {column} = ? WHERE seq = ?", (new, seq))
    db.commit()
    db.close()


def test_intact_chain_verifies(gov):
    ok, n, message = gov.verify_audit()
    assert ok and n == 5 and "intact" in message


@pytest.mark.parametrize("seq", [1, 3, 5])
@pytest.mark.parametrize("column", COLUMNS)
def test_one_changed_byte_anywhere_is_found_and_named(gov, seq, column):
    _flip_one_byte(gov.path, seq, column)
    ok, _, message = gov.verify_audit()
    assert not ok
    # a changed prev_hash is caught at that entry; any other change at that entry too
    assert f"entry {seq} " in message


def test_removed_entry_is_found(gov):
    db = sqlite3.connect(gov.path)
    db.execute("DELETE FROM audit WHERE seq = 3")
    db.commit()
    db.close()
    ok, _, message = gov.verify_audit()
    assert not ok and "entry 3 is missing" in message


def test_rewritten_chain_after_an_edit_is_still_found_if_not_recomputed_everywhere(gov):
    # an attacker who edits entry 2 and recomputes only its own hash breaks entry 3's link
    from sites.governance.audit import entry_hash

    db = sqlite3.connect(gov.path)
    db.row_factory = sqlite3.Row
    r = db.execute("SELECT * FROM audit WHERE seq = 2").fetchone()
    details = r["details"].replace('"value": 1', '"value": 9')
    new_hash = entry_hash(2, r["at"], r["actor"], r["event"], r["subject"], details,
                          r["prev_hash"])
    db.execute("UPDATE audit SET details = ?, hash = ? WHERE seq = 2", (details, new_hash))
    db.commit()
    db.close()
    ok, _, message = gov.verify_audit()
    assert not ok and "entry 3 does not follow entry 2" in message
