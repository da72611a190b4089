"""Tables of the forecasts database (SQLAlchemy 2). The schema itself is created by the Alembic migrations."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta, timezone

import numpy as np
import pandas as pd
from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    type_coerce,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from kronos_tasks.data.schema import SYMBOL_MAX

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class UtcDateTime(TypeDecorator):
    """Timestamps stored in UTC and read back as timezone-aware UTC on every database (SQLite keeps no zone)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value, dialect):
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive timestamp {value!r}: kronos-flow stores timezone-aware UTC timestamps only.")
        value = value.astimezone(timezone.utc)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value, dialect):
        if value is None:
            return None
        return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)


_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_MICROSECOND = timedelta(microseconds=1)


def bulk_utc(stamp_column):
    """A ``UtcDateTime`` column selected without its per-row conversion, for reads that convert a whole
    result at once with ``utc_index``."""
    return type_coerce(stamp_column, DateTime(timezone=True)).label(stamp_column.name)


def utc_index(stamps: Sequence[datetime]) -> pd.DatetimeIndex:
    """Timestamps as the database returns them (aware, or naive UTC from SQLite) -> a UTC DatetimeIndex.

    Integer microseconds since the epoch, computed per value: pandas' conversion of aware datetime objects
    checks each one's time zone and costs several times more on the hundreds of thousands of bars a shard reads.
    """
    epoch = _EPOCH if stamps and stamps[0].tzinfo is not None else _EPOCH.replace(tzinfo=None)
    return utc_from_micros(np.fromiter(((s - epoch) // _MICROSECOND for s in stamps), np.int64, len(stamps)))


def utc_from_micros(micros: np.ndarray) -> pd.DatetimeIndex:
    """Integer microseconds since the Unix epoch -> a UTC DatetimeIndex."""
    return pd.DatetimeIndex(micros.astype("datetime64[us]")).tz_localize("UTC")


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


class Instrument(Base):
    """A symbol at one interval: where its bars came from and which calendar it trades on."""

    __tablename__ = "instruments"
    symbol: Mapped[str] = mapped_column(String(SYMBOL_MAX), primary_key=True)
    interval: Mapped[str] = mapped_column(String(16), primary_key=True)
    exchange: Mapped[str | None] = mapped_column(String(32))
    timezone: Mapped[str] = mapped_column(String(64))
    source: Mapped[str | None] = mapped_column(Text)
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime())


class Bar(Base):
    """One OHLCVA bar; unique per symbol, interval and (UTC) timestamp, so re-ingesting updates in place."""

    __tablename__ = "bars"
    symbol: Mapped[str] = mapped_column(String(SYMBOL_MAX), primary_key=True)
    interval: Mapped[str] = mapped_column(String(16), primary_key=True)
    ts: Mapped[datetime] = mapped_column(UtcDateTime(), primary_key=True)
    open: Mapped[float] = mapped_column(Float)
    high: Mapped[float] = mapped_column(Float)
    low: Mapped[float] = mapped_column(Float)
    close: Mapped[float] = mapped_column(Float)
    volume: Mapped[float] = mapped_column(Float)
    amount: Mapped[float] = mapped_column(Float)
    ingested_at: Mapped[datetime] = mapped_column(UtcDateTime())


class ForecastRun(Base):
    """One forecast run (one daily DAG run, one backtest origin batch, one CLI call): everything to audit it."""

    __tablename__ = "forecast_runs"
    run_id: Mapped[str] = mapped_column(String(250), primary_key=True)
    kind: Mapped[str] = mapped_column(String(32))  # daily, backtest, cli, smoke
    dag_id: Mapped[str | None] = mapped_column(String(250))
    logical_date: Mapped[datetime | None] = mapped_column(UtcDateTime(), index=True)
    status: Mapped[str] = mapped_column(String(16))  # running, success, partial, failed
    started_at: Mapped[datetime] = mapped_column(UtcDateTime())
    finished_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    lookback: Mapped[int] = mapped_column(Integer)
    pred_len: Mapped[int] = mapped_column(Integer)
    temperature: Mapped[float] = mapped_column(Float)
    top_k: Mapped[int] = mapped_column(Integer)
    top_p: Mapped[float] = mapped_column(Float)
    sample_count: Mapped[int] = mapped_column(Integer)
    quantiles: Mapped[list] = mapped_column(JSON)
    seed: Mapped[int] = mapped_column(BigInteger)
    max_context: Mapped[int] = mapped_column(Integer)
    batch_size: Mapped[int] = mapped_column(Integer)
    device: Mapped[str] = mapped_column(String(64))
    model_name: Mapped[str] = mapped_column(String(250))
    model_version: Mapped[str] = mapped_column(String(64))
    model_sha256: Mapped[str] = mapped_column(String(64))
    tokenizer_name: Mapped[str] = mapped_column(String(250))
    tokenizer_version: Mapped[str] = mapped_column(String(64))
    tokenizer_sha256: Mapped[str] = mapped_column(String(64))
    model_alias: Mapped[str | None] = mapped_column(String(64))
    mlflow_run_id: Mapped[str | None] = mapped_column(String(64))
    data_window_hash: Mapped[str | None] = mapped_column(String(64))
    code_version: Mapped[str] = mapped_column(String(64))
    symbols_ok: Mapped[int] = mapped_column(Integer, default=0)
    symbols_failed: Mapped[int] = mapped_column(Integer, default=0)
    bars_per_second: Mapped[float | None] = mapped_column(Float)
    timings: Mapped[dict] = mapped_column(JSON)  # seconds per stage
    extra: Mapped[dict] = mapped_column(JSON)  # anything else worth keeping (watchlist, params as given)
    calibrations: Mapped[dict | None] = mapped_column(JSON)  # {interval: sha256 of the calibration applied}


class Forecast(Base):
    """The forecast of one feature of one symbol at one future bar: mean, quantiles, share of paths above last."""

    __tablename__ = "forecasts"
    run_id: Mapped[str] = mapped_column(
        String(250), ForeignKey("forecast_runs.run_id", ondelete="CASCADE"), primary_key=True
    )
    symbol: Mapped[str] = mapped_column(String(SYMBOL_MAX), primary_key=True)
    feature: Mapped[str] = mapped_column(String(16), primary_key=True)
    step: Mapped[int] = mapped_column(Integer, primary_key=True)  # 1 = the first future bar
    interval: Mapped[str] = mapped_column(String(16))
    origin_ts: Mapped[datetime] = mapped_column(UtcDateTime())  # the last bar the forecast saw
    target_ts: Mapped[datetime] = mapped_column(UtcDateTime())
    last_value: Mapped[float] = mapped_column(Float)  # the feature's value at origin_ts
    mean: Mapped[float] = mapped_column(Float)
    quantiles: Mapped[dict] = mapped_column(JSON)  # {"0.1": value, ...}
    prob_above_last: Mapped[float] = mapped_column(Float)  # share of sample paths above last_value
    series_seed: Mapped[int] = mapped_column(BigInteger)
    # close only, None elsewhere: the version's calibration applied (None: it has none), and the
    # historical-volatility baseline's band at the same levels
    calibrated_quantiles: Mapped[dict | None] = mapped_column(JSON)
    calibrated_prob_above_last: Mapped[float | None] = mapped_column(Float)
    baseline_quantiles: Mapped[dict | None] = mapped_column(JSON)

    __table_args__ = (Index("ix_forecasts_symbol_target", "symbol", "target_ts"),)


class StagedForecastChunk(Base):
    """Forecast rows written by one forecast batch task before the run is persisted: one row per chunk of
    symbols, holding the chunk's forecast rows as an Arrow IPC stream (``forecasting.windows.forecast_table``'s
    columns, no ``run_id``).

    A retried batch replaces its own chunks; persisting the run copies every chunk's rows into ``forecasts``
    in one transaction. Staging lives in the database so that workers on any host can write it, and in chunks
    so that the rows are written to the database once, by that copy, not once more here.
    """

    __tablename__ = "staged_forecast_chunks"
    run_id: Mapped[str] = mapped_column(String(250), primary_key=True)
    batch: Mapped[str] = mapped_column(String(64), primary_key=True)
    chunk: Mapped[int] = mapped_column(Integer, primary_key=True)  # 0, 1, ... within the batch
    rows: Mapped[int] = mapped_column(Integer)
    arrow: Mapped[bytes] = mapped_column(LargeBinary)
    staged_at: Mapped[datetime] = mapped_column(UtcDateTime())


class ForecastWindow(Base):
    """The stored bars one symbol's forecast read: first and last bar (its origin), count and SHA-256."""

    __tablename__ = "forecast_windows"
    run_id: Mapped[str] = mapped_column(
        String(250), ForeignKey("forecast_runs.run_id", ondelete="CASCADE"), primary_key=True
    )
    symbol: Mapped[str] = mapped_column(String(SYMBOL_MAX), primary_key=True)
    interval: Mapped[str] = mapped_column(String(16))
    first_ts: Mapped[datetime] = mapped_column(UtcDateTime())
    last_ts: Mapped[datetime] = mapped_column(UtcDateTime())
    bars: Mapped[int] = mapped_column(Integer)
    sha256: Mapped[str] = mapped_column(String(64))  # hashing.frame_sha256 of ts + the six features


class StagedWindow(Base):
    """Windows staged by a forecast batch task, moved to ``forecast_windows`` with the run's forecasts."""

    __tablename__ = "staged_windows"
    run_id: Mapped[str] = mapped_column(String(250), primary_key=True)
    batch: Mapped[str] = mapped_column(String(64), primary_key=True)
    symbol: Mapped[str] = mapped_column(String(SYMBOL_MAX), primary_key=True)
    interval: Mapped[str] = mapped_column(String(16))
    first_ts: Mapped[datetime] = mapped_column(UtcDateTime())
    last_ts: Mapped[datetime] = mapped_column(UtcDateTime())
    bars: Mapped[int] = mapped_column(Integer)
    sha256: Mapped[str] = mapped_column(String(64))
    staged_at: Mapped[datetime] = mapped_column(UtcDateTime())


class RunItem(Base):
    """One watchlist entry of a daily run: its shard, and once it failed, the stage and the reason.

    Written by the plan task; ingest and forecast tasks read their shard's entries by key and record
    failures here, so that Airflow passes only ids and counts between tasks.
    """

    __tablename__ = "run_items"
    run_id: Mapped[str] = mapped_column(String(250), primary_key=True)
    symbol: Mapped[str] = mapped_column(String(SYMBOL_MAX), primary_key=True)
    interval: Mapped[str] = mapped_column(String(16))
    position: Mapped[int] = mapped_column(Integer)  # order in the watchlist
    shard: Mapped[int] = mapped_column(Integer)
    exchange: Mapped[str] = mapped_column(String(32))
    timezone: Mapped[str] = mapped_column(String(64))
    source: Mapped[str] = mapped_column(String(64))
    file: Mapped[str | None] = mapped_column(Text)
    ticker: Mapped[str | None] = mapped_column(String(64))
    stage: Mapped[str | None] = mapped_column(String(16))  # None: not failed; else ingest, stale, window, forecast
    reason: Mapped[str | None] = mapped_column(Text)

    __table_args__ = (Index("ix_run_items_run_shard", "run_id", "shard"),)


class SourceFile(Base):
    """A symbol's bar file as it was when last ingested: unchanged files are skipped, grown ones tail-read."""

    __tablename__ = "source_files"
    symbol: Mapped[str] = mapped_column(String(SYMBOL_MAX), primary_key=True)
    interval: Mapped[str] = mapped_column(String(16), primary_key=True)
    path: Mapped[str] = mapped_column(Text)
    size: Mapped[int] = mapped_column(BigInteger)
    mtime_ns: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))  # of the whole file at that size
    ingested_at: Mapped[datetime] = mapped_column(UtcDateTime())


