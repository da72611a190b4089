"""Forecast runs with their forecasts and failures, written in one transaction and replaced on re-run."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import Engine, delete, func, literal, select
from sqlalchemy.orm import Session

from kronos_tasks.hashing import combine

from .db import insert_rows, insert_table, upsert
from .models import (
    Forecast,
    ForecastRun,
    ForecastScore,
    ForecastWindow,
    ModelDecision,
    RunItem,
    StagedForecast,
    StagedWindow,
    SymbolFailure,
)

FORECAST_COLUMNS = [c.name for c in Forecast.__table__.columns]
STAGING = ((StagedForecast, Forecast), (StagedWindow, ForecastWindow))  # (staging table, the run's table)


def stage_forecasts(
    engine: Engine,
    run_id: str,
    batch: str,
    rows,
    windows: Sequence[dict[str, Any]] = (),
    append: bool = False,
) -> None:
    """Write one batch's forecast rows (dicts, or an Arrow table of ``forecasting.windows.forecast_table``) and
    their windows to staging, replacing what an earlier attempt of the batch staged (or, with ``append``,
    adding to what this attempt staged so far)."""
    now = datetime.now(timezone.utc)
    same = {"run_id": run_id, "batch": batch, "staged_at": now}
    with engine.begin() as connection:
        if not append:
            for staged, _ in STAGING:
                connection.execute(delete(staged).where(staged.run_id == run_id, staged.batch == batch))
        insert = insert_rows if isinstance(rows, Sequence) else insert_table
        insert(connection, StagedForecast.__table__, rows, same)
        insert_rows(connection, StagedWindow.__table__, windows, same)


def clear_staging(engine: Engine, run_id: str) -> None:
    """Forget everything staged for ``run_id`` (at the start of a run, so a re-run starts clean)."""
    with engine.begin() as connection:
        for staged, _ in STAGING:
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
            for staged, table in STAGING:
                columns = [c.name for c in table.__table__.columns]
                rows = select(*(getattr(staged, name) for name in columns)).where(staged.run_id == run_id)
                connection.execute(table.__table__.insert().from_select(columns, rows))
                connection.execute(delete(staged).where(staged.run_id == run_id))
            written = connection.execute(
                select(func.count()).select_from(Forecast).where(Forecast.run_id == run_id)
            ).scalar_one()
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
