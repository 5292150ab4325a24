"""Which schema a governance database is at, and bringing it to this code's (alembic).

A site opens only a database at exactly this code's revision (`HEAD`): an older one
needs `medsyft site upgrade SITE_DIR`, a newer one (written by a later release) is
refused, since going back is not a migration but a restore. A new, empty database
is created at `HEAD`. Migrations run in one transaction (`BEGIN IMMEDIATE` on SQLite),
so a failed one leaves the database as it was, and the upgrade is appended to the
audit chain in that same transaction. Must never drop or rewrite audit entries,
ledger rows or decisions.
"""

from __future__ import annotations

import os
import sqlite3
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from policies.contract.errors import MedsyftError

MIGRATIONS = Path(__file__).with_name("migrations")
UNVERSIONED = "unversioned (the baseline's releases)"


class SchemaMismatch(MedsyftError, RuntimeError):
    """The database is at another revision than this code's."""


@dataclass(frozen=True)
class SchemaState:
    current: str | None  # None: no tables yet; UNVERSIONED: written before alembic
    head: str
    pending: tuple[str, ...]  # revisions an upgrade would apply, oldest first
    known: bool  # False: a revision this code does not know (a later release wrote it)

    @property
    def up_to_date(self) -> bool:
        return self.current == self.head


def _script():  # noqa: ANN202 - alembic's ScriptDirectory
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(_config())


def _config():  # noqa: ANN202
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    return config


@lru_cache(maxsize=1)
def _revisions() -> tuple[str, ...]:
    """Every revision this code knows, oldest first."""
    script = _script()
    return tuple(reversed([r.revision for r in script.walk_revisions()]))



def head() -> str:
    return _revisions()[-1]


def is_url(target: Path | str) -> bool:
    """A database URL (PostgreSQL) rather than a SQLite file's path."""
    return isinstance(target, str) and "://" in target


def _url_revision(url: str) -> str | None:
    from sqlalchemy import inspect, text

    from sites.governance.database import engine_for

    engine = engine_for(url)
    with engine.connect() as conn:
        tables = set(inspect(conn).get_table_names())
        if "alembic_version" in tables:
            row = conn.execute(text("SELECT version_num FROM alembic_version")).fetchone()
            conn.rollback()
            return row[0] if row else UNVERSIONED
        conn.rollback()
    return UNVERSIONED if tables else None


def current_revision(path: Path | str) -> str | None:
    """The revision recorded in the database (None: empty; `UNVERSIONED`: tables, no
    version table)."""
    if is_url(path):
        return _url_revision(str(path))
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)
    try:
        tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if "alembic_version" in tables:
            row = db.execute("SELECT version_num FROM alembic_version").fetchone()
            return row[0] if row else UNVERSIONED
        return UNVERSIONED if tables else None
    finally:
        db.close()


def state(path: Path | str) -> SchemaState:
    revisions = _revisions()
    current = current_revision(path) if is_url(path) or Path(path).exists() else None
    if current is None or current == UNVERSIONED:
        return SchemaState(current, revisions[-1], revisions, True)
    if current not in revisions:
        return SchemaState(current, revisions[-1], (), False)
    return SchemaState(current, revisions[-1], revisions[revisions.index(current) + 1:], True)


def mismatch_message(path: Path | str, st: SchemaState, site_dir: Path) -> str:
    if is_url(path):
        from sites.governance.database import redact

        path = redact(str(path))
    if not st.known:
        return (f"the governance database {path} is at schema {st.current}, which this "
                f"medsyft (schema {st.head}) does not know: a later release wrote it. Install "
                "that release again; going back to an older schema is refused (restore a "
                "backup taken before the upgrade instead)")
    return (f"the governance database {path} is at schema {st.current}, this medsyft "
            f"needs {st.head}: run `medsyft site upgrade {site_dir}` (it backs the database "
            "up first)")


def require_current(path: Path | str, site_dir: Path) -> None:
    """Create an empty database at `HEAD`; refuse one at any other revision."""
    revisions = _revisions()
    if is_url(path) or Path(path).exists():
        current = current_revision(path)
        if current == revisions[-1]:
            return
        if current is not None:
            raise SchemaMismatch(mismatch_message(path, state(path), site_dir))
    upgrade(path, actor="site", create=True)


def _prepare_sqlite(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():  # SQLite gives its -wal and -shm files the same mode
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    wal = sqlite3.connect(path, timeout=30)
    try:
        wal.execute("PRAGMA journal_mode=WAL")  # kept by the file; outside any transaction
    finally:
        wal.close()


def _engine(path: Path):  # noqa: ANN202
    """An engine whose transactions are SQLite's `BEGIN IMMEDIATE` (pysqlite's default
    would autocommit each DDL statement, leaving a failed migration half-done)."""
    from sqlalchemy import create_engine, event

    engine = create_engine(f"sqlite:///{path}", connect_args={"timeout": 30})

    @event.listens_for(engine, "connect")
    def _no_implicit_transactions(dbapi_connection, _record) -> None:  # noqa: ANN001
        dbapi_connection.isolation_level = None

    @event.listens_for(engine, "begin")
    def _immediate(connection) -> None:  # noqa: ANN001
        connection.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


def upgrade(path: Path | str, *, actor: str, server_uid: str | None = None,
            create: bool = False) -> tuple[str | None, str]:
    """Migrate the database to `HEAD` in one transaction; returns (from, to). The upgrade
    is appended to the audit chain in the same transaction (not a creation)."""
    from alembic import command
    from alembic.runtime.migration import MigrationContext

    from sites.governance import audit
    from sites.governance.database import Tx, engine_for

    st = state(path)
    if not st.known:
        raise SchemaMismatch(mismatch_message(path, st, Path(".") if is_url(path)
                                              else Path(path).parent))
    if st.up_to_date:
        return st.current, st.head
    if is_url(path):
        engine = engine_for(str(path))  # writers serialised by the advisory lock
    else:
        _prepare_sqlite(Path(path))
        engine = _engine(Path(path))
    try:
        with engine.connect() as conn:
            with conn.begin():
                now = MigrationContext.configure(conn).get_current_revision()
                if now == st.head:  # another process got here first
                    return st.current, st.head
                config = _config()
                config.attributes["connection"] = conn
                config.attributes["server_uid"] = server_uid
                command.upgrade(config, "head")
                if not create:
                    subject = "postgresql" if is_url(path) else Path(path).name
                    audit.append(Tx(conn), actor, "schema.upgraded", subject,
                                 from_revision=st.current, to_revision=st.head)
    finally:
        if not is_url(path):
            engine.dispose()
    return st.current, st.head
