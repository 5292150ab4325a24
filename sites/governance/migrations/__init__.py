"""The governance database's schema history, as alembic migrations (`versions/`).

Each migration is one file `NNNN_what.py` with `revision`, `down_revision` and an
`upgrade()`; `downgrade()` refuses (a site never goes back to an older schema: restore
a backup instead). `sites.governance.schema` runs them, in one transaction on SQLite
(`BEGIN IMMEDIATE`), so a failed migration leaves the database as it was. A migration
must never drop or rewrite audit entries, ledger rows or decisions.
"""
