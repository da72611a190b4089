"""Engines, migrations and bulk upserts for the forecasts database (SQLite or PostgreSQL)."""

from __future__ import annotations

import io
import json
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import pandas as pd
from sqlalchemy import (
    JSON,
    Engine,
    Select,
    Table,
    TypeDecorator,
    create_engine,
    event,
    func,
    inspect,
    select,
    table,
)
from sqlalchemy import column as column_clause
from sqlalchemy.dialects import sqlite
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, IntegrityError, NoSuchModuleError, OperationalError

from kronos_tasks.errors import KronosFlowError
from kronos_tasks.settings import redact

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
VERSION_TABLE = "kronos_alembic_version"
# The newest migration under MIGRATIONS (a test holds it to alembic's head). Tasks check a database against it
# without importing alembic and reading every migration script: 0.3-0.4 s of each task process's start.
SCHEMA_HEAD = "0005"
# Rows handed to the driver per execute (SQLAlchemy splits them further into multi-row INSERTs).
CHUNK_ROWS = 5000
COPY_BATCH_ROWS = 8192  # rows of an Arrow table written as CSV and sent to COPY at a time


class DatabaseError(KronosFlowError, RuntimeError):
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
    try:
        return create_engine(url, pool_pre_ping=True)
    except (ArgumentError, NoSuchModuleError) as exc:
        raise DatabaseError(
            f"KRONOS_DB_URL {redact(url)!r} cannot be used: {exc}. Use sqlite:///PATH or "
            "postgresql+psycopg://USER@HOST:PORT/DB."
        ) from None


def _alembic_config(connection: Connection):
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = connection
    return config


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Apply the migrations up to ``revision`` (idempotent)."""
    from alembic import command

    try:
        with engine.begin() as connection:
            command.upgrade(_alembic_config(connection), revision)
    except OperationalError as exc:
        raise DatabaseError(
            f"cannot migrate {redact(str(engine.url))}: {exc.orig}. Check KRONOS_DB_URL and that the server runs."
        ) from None


def downgrade_plan(engine: Engine, revision: str) -> list[str]:
    """What ``downgrade(engine, revision)`` would undo: one line per migration reverted, and for a
    downgrade to ``base`` every table it drops with its row count. Nothing is changed."""
    from alembic.script import ScriptDirectory

    script = ScriptDirectory(str(MIGRATIONS))
    try:
        if revision != "base":
            script.get_revision(revision)
        current = current_revision(engine)
        if current is None:
            return []
        reverted = list(script.iterate_revisions(current, revision))
    except Exception as exc:  # alembic's errors for unknown or later revisions
        raise DatabaseError(f"cannot downgrade to {revision!r}: {exc}") from None
    lines = [f"revert {r.revision}: {' '.join((r.doc or '').split())}" for r in reverted]
    if revision == "base":
        present = sorted(table_names(engine) - {VERSION_TABLE})
        with engine.connect() as connection:
            for name in present:
                rows = connection.execute(select(func.count()).select_from(table(name))).scalar_one()
                lines.append(f"drop table {name} ({rows} rows)")
    return lines


def downgrade(engine: Engine, revision: str) -> None:
    """Revert the migrations after ``revision`` (``base``: drop every table). See ``downgrade_plan``."""
    from alembic import command

    with engine.begin() as connection:
        command.downgrade(_alembic_config(connection), revision)


def current_revision(engine: Engine) -> str | None:
    """The revision the database is migrated to (None: not migrated), read from alembic's version table."""
    with engine.connect() as connection:
        if not inspect(connection).has_table(VERSION_TABLE):
            return None
        found = (
            connection.execute(select(table(VERSION_TABLE, column_clause("version_num")).c.version_num)).scalars().all()
        )
    if len(found) > 1:
        raise DatabaseError(
            f"{VERSION_TABLE} holds {len(found)} revisions {found}; this project's migrations have one head."
        )
    return found[0] if found else None


