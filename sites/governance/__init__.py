"""The governance store: approvals, runs, privacy budgets, the researcher registry,
denials, and the hash-chained audit log, in SQLite.

SQL only: must never import syft, torch or the site's other rooms, so that an
auditor can read it alone and it stays cheap to import.
"""
