"""Baseline: the schema of every release before the governance schema was versioned.

On a database those releases wrote, this brings any of their shapes to the last one
(the columns they added on start-up); on an empty one it creates it. Idempotent.
"""

from alembic import op

revision = "0001_baseline"
down_revision = None

TABLES = """
CREATE TABLE IF NOT EXISTS datasets (
    name TEXT PRIMARY KEY, cohort_id TEXT NOT NULL UNIQUE, n INTEGER NOT NULL,
    description TEXT NOT NULL, published_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS decisions (
    id INTEGER PRIMARY KEY AUTOINCREMENT, request_id TEXT NOT NULL, plan_hash TEXT NOT NULL,
    researcher TEXT NOT NULL, institution TEXT, dataset TEXT NOT NULL, decision TEXT NOT NULL,
    policy_hash TEXT NOT NULL, reviewer TEXT NOT NULL, actor TEXT NOT NULL,
    note TEXT NOT NULL, method TEXT NOT NULL, overridden TEXT NOT NULL DEFAULT '[]',
    approvals_required INTEGER NOT NULL DEFAULT 1, plan_json TEXT NOT NULL,
    decided_at REAL NOT NULL, graph_digest TEXT);
CREATE TABLE IF NOT EXISTS runs (
    id INTEGER PRIMARY KEY AUTOINCREMENT, plan_hash TEXT NOT NULL, round INTEGER NOT NULL,
    researcher TEXT NOT NULL DEFAULT '', dataset TEXT NOT NULL DEFAULT '',
    status TEXT NOT NULL, started_at REAL NOT NULL, ended_at REAL,
    noise_multiplier REAL NOT NULL, sample_rate REAL NOT NULL, steps INTEGER NOT NULL,
    n_k INTEGER, epsilon REAL, category TEXT, adjacency TEXT NOT NULL DEFAULT 'replace_one',
    accountant TEXT);
CREATE TABLE IF NOT EXISTS verdicts (
    request_id TEXT NOT NULL, policy_hash TEXT NOT NULL, plan_hash TEXT NOT NULL,
    computed_at REAL NOT NULL, report TEXT NOT NULL, PRIMARY KEY (request_id, policy_hash));
CREATE TABLE IF NOT EXISTS model_graphs (
    trace_key TEXT PRIMARY KEY, graph_json TEXT, error TEXT, traced_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS researchers (
    user_id TEXT PRIMARY KEY, verify_key TEXT NOT NULL UNIQUE, email TEXT NOT NULL UNIQUE,
    name TEXT NOT NULL, institution TEXT NOT NULL DEFAULT '', created_at REAL NOT NULL,
    updated_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS reviewers (
    email TEXT PRIMARY KEY, name TEXT NOT NULL, name_key TEXT NOT NULL UNIQUE,
    password_hash TEXT NOT NULL, created_at REAL NOT NULL, created_by TEXT NOT NULL,
    failures INTEGER NOT NULL DEFAULT 0, locked_until REAL NOT NULL DEFAULT 0,
    disabled INTEGER NOT NULL DEFAULT 0, last_login REAL);
CREATE TABLE IF NOT EXISTS count_draws (
    dataset TEXT NOT NULL, cohort_id TEXT NOT NULL, value INTEGER NOT NULL,
    noise REAL NOT NULL, drawn_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS transfer_nonces (
    nonce TEXT PRIMARY KEY, seen_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS audit (
    seq INTEGER PRIMARY KEY, at REAL NOT NULL, actor TEXT NOT NULL,
    event TEXT NOT NULL, subject TEXT NOT NULL, details TEXT NOT NULL,
    prev_hash TEXT NOT NULL, hash TEXT NOT NULL)
"""

#: (table, column, declaration) that releases added on start-up, oldest first.
ADDED_COLUMNS = (
    ("datasets", "volume_shape", "TEXT NOT NULL DEFAULT ''"),
    ("datasets", "mask_classes", "INTEGER NOT NULL DEFAULT 0"),
    ("decisions", "graph_digest", "TEXT"),
    ("datasets", "count_value", "INTEGER"),
    ("datasets", "count_noise", "REAL"),
    ("datasets", "holdout_seed", "INTEGER"),
    ("datasets", "holdout_fraction", "REAL"),
    # earlier descriptions stated N (or N rounded): disclosed
    ("datasets", "n_disclosed", "INTEGER NOT NULL DEFAULT 1"),
    # every earlier release derived q = B/N from the exact N: N was public
    ("runs", "adjacency", "TEXT NOT NULL DEFAULT 'replace_one'"),
    ("runs", "accountant", "TEXT"),
    ("runs", "weights_sha256", "TEXT"),
)


def upgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name != "sqlite":
        raise NotImplementedError("the baseline schema is SQLite's")
    for statement in TABLES.split(";"):
        op.execute(statement)
    for table, column, declaration in ADDED_COLUMNS:
        have = {row[1] for row in bind.exec_driver_sql(f"PRAGMA table_info({table})")}
        if column not in have:
            op.execute(f"ALTER TABLE {table} ADD COLUMN {column} {declaration}")
    # parameter counts of the retired inspect child: the graph cache replaced them
    op.execute("DROP TABLE IF EXISTS model_facts")


def downgrade() -> None:
    raise RuntimeError("downgrades are refused: restore a backup taken before the upgrade")
