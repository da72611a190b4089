"""Bars and instruments: upserted on ingest, read back as windows for forecasts and scores."""

from __future__ import annotations

from datetime import datetime, timezone

import numpy as np
import pandas as pd
from sqlalchemy import Engine, func, select, tuple_
from sqlalchemy.orm import Session

from kronos_tasks.data.schema import FEATURES

from .db import upsert, upsert_frame
from .models import Bar, Instrument, SourceFile, bulk_utc, utc_index


def _now() -> datetime:
    return datetime.now(timezone.utc)


def write_bars(
    engine: Engine,
    symbol: str,
    interval: str,
    bars: pd.DataFrame,
    exchange: str | None,
    timezone_name: str,
    source: str | None,
) -> int:
    """Upsert one symbol's bars (UTC ``ts`` + the six features) and its instrument row, in one transaction.

    Re-ingesting the same bars changes nothing; a vendor's corrected bar replaces the stored one.
    """
    now = _now()
    frame = bars[["ts", *FEATURES]].astype({f: np.float64 for f in FEATURES})
    frame["ts"] = pd.DatetimeIndex(frame["ts"]).tz_convert("UTC")
    frame = frame.assign(symbol=symbol, interval=interval, ingested_at=now)
    with engine.begin() as connection:
        upsert(
            connection,
            Instrument.__table__,
            [
                {
                    "symbol": symbol,
                    "interval": interval,
                    "exchange": exchange,
                    "timezone": timezone_name,
                    "source": source,
                    "updated_at": now,
                }
            ],
            ["symbol", "interval"],
        )
        return upsert_frame(connection, Bar.__table__, frame, ["symbol", "interval", "ts"])


def write_bars_many(
    engine: Engine, bars: pd.DataFrame, entries: list[tuple[str, str, int, str | None, str, str | None]]
) -> int:
    """``write_bars`` for many symbols in one transaction: ``bars`` (ts + features) holds their bars one symbol
    after another, as ``entries`` of (symbol, interval, bar count, exchange, timezone, source) say; one
    instruments upsert and one bars upsert for all of them."""
    if not entries:
        return 0
    now = _now()
    sizes = [count for _, _, count, _, _, _ in entries]
    if sum(sizes) != len(bars):
        raise ValueError(f"write_bars_many: the entries count {sum(sizes)} bars, the frame holds {len(bars)}")
    frame = bars[["ts", *FEATURES]].astype({f: np.float64 for f in FEATURES}).reset_index(drop=True)
    frame["ts"] = pd.DatetimeIndex(frame["ts"]).tz_convert("UTC")
    frame["symbol"] = np.repeat([e[0] for e in entries], sizes)
    frame["interval"] = np.repeat([e[1] for e in entries], sizes)
    frame["ingested_at"] = now
    instruments = [
        {"symbol": s, "interval": i, "exchange": x, "timezone": z, "source": src, "updated_at": now}
        for s, i, _, x, z, src in entries
    ]
    with engine.begin() as connection:
        upsert(connection, Instrument.__table__, instruments, ["symbol", "interval"])
        return upsert_frame(connection, Bar.__table__, frame, ["symbol", "interval", "ts"])


def read_bars(
    engine: Engine,
    symbol: str,
    interval: str,
    end: datetime | None = None,
    start: datetime | None = None,
    limit: int | None = None,
) -> pd.DataFrame:
    """Bars of one symbol in time order (``ts`` UTC + features), up to ``end`` inclusive; with ``limit``, the last ones."""
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ValueError(f"read_bars: limit must be a positive integer or None, got {limit!r}.")
    query = select(bulk_utc(Bar.ts), *(getattr(Bar, f) for f in FEATURES)).where(
        Bar.symbol == symbol, Bar.interval == interval
    )
    if end is not None:
        query = query.where(Bar.ts <= end)
    if start is not None:
        query = query.where(Bar.ts >= start)
    query = query.order_by(Bar.ts.desc() if limit else Bar.ts)
    if limit:
        query = query.limit(limit)
    with engine.connect() as connection:
        rows = connection.execute(query).all()
    if limit:
        rows.reverse()
    stamps, *features = zip(*rows) if rows else [()] * (1 + len(FEATURES))
    values = np.array(features, dtype=np.float64).reshape(len(FEATURES), len(rows))
    return pd.DataFrame({"ts": utc_index(stamps), **{f: values[i] for i, f in enumerate(FEATURES)}})


def instrument(engine: Engine, symbol: str, interval: str) -> Instrument | None:
    with Session(engine) as session:
        return session.get(Instrument, (symbol, interval))


def bar_count(engine: Engine, symbol: str | None = None) -> int:
    query = select(func.count()).select_from(Bar)
    if symbol is not None:
        query = query.where(Bar.symbol == symbol)
    with engine.connect() as connection:
        return connection.execute(query).scalar_one()


def _by_pairs(engine: Engine, model, pairs: list[tuple[str, str]]) -> dict[tuple[str, str], object]:
    """Rows of ``model`` (keyed by symbol and interval) for (symbol, interval) ``pairs``, 400 pairs a query."""
    found = {}
    with Session(engine) as session:
        for start in range(0, len(pairs), 400):
            query = select(model).where(tuple_(model.symbol, model.interval).in_(pairs[start : start + 400]))
            found.update({(row.symbol, row.interval): row for row in session.scalars(query)})
    return found


def instruments(engine: Engine, pairs: list[tuple[str, str]]) -> dict[tuple[str, str], Instrument]:
    """The stored instruments of (symbol, interval) ``pairs`` that have one."""
    return _by_pairs(engine, Instrument, pairs)


def source_records(engine: Engine, pairs: list[tuple[str, str]]) -> dict[tuple[str, str], SourceFile]:
    """What the bar files of (symbol, interval) ``pairs`` looked like when last ingested, where known."""
    return _by_pairs(engine, SourceFile, pairs)


def source_record(engine: Engine, symbol: str, interval: str) -> SourceFile | None:
    """What a symbol's bar file looked like when it was last ingested (None: never ingested from a file)."""
    with Session(engine) as session:
        return session.get(SourceFile, (symbol, interval))


def record_sources(engine: Engine, files: list[tuple[str, str, str, int, int, str]]) -> None:
    """Remember bar files as just ingested: (symbol, interval, path, size, mtime_ns, sha256) each."""
    if not files:
        return
    now = _now()
    keys = ("symbol", "interval", "path", "size", "mtime_ns", "sha256")
    rows = [{**dict(zip(keys, f)), "ingested_at": now} for f in files]
    with engine.begin() as connection:
        upsert(connection, SourceFile.__table__, rows, ["symbol", "interval"])