def require_schema(engine: Engine) -> None:
    """Raise unless the database is migrated to the latest revision (``SCHEMA_HEAD``)."""
    current = current_revision(engine)
    if current != SCHEMA_HEAD:
        raise DatabaseError(
            f"the forecasts database {redact(str(engine.url))} is at revision {current}, the code needs {SCHEMA_HEAD}: "
            "run `kronos-flow init` (or `kronos-flow db upgrade`)."
        )


def _copy_processors(connection: Connection, table: Table) -> dict[str, Any]:
    """Each column's bind processing for COPY (None where there is none); JSON as its text, because COPY reads
    every column from text, by the C encoder in one call."""
    dialect = connection.dialect
    return {c.name: json.dumps if isinstance(c.type, JSON) else c.type.bind_processor(dialect) for c in table.columns}


def _processed(processors: dict[str, Any], values: dict[str, Any]) -> list[Any]:
    return [
        value if value is None or processors[name] is None else processors[name](value)
        for name, value in values.items()
    ]


def _copy_statement(target: str, names: Iterable[str], options: str = ""):
    from psycopg import sql

    return sql.SQL("COPY {} ({}) FROM STDIN" + options).format(
        sql.Identifier(target), sql.SQL(", ").join(sql.Identifier(name) for name in names)
    )


@contextmanager
def _driver_errors(statement: str) -> Iterator[None]:
    """psycopg's errors of a statement sent through the driver as SQLAlchemy's, as if SQLAlchemy had sent it."""
    import psycopg

    try:
        yield
    except psycopg.errors.IntegrityError as exc:
        raise IntegrityError(statement, None, exc) from exc
    except psycopg.Error as exc:
        raise DBAPIError(statement, None, exc) from exc


def _copy_rows(
    connection: Connection, target: str, table: Table, rows: Sequence[dict[str, Any]], same: dict[str, Any]
) -> None:
    """COPY ``rows`` (with the values of ``same`` in every row) into ``target`` (PostgreSQL), each value
    through its column type's bind processing."""
    processors = _copy_processors(connection, table)
    varying = [c.name for c in table.columns if c.name not in same]
    # the shared columns go last in COPY's column list, so that each row is its own values plus these
    shared = _processed(processors, same)
    cursor = connection.connection.driver_connection.cursor()
    statement = _copy_statement(target, [*varying, *same])
    varying_processors = [processors[name] for name in varying]
    with _driver_errors(f"COPY {target}"), cursor.copy(statement) as copy:
        for row in rows:
            copy.write_row(
                [
                    value if value is None or process is None else process(value)
                    for value, process in zip(map(row.get, varying), varying_processors)
                ]
                + shared
            )


def _copy_table(connection: Connection, target: str, table: Table, data, same: dict[str, Any]) -> None:
    """COPY the Arrow table ``data`` (with the values of ``same`` in every row) into ``target`` (PostgreSQL) as
    CSV written by Arrow: no Python work per row. Struct columns go to JSON columns as objects."""
    _copy_csv(connection, target, _csv_table(data, _bound(connection, table, same)))


def _bound(connection: Connection, table: Table, values: dict[str, Any]) -> dict[str, Any]:
    """``values`` of ``table``'s columns as COPY writes them (see ``_copy_processors``)."""
    return dict(zip(values, _processed(_copy_processors(connection, table), values)))


def _csv_table(data, shared: dict[str, Any]):
    """``data``'s columns as COPY reads them from CSV (``_csv_column``), with the bound values of ``shared`` in
    every row instead of ``data``'s own columns of those names."""
    import pyarrow as pa

    columns = {name: column for name, column in zip(data.column_names, data.columns) if name not in shared}
    for name, value in shared.items():
        columns[name] = pa.array([value] * data.num_rows)
    return pa.table({name: _csv_column(name, column) for name, column in columns.items()})


def _copy_csv(connection: Connection, target: str, data) -> None:
    """COPY ``_csv_table``'s output into ``target`` (PostgreSQL), its column names naming the target's columns."""
    import pyarrow.csv as pa_csv

    options = pa_csv.WriteOptions(include_header=False, quoting_style="needed")
    cursor = connection.connection.driver_connection.cursor()
    statement = _copy_statement(target, data.column_names, " (FORMAT csv)")
    with _driver_errors(f"COPY {target}"), cursor.copy(statement) as copy:
        # in batches: the CSV text of a large table is never in memory all at once
        with pa_csv.CSVWriter(_CopySink(copy), data.schema, write_options=options) as writer:
            for batch in data.to_batches(max_chunksize=COPY_BATCH_ROWS):
                writer.write_batch(batch)


