"""Engines, migrations and bulk upserts for the forecasts database (SQLite or PostgreSQL)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Engine, Table, create_engine, event, inspect
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.exc import ArgumentError, OperationalError

from kronos_tasks.settings import redact

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
VERSION_TABLE = "kronos_alembic_version"
# Rows handed to the driver per execute (SQLAlchemy splits them further into multi-row INSERTs).
CHUNK_ROWS = 5000


class DatabaseError(RuntimeError):
    """The forecasts database cannot be used; the message names it (without password) and what to do."""


def make_engine(url: str) -> Engine:
    """An engine for ``url``; SQLite files get their folder created, foreign keys enforced and WAL journaling."""
    try:
        parsed = make_url(url)
    except ArgumentError as exc:
        raise DatabaseError(f"KRONOS_DB_URL {redact(url)!r} is not a database URL: {exc}") from None
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": 60})

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_connection, _record):  # noqa: ANN001 - DB-API types
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.close()

        return engine
    return create_engine(url, pool_pre_ping=True)


def _alembic_config(connection: Connection) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = connection
    return config


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Apply the migrations up to ``revision`` (idempotent)."""
    try:
        with engine.begin() as connection:
            command.upgrade(_alembic_config(connection), revision)
    except OperationalError as exc:
        raise DatabaseError(
            f"cannot migrate {redact(str(engine.url))}: {exc.orig}. Check KRONOS_DB_URL and that the server runs."
        ) from None


def downgrade(engine: Engine, revision: str) -> None:
    with engine.begin() as connection:
        command.downgrade(_alembic_config(connection), revision)


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as connection:
        return MigrationContext.configure(connection, opts={"version_table": VERSION_TABLE}).get_current_revision()


def require_schema(engine: Engine) -> None:
    """Raise unless the database is migrated to the latest revision."""
    from alembic.script import ScriptDirectory

    head = ScriptDirectory(str(MIGRATIONS)).get_current_head()
    current = current_revision(engine)
    if current != head:
        raise DatabaseError(
            f"the forecasts database {redact(str(engine.url))} is at revision {current}, the code needs {head}: "
            "run `kronos-flow init` (or `kronos-flow db upgrade`)."
        )


def upsert(connection: Connection, table: Table, rows: Sequence[dict[str, Any]], keys: Iterable[str]) -> int:
    """Insert ``rows`` into ``table``, updating the other columns of rows whose ``keys`` already exist.

    INSERT ... ON CONFLICT DO UPDATE, executed for many rows at once (SQLAlchemy batches them into
    multi-row statements), in the caller's transaction.
    """
    keys = list(keys)
    dialect = connection.dialect.name
    insert = {"sqlite": sqlite.insert, "postgresql": postgresql.insert}.get(dialect)
    if insert is None:
        raise DatabaseError(f"upserts support SQLite and PostgreSQL, not {dialect}.")
    if not rows:
        return 0
    statement = insert(table)
    updated = [c.name for c in table.columns if c.name not in keys]
    statement = statement.on_conflict_do_update(
        index_elements=keys, set_={name: statement.excluded[name] for name in updated}
    )
    for start in range(0, len(rows), CHUNK_ROWS):
        connection.execute(statement, list(rows[start : start + CHUNK_ROWS]))
    return len(rows)


def table_names(engine: Engine) -> set[str]:
    return set(inspect(engine).get_table_names())