class SymbolFailure(Base):
    """A symbol a run could not forecast, and why."""

    __tablename__ = "symbol_failures"
    run_id: Mapped[str] = mapped_column(
        String(250), ForeignKey("forecast_runs.run_id", ondelete="CASCADE"), primary_key=True
    )
    symbol: Mapped[str] = mapped_column(String(SYMBOL_MAX), primary_key=True)
    stage: Mapped[str] = mapped_column(String(32))  # ingest, window, forecast
    reason: Mapped[str] = mapped_column(Text)
    recorded_at: Mapped[datetime] = mapped_column(UtcDateTime())


class ForecastScore(Base):
    """A score of past forecasts against the bars that arrived, for the model or a baseline."""

    __tablename__ = "forecast_scores"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    run_id: Mapped[str] = mapped_column(String(250), ForeignKey("forecast_runs.run_id", ondelete="CASCADE"))
    symbol: Mapped[str] = mapped_column(String(SYMBOL_MAX))  # "*" for a score over all symbols
    feature: Mapped[str] = mapped_column(String(16))
    horizon: Mapped[int] = mapped_column(Integer)  # step; 0 for a score over all steps
    method: Mapped[str] = mapped_column(String(32))  # model, persistence, drift
    metric: Mapped[str] = mapped_column(String(32))
    value: Mapped[float | None] = mapped_column(Float)
    count: Mapped[int] = mapped_column(Integer)
    model_version: Mapped[str | None] = mapped_column(String(64))
    evaluated_at: Mapped[datetime] = mapped_column(UtcDateTime())

    __table_args__ = (UniqueConstraint("run_id", "symbol", "feature", "horizon", "method", "metric"),)