def _csv_column(name: str, column):
    """An Arrow column as PostgreSQL reads it from CSV: struct columns as JSON objects, timestamps as UTC text
    with its offset (naive ones refused); other columns as they are."""
    import pyarrow as pa
    import pyarrow.compute as pc

    kind = column.type
    if pa.types.is_struct(kind):
        return _json_objects(column)
    refuse_naive_timestamps(name, kind)
    if pa.types.is_timestamp(kind):
        # Arrow holds UTC values whatever the zone, and casting them is 30x faster than its CSV writer's
        # formatting of zoned timestamps
        return pc.binary_join_element_wise(pc.cast(column.cast(pa.timestamp(kind.unit)), pa.string()), "+00", "")
    return column


def refuse_naive_timestamps(name: str, kind) -> None:
    """Raise ValueError naming column ``name`` if its Arrow type ``kind`` is a timestamp without a time zone."""
    import pyarrow as pa

    if pa.types.is_timestamp(kind) and kind.tz is None:
        raise ValueError(f"column {name}: naive timestamps; kronos-flow stores timezone-aware UTC timestamps only.")


class _CopySink(io.RawIOBase):
    """A ``COPY ... FROM STDIN`` as a writable binary file."""

    def __init__(self, copy):
        self._copy = copy

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        self._copy.write(data)
        return len(data)


def _json_objects(column):
    """An Arrow struct column of numbers as the JSON text of its objects (``{"name": value, ...}``, numbers in
    the shortest form that reads back to the same value); null where the struct is null."""
    import pyarrow as pa
    import pyarrow.compute as pc

    column = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    parts: list[Any] = ["{"]
    for index, field in enumerate(column.type):
        if not (pa.types.is_floating(field.type) or pa.types.is_integer(field.type)):
            raise TypeError(f"JSON object field {field.name!r} is {field.type}: only numbers are written this way")
        text = pc.cast(column.field(index), pa.string())
        if pa.types.is_floating(field.type):  # 3.0 and -0.0, not 3 and -0: a float must read back as a float
            text = pc.if_else(
                pc.match_substring_regex(text, r"^-?[0-9]+$"), pc.binary_join_element_wise(text, ".0", ""), text
            )
        parts += [("" if index == 0 else ", ") + json.dumps(field.name) + ": ", text]
    parts.append("}")
    text = pc.binary_join_element_wise(*parts, "")
    return pc.if_else(column.is_valid(), text, pa.scalar(None, pa.string()))


class _CopyStream(io.RawIOBase):
    """The blocks of a ``COPY ... TO STDOUT`` as a readable binary file."""

    def __init__(self, blocks: Iterable[bytes]):
        self._blocks, self._pending = iter(blocks), memoryview(b"")

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        while not self._pending:
            block = next(self._blocks, None)
            if block is None:
                return 0
            self._pending = memoryview(block)
        size = min(len(buffer), len(self._pending))
        buffer[:size], self._pending = self._pending[:size], self._pending[size:]
        return size


@contextmanager
def copy_out_csv(connection: Connection, query: Select) -> Iterator[io.BufferedReader]:
    """PostgreSQL: ``query``'s rows as CSV with a header line, streamed by ``COPY (query) TO STDOUT`` as a binary
    file (the query's parameters bound by the driver). Timestamps are written in UTC (``...+00``) and floats
    with the shortest text that reads back to the same value; NULL is an empty unquoted field."""
    compiled = query.compile(dialect=connection.dialect)
    cursor = connection.connection.driver_connection.cursor()
    # For this transaction only (the connection goes back to the pool): UTC, and floats that read back exactly
    # (any positive value selects the shortest exact text from PostgreSQL 12 on; 3 digits more before it).
    cursor.execute("SET LOCAL TIME ZONE 'UTC'; SET LOCAL extra_float_digits = 3")
    with cursor.copy(f"COPY ({compiled}) TO STDOUT (FORMAT csv, HEADER)", compiled.params) as copy:
        yield io.BufferedReader(_CopyStream(copy), buffer_size=1 << 20)


