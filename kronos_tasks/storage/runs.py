"""Forecast runs with their forecasts and failures, written in one transaction and replaced on re-run."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import Connection, Engine, delete, func, literal, select
from sqlalchemy.orm import Session

from kronos_tasks.hashing import combine

from .db import insert_rows, insert_tables, refuse_naive_timestamps, upsert
from .models import (
    Forecast,
    ForecastRun,
    ForecastScore,
    ForecastWindow,
    ModelDecision,
    RunItem,
    StagedForecastChunk,
    StagedWindow,
    SymbolFailure,
)

STAGING = (StagedForecastChunk, StagedWindow)  # what a forecast batch stages, moved into the run by persist
ARROW_CODEC = "zstd"  # a chunk of 500 symbols (72,000 rows, 9.3 MB in memory) is 2.3 MB, read back in 21 ms


def stage_forecasts(
    engine: Engine,
    run_id: str,
    batch: str,
    rows,
    windows: Sequence[dict[str, Any]] = (),
    append: bool = False,
) -> None:
    """Stage one chunk of a batch's forecast rows (dicts, or an Arrow table of
    ``forecasting.windows.forecast_table``) and their windows, replacing what an earlier attempt of the batch
    staged (or, with ``append``, adding to what this attempt staged so far). Timestamps must carry a zone."""
    table = _forecast_table(rows)
    now = datetime.now(timezone.utc)
    with engine.begin() as connection:
        if append:
            chunk = connection.execute(
                select(func.coalesce(func.max(StagedForecastChunk.chunk) + 1, 0)).where(
                    StagedForecastChunk.run_id == run_id, StagedForecastChunk.batch == batch
                )
            ).scalar_one()
        else:
            chunk = 0
            for staged in STAGING:
                connection.execute(delete(staged).where(staged.run_id == run_id, staged.batch == batch))
        if table.num_rows:
            connection.execute(
                StagedForecastChunk.__table__.insert(),
                {
                    "run_id": run_id,
                    "batch": batch,
                    "chunk": chunk,
                    "rows": table.num_rows,
                    "arrow": _ipc_bytes(table),
                    "staged_at": now,
                },
            )
        insert_rows(connection, StagedWindow.__table__, windows, {"run_id": run_id, "batch": batch, "staged_at": now})


def _forecast_table(rows):
    """Forecast rows as an Arrow table without ``run_id`` (the run's own is added when they are persisted)."""
    import pyarrow as pa

    if isinstance(rows, Sequence):
        rows = pa.Table.from_pylist([{k: v for k, v in row.items() if k != "run_id"} for row in rows])
    elif "run_id" in rows.column_names:
        rows = rows.drop_columns(["run_id"])
    for field in rows.schema:
        refuse_naive_timestamps(field.name, field.type)
    return rows


def _ipc_bytes(table) -> bytes:
    import pyarrow as pa
    import pyarrow.ipc as ipc

    sink = pa.BufferOutputStream()
    with ipc.new_stream(sink, table.schema, options=ipc.IpcWriteOptions(compression=ARROW_CODEC)) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()


def _ipc_table(data: bytes):
    import pyarrow.ipc as ipc

    return ipc.open_stream(data).read_all()


def clear_staging(engine: Engine, run_id: str) -> None:
    """Forget everything staged for ``run_id`` (at the start of a run, so a re-run starts clean)."""
    with engine.begin() as connection:
        for staged in STAGING:
            connection.execute(delete(staged).where(staged.run_id == run_id))


def persist_run(
    engine: Engine,
    run: dict[str, Any],
    forecasts: Sequence[dict[str, Any]] | None,
    failures: Sequence[dict[str, Any]] | None,
) -> int:
    """Store a run, its forecasts and its failed symbols atomically; returns the number of forecast rows.

    ``forecasts=None`` takes the rows and windows staged for the run (and clears the staging) and sets the
    run's ``data_window_hash`` from the windows; ``failures=None`` takes the failed entries of the run's
    ``run_items``. Re-running the same ``run_id`` replaces the run's rows (and drops the scores of the rows
    it replaces) in the same transaction: readers see the old run or the new one, never a mix or a duplicate.
    """
    run_id = run["run_id"]
    with engine.begin() as connection:
        upsert(connection, ForecastRun.__table__, [run], ["run_id"])
        for table in (Forecast, ForecastWindow, SymbolFailure, ForecastScore):
            connection.execute(delete(table).where(table.run_id == run_id))
        if forecasts is None:
            staged = StagedForecastChunk
            chunks = connection.execute(
                select(staged.batch, staged.chunk).where(staged.run_id == run_id).order_by(staged.batch, staged.chunk)
            ).all()

            def load(reader: Connection, key: tuple[str, int]):
                batch, chunk = key
                found = staged.run_id == run_id, staged.batch == batch, staged.chunk == chunk
                return _ipc_table(reader.execute(select(staged.arrow).where(*found)).scalar_one())

            written = insert_tables(
                connection, Forecast.__table__, [tuple(key) for key in chunks], load, {"run_id": run_id}
            )
            connection.execute(delete(staged).where(staged.run_id == run_id))
            columns = [c.name for c in ForecastWindow.__table__.columns]
            rows = select(*(getattr(StagedWindow, name) for name in columns)).where(StagedWindow.run_id == run_id)
            connection.execute(ForecastWindow.__table__.insert().from_select(columns, rows))
            connection.execute(delete(StagedWindow).where(StagedWindow.run_id == run_id))
            hashes = dict(
                connection.execute(
                    select(ForecastWindow.symbol, ForecastWindow.sha256).where(ForecastWindow.run_id == run_id)
                ).all()
            )
            connection.execute(
                ForecastRun.__table__.update()
                .where(ForecastRun.run_id == run_id)
                .values(data_window_hash=combine(hashes) if hashes else None)
            )
        else:
            written = insert_rows(connection, Forecast.__table__, list(forecasts))
        if failures is None:
            failed = select(
                RunItem.run_id,
                RunItem.symbol,
                RunItem.stage,
                RunItem.reason,
                literal(datetime.now(timezone.utc), SymbolFailure.__table__.c.recorded_at.type),
            ).where(RunItem.run_id == run_id, RunItem.stage.is_not(None))
            columns = ["run_id", "symbol", "stage", "reason", "recorded_at"]
            connection.execute(SymbolFailure.__table__.insert().from_select(columns, failed))
        else:
            insert_rows(connection, SymbolFailure.__table__, list(failures))
    return written


def update_run(engine: Engine, run_id: str, **values: Any) -> None:
    """Change columns of a stored run (for example its MLflow run id once it is logged)."""
    with engine.begin() as connection:
        connection.execute(ForecastRun.__table__.update().where(ForecastRun.run_id == run_id).values(**values))


def get_run(engine: Engine, run_id: str) -> ForecastRun | None:
    with Session(engine) as session:
        return session.get(ForecastRun, run_id)


def list_runs(engine: Engine, limit: int = 20, kind: str | None = None) -> list[ForecastRun]:
    """The latest runs, newest first."""
    query = select(ForecastRun).order_by(ForecastRun.started_at.desc()).limit(limit)
    if kind:
        query = query.where(ForecastRun.kind == kind)
    with Session(engine) as session:
        return list(session.scalars(query))


def run_windows(engine: Engine, run_id: str) -> list[ForecastWindow]:
    """The data windows of a run's forecast symbols, by symbol."""
    query = select(ForecastWindow).where(ForecastWindow.run_id == run_id).order_by(ForecastWindow.symbol)
    with Session(engine) as session:
        return list(session.scalars(query))


def run_failures(engine: Engine, run_ids: Sequence[str]) -> dict[str, list[SymbolFailure]]:
    """The symbols each of ``run_ids`` could not forecast, by symbol."""
    if not run_ids:
        return {}
    query = select(SymbolFailure).where(SymbolFailure.run_id.in_(list(run_ids))).order_by(SymbolFailure.symbol)
    found: dict[str, list[SymbolFailure]] = {run_id: [] for run_id in run_ids}
    with Session(engine) as session:
        for failure in session.scalars(query):
            found[failure.run_id].append(failure)
    return found


def record_decision(engine: Engine, decision: dict[str, Any]) -> None:
    decision = {"decided_at": datetime.now(timezone.utc), **decision}
    with engine.begin() as connection:
        connection.execute(ModelDecision.__table__.insert(), [decision])