class Calibration(Base):
    """A calibration of a model version's close quantiles and P(up) at one interval (evaluation.calibration)."""

    __tablename__ = "calibrations"
    sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    model_name: Mapped[str] = mapped_column(String(250))
    model_version: Mapped[str] = mapped_column(String(64))
    interval: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())
    origins: Mapped[int] = mapped_column(Integer)
    content: Mapped[dict] = mapped_column(JSON)
    mlflow_run_id: Mapped[str | None] = mapped_column(String(64))

    __table_args__ = (Index("ix_calibrations_model", "model_name", "model_version", "interval"),)


class ModelDecision(Base):
    """A rollout decision: promote, refuse, roll back; with the numbers it was made on."""

    __tablename__ = "model_decisions"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    decided_at: Mapped[datetime] = mapped_column(UtcDateTime())
    action: Mapped[str] = mapped_column(String(32))  # promote, refuse, rollback, force_promote
    model_name: Mapped[str] = mapped_column(String(250))
    alias: Mapped[str] = mapped_column(String(64))
    candidate_version: Mapped[str | None] = mapped_column(String(64))
    previous_version: Mapped[str | None] = mapped_column(String(64))
    actor: Mapped[str] = mapped_column(String(250))
    reason: Mapped[str] = mapped_column(Text)
    metrics: Mapped[dict] = mapped_column(JSON)
    mlflow_run_id: Mapped[str | None] = mapped_column(String(64))
    dag_run_id: Mapped[str | None] = mapped_column(String(250))