def insert_table(connection: Connection, table: Table, data, same: dict[str, Any] | None = None) -> int:
    """``insert_rows`` for rows given as an Arrow table (struct columns for JSON objects of numbers, timestamps
    with a time zone): on PostgreSQL one COPY of CSV that Arrow writes, without Python work per row."""
    if not data.num_rows:
        return 0
    if connection.dialect.name == "postgresql":
        _copy_table(connection, table.name, table, data, same or {})
        return data.num_rows
    return insert_rows(connection, table, data.to_pylist(), same)


def insert_tables(
    connection: Connection,
    table: Table,
    keys: Sequence[Any],
    load: Callable[[Connection, Any], Any],
    same: dict[str, Any] | None = None,
) -> int:
    """``insert_table`` for several Arrow tables, ``load(connection, key)`` for each of ``keys``, in order.

    On PostgreSQL each table is loaded on a connection of its own in a worker thread and its CSV columns are
    prepared there (Arrow's work, outside the GIL) while the previous one is copied: the database's work on
    one overlaps the preparation of the next, and at most two tables are in memory. Elsewhere they are loaded
    on ``connection`` one after another."""
    same = same or {}
    if connection.dialect.name != "postgresql" or not keys:
        return sum(insert_table(connection, table, load(connection, key), same) for key in keys)
    shared = _bound(connection, table, same)

    def prepare(key):
        with connection.engine.connect() as own:
            data = load(own, key)
        return _csv_table(data, shared)

    written = 0
    with ThreadPoolExecutor(1) as pool:
        ready = pool.submit(prepare, keys[0])
        for following in [*keys[1:], None]:
            data = ready.result()
            ready = pool.submit(prepare, following) if following is not None else None
            if data.num_rows:
                _copy_csv(connection, table.name, data)
                written += data.num_rows
    return written


def insert_rows(
    connection: Connection, table: Table, rows: Sequence[dict[str, Any]], same: dict[str, Any] | None = None
) -> int:
    """Insert many rows in the caller's transaction, each with the values of ``same`` (they replace the
    row's own): COPY on PostgreSQL, batched executemany elsewhere."""
    if not rows:
        return 0
    same = same or {}
    if connection.dialect.name == "postgresql":
        _copy_rows(connection, table.name, table, rows, same)
    else:
        for start in range(0, len(rows), CHUNK_ROWS):
            connection.execute(table.insert(), [{**row, **same} for row in rows[start : start + CHUNK_ROWS]])
    return len(rows)


def _upsert_from_staging(connection: Connection, table: Table, keys: list[str], load) -> None:
    """PostgreSQL: ``load(staging_name)`` fills a temp copy of ``table``, then one INSERT ... ON CONFLICT moves it."""
    from psycopg import sql

    staging = f"staging_{table.name}"
    names = sql.SQL(", ").join(sql.Identifier(c.name) for c in table.columns)
    updated = [c.name for c in table.columns if c.name not in keys]
    cursor = connection.connection.driver_connection.cursor()
    cursor.execute(
        sql.SQL("CREATE TEMP TABLE IF NOT EXISTS {} (LIKE {}) ON COMMIT DROP").format(
            sql.Identifier(staging), sql.Identifier(table.name)
        )
    )
    load(staging)
    cursor.execute(
        sql.SQL(
            "INSERT INTO {table} ({names}) SELECT {names} FROM {staging} ON CONFLICT ({keys}) DO UPDATE SET {sets}; "
            "TRUNCATE {staging}"
        ).format(
            table=sql.Identifier(table.name),
            names=names,
            staging=sql.Identifier(staging),
            keys=sql.SQL(", ").join(sql.Identifier(k) for k in keys),
            sets=sql.SQL(", ").join(sql.SQL("{0} = EXCLUDED.{0}").format(sql.Identifier(n)) for n in updated),
        )
    )


