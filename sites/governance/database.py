"""The governance store's connection to its database, through SQLAlchemy Core: one code
path for SQLite (the embedded default, a file in the site folder) and PostgreSQL.

Every transaction serialises writers, so the audit chain never forks and a privacy
reservation never races: on SQLite `BEGIN IMMEDIATE` (deferred `BEGIN` for reads), on
PostgreSQL a transaction-scoped advisory lock taken first. Statements are portable SQL
with `?` placeholders, bound by SQLAlchemy (`text()`), never formatted into the string.

Must never log a statement's parameters or a database password.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

from sqlalchemy import create_engine, event, text
from sqlalchemy.engine import URL, Connection, CursorResult, Engine, make_url
from sqlalchemy.pool import NullPool

#: key of the advisory lock that serialises governance writers on PostgreSQL
PG_LOCK = 0x6D656473  # "meds"

_ENGINES: dict[str, Engine] = {}


def sqlite_url(path: Any) -> str:
    return f"sqlite:///{path}"


def redact(url: str | URL) -> str:
    """The URL as it may be shown: never its password."""
    return make_url(url).render_as_string(hide_password=True)


def engine_for(url: str | URL) -> Engine:
    """The engine of one database (cached per URL). SQLite connections are opened per
    transaction (no pool: a site forks, and a SQLite handle must not cross a fork)."""
    key = str(url) if isinstance(url, str) else url.render_as_string(hide_password=False)
    if key in _ENGINES:
        return _ENGINES[key]
    u = make_url(url)
    if u.get_backend_name() == "sqlite":
        engine = create_engine(u, poolclass=NullPool, connect_args={"timeout": 30})

        @event.listens_for(engine, "connect")
        def _sqlite_connect(dbapi_connection, _record) -> None:  # noqa: ANN001
            dbapi_connection.isolation_level = None  # we say BEGIN ourselves
            dbapi_connection.execute("PRAGMA synchronous=FULL")

        @event.listens_for(engine, "begin")
        def _sqlite_begin(connection: Connection) -> None:
            immediate = connection.get_execution_options().get("medsyft_write", True)
            connection.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")
    elif u.get_backend_name() == "postgresql":
        if u.drivername in ("postgresql", "postgresql+psycopg2"):
            u = u.set(drivername="postgresql+psycopg")  # psycopg 3 (syft keeps psycopg2)
        engine = create_engine(u, pool_pre_ping=True, pool_size=4, max_overflow=8,
                               hide_parameters=True)

        @event.listens_for(engine, "begin")
        def _pg_begin(connection: Connection) -> None:
            if connection.get_execution_options().get("medsyft_write", True):
                connection.exec_driver_sql(f"SELECT pg_advisory_xact_lock({PG_LOCK})")
    else:
        raise ValueError(f"governance database {u.get_backend_name()!r}: use sqlite or "
                         "postgresql")
    _ENGINES[key] = engine
    return engine


def dispose_all() -> None:
    """Close every pooled connection (tests; a process about to fork)."""
    for engine in _ENGINES.values():
        engine.dispose()
    _ENGINES.clear()


class Rec:
    """One row: by position (`r[0]`), by column (`r["name"]`), `dict(r)`."""

    __slots__ = ("_row",)

    def __init__(self, row: Any) -> None:
        self._row = row

    def __getitem__(self, key: int | str) -> Any:
        return self._row._mapping[key] if isinstance(key, str) else self._row[key]

    def keys(self) -> Any:
        return self._row._mapping.keys()

    def __iter__(self) -> Iterator[Any]:
        return iter(self._row)

    def __len__(self) -> int:
        return len(self._row)

    def __repr__(self) -> str:
        return f"Rec({dict(self._row._mapping)!r})"


class Result:
    __slots__ = ("_result", "rowcount")

    def __init__(self, result: CursorResult) -> None:
        self._result = result
        self.rowcount = result.rowcount

    def fetchone(self) -> Rec | None:
        if not self._result.returns_rows:
            return None
        row = self._result.fetchone()
        return None if row is None else Rec(row)

    def fetchall(self) -> list[Rec]:
        if not self._result.returns_rows:
            return []
        return [Rec(r) for r in self._result.fetchall()]

    def __iter__(self) -> Iterator[Rec]:
        return iter(self.fetchall())

    def scalar(self) -> Any:
        return self._result.scalar()


def bind(sql: str, params: Sequence[Any] | Mapping[str, Any]) -> tuple[Any, dict]:
    """`?` placeholders to SQLAlchemy's named binds (`:p0`, …); a literal colon in the
    SQL is escaped, so nothing in the text can become a bind parameter."""
    if isinstance(params, Mapping):
        return text(sql), dict(params)
    out, n, quote = [], 0, None
    for ch in sql:
        if quote:
            out.append("\\:" if ch == ":" else ch)
            if ch == quote:
                quote = None
        elif ch in ("'", '"'):
            quote = ch
            out.append(ch)
        elif ch == "?":
            out.append(f":p{n}")
            n += 1
        elif ch == ":":
            out.append("\\:")
        else:
            out.append(ch)
    if n != len(params):
        raise ValueError(f"{n} placeholders, {len(params)} parameters")
    return text("".join(out)), {f"p{i}": v for i, v in enumerate(params)}


class Tx:
    """A transaction's connection, with the small `execute(sql, params)` surface the
    store's modules use (the same on both databases)."""

    __slots__ = ("connection",)

    def __init__(self, connection: Connection) -> None:
        self.connection = connection

    @property
    def dialect(self) -> str:
        return self.connection.dialect.name

    def execute(self, sql: str, params: Sequence[Any] | Mapping[str, Any] = ()) -> Result:
        stmt, binds = bind(sql, params)
        return Result(self.connection.execute(stmt, binds))


@contextmanager
def transaction(engine: Engine, write: bool = True) -> Iterator[Tx]:
    """One transaction: committed when the block ends, rolled back if it raises."""
    with engine.connect().execution_options(medsyft_write=write) as conn:
        with conn.begin():
            yield Tx(conn)
