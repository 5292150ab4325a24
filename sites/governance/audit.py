"""The audit chain: an append-only log where every entry holds the previous one's hash.

Entry n's hash is SHA-256 over the JSON array [seq, repr(time), actor, event, subject,
details, hash of entry n-1] (entry 1 follows `GENESIS`). Altering, removing or
reordering any entry breaks every hash after it, so `verify` names the first broken
entry. An auditor can check the chain with this module and the SQLite file alone.

Writes happen inside the caller's transaction, so an event and the state change it
records commit together. Must never record pixel values, labels or secrets.
"""

from __future__ import annotations

import hashlib
import json
import time
from typing import Any

GENESIS = "0" * 64


def entry_hash(seq: int, at: float, actor: str, event: str, subject: str, details: str,
               prev_hash: str) -> str:
    """The hash of one entry (see the module docstring for what it covers)."""
    payload = json.dumps([seq, repr(at), actor, event, subject, details, prev_hash],
                         ensure_ascii=False)
    return hashlib.sha256(payload.encode()).hexdigest()


def append(db: Any, actor: str, event: str, subject: str,
           **details: Any) -> None:
    """Append one entry in `db`'s open transaction (which must be `BEGIN IMMEDIATE`, so
    that two writers never fork the chain).

    Args:
        db: a connection inside a write transaction.
        actor: who acted (`runtime`, `steward`, a reviewer's name, ...).
        event: what happened, dotted (`run.started`, `request.approved`, ...).
        subject: what it happened to (a plan hash, a request id, an email).
        details: JSON-serialisable facts about it (no private data, no secrets).
    """
    last = db.execute("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1").fetchone()
    seq, prev = (last[0] + 1, last[1]) if last else (1, GENESIS)
    at = time.time()
    text = json.dumps(details, sort_keys=True, default=str)
    db.execute("INSERT INTO audit (seq, at, actor, event, subject, details, prev_hash, hash)"
               " VALUES (?,?,?,?,?,?,?,?)",
               (seq, at, actor, event, subject, text, prev,
                entry_hash(seq, at, actor, event, subject, text, prev)))


def verify(db: Any) -> tuple[bool, int, str]:
    """Check the whole chain.

    Returns:
        (intact, entries checked, message): the message names the first missing,
        reordered or altered entry, or gives the chain's head when it is intact.
    """
    rows = db.execute("SELECT seq, at, actor, event, subject, details, prev_hash, hash "
                      "FROM audit ORDER BY seq").fetchall()
    prev, expected_seq = GENESIS, 1
    for seq, at, actor, event, subject, details, prev_hash, digest in rows:
        if seq != expected_seq:
            return False, len(rows), f"entry {expected_seq} is missing (next is {seq})"
        if prev_hash != prev:
            return False, len(rows), (f"entry {seq} does not follow entry {seq - 1} "
                                      "(previous hash differs)")
        if entry_hash(seq, at, actor, event, subject, details, prev_hash) != digest:
            return False, len(rows), f"entry {seq} was altered (hash differs)"
        prev, expected_seq = digest, expected_seq + 1
    n = len(rows)
    return True, n, f"entries 1–{n}, chain intact, head of entry #{n} {prev[:16]}"


def entries(db: Any, since: float = 0.0) -> list[dict[str, Any]]:
    """Entries recorded at or after `since` (Unix time), oldest first, details decoded."""
    names = ["seq", "at", "actor", "event", "subject", "details", "prev_hash", "hash"]
    cur = db.execute(f"SELECT {', '.join(names)} FROM audit WHERE at >= ? ORDER BY seq",
                     (since,))
    out = []
    for row in cur:
        entry = dict(zip(names, tuple(row), strict=True))
        entry["details"] = json.loads(entry["details"])
        out.append(entry)
    return out