_ARRAY_TYPES = {str: "text[]", float: "float8[]", int: "int8[]", datetime: "timestamptz[]"}


def _native_columns(frame: pd.DataFrame, names: list[str]) -> dict[str, list]:
    """Each column as a list of native Python values (aware datetimes for timestamp columns)."""
    out = {}
    for name in names:
        values = frame[name]
        if pd.api.types.is_datetime64_any_dtype(values):
            out[name] = list(values.dt.to_pydatetime())
        else:
            out[name] = values.tolist()
    return out


def upsert_frame(connection: Connection, table: Table, frame: pd.DataFrame, keys: Iterable[str]) -> int:
    """``upsert`` for a frame holding every column of ``table`` (timestamps timezone-aware).

    On PostgreSQL the columns travel as binary array parameters of one INSERT ... SELECT unnest(...) ON CONFLICT
    statement; elsewhere as rows of batched executemany calls.
    """
    keys = list(keys)
    names = [c.name for c in table.columns]
    columns = _native_columns(frame, names)
    if connection.dialect.name != "postgresql":
        return upsert(connection, table, [dict(zip(names, row)) for row in zip(*columns.values())], keys)
    from psycopg import sql
    from psycopg.adapt import PyFormat

    select, params = [], []
    for column in table.columns:
        values = columns[column.name]
        if values and all(v == values[0] for v in values):
            select.append(sql.Placeholder())  # a constant column (symbol, interval, ...) travels once
            params.append(values[0])
            continue
        kind = column.type.impl if isinstance(column.type, TypeDecorator) else column.type
        cast = _ARRAY_TYPES.get(kind.python_type)
        if cast is None:
            raise DatabaseError(f"upsert_frame cannot send column {table.name}.{column.name} of type {column.type}.")
        # %b: the array travels in binary (packed numbers and times); %s would format and quote it as text.
        select.append(sql.SQL("unnest({}::{})").format(sql.Placeholder(format=PyFormat.BINARY), sql.SQL(cast)))
        params.append(values)
    updated = [n for n in names if n not in keys]
    statement = sql.SQL("INSERT INTO {} ({}) SELECT {} ON CONFLICT ({}) DO UPDATE SET {}").format(
        sql.Identifier(table.name),
        sql.SQL(", ").join(map(sql.Identifier, names)),
        sql.SQL(", ").join(select),
        sql.SQL(", ").join(map(sql.Identifier, keys)),
        sql.SQL(", ").join(sql.SQL("{0} = EXCLUDED.{0}").format(sql.Identifier(n)) for n in updated),
    )
    with _driver_errors(f"upsert {table.name}"):
        connection.connection.driver_connection.cursor().execute(statement, params)
    return len(frame)


def upsert(connection: Connection, table: Table, rows: Sequence[dict[str, Any]], keys: Iterable[str]) -> int:
    """Insert ``rows`` into ``table``, updating the other columns of rows whose ``keys`` already exist.

    INSERT ... ON CONFLICT DO UPDATE in the caller's transaction. On PostgreSQL the rows are first
    COPYed into a temporary table dropped at commit; elsewhere they go in batched executemany calls.
    """
    keys = list(keys)
    dialect = connection.dialect.name
    if dialect not in ("sqlite", "postgresql"):
        raise DatabaseError(f"upserts support SQLite and PostgreSQL, not {dialect}.")
    if not rows:
        return 0
    if dialect == "postgresql":
        _upsert_from_staging(connection, table, keys, lambda staging: _copy_rows(connection, staging, table, rows, {}))
        return len(rows)
    updated = [c.name for c in table.columns if c.name not in keys]
    statement = sqlite.insert(table)
    statement = statement.on_conflict_do_update(
        index_elements=keys, set_={name: statement.excluded[name] for name in updated}
    )
    for start in range(0, len(rows), CHUNK_ROWS):
        connection.execute(statement, list(rows[start : start + CHUNK_ROWS]))
    return len(rows)


def table_names(engine: Engine) -> set[str]:
    return set(inspect(engine).get_table_names())
