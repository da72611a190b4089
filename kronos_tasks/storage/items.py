"""A daily run's watchlist in the database (``run_items``) and the batched reads its tasks make.

The plan task writes every entry with its shard; each ingest and forecast task reads its own shard's
entries by key and records the symbols that failed there. What Airflow passes between tasks stays a
few ids and counts however long the watchlist is.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime

import pandas as pd
from sqlalchemy import DateTime, Engine, and_, delete, func, select, tuple_, type_coerce, update

from kronos_tasks.data.schema import FEATURES
from kronos_tasks.data.watchlist import WatchItem

from .db import insert_rows
from .models import Bar, RunItem

READ_CHUNK = 400  # (symbol, interval) pairs per window query: well under SQLite's bound-parameter limit


def plan_items(engine: Engine, run_id: str, items: Sequence[WatchItem], shards: int) -> None:
    """Store ``items`` as the run's entries, in consecutive blocks over ``shards`` shards (replacing an
    earlier attempt's)."""
    size = -(-len(items) // shards)  # ceiling: every shard but the last holds `size` entries
    rows = [
        {
            "run_id": run_id,
            "symbol": item.symbol,
            "interval": item.interval,
            "position": position,
            "shard": position // size,
            "exchange": item.exchange,
            "timezone": item.timezone,
            "source": item.source,
            "file": item.file,
            "ticker": item.ticker,
            "stage": None,
            "reason": None,
        }
        for position, item in enumerate(items)
    ]
    with engine.begin() as connection:
        connection.execute(delete(RunItem).where(RunItem.run_id == run_id))
        insert_rows(connection, RunItem.__table__, rows)


def shard_items(engine: Engine, run_id: str, shard: int, failed: bool = False) -> list[WatchItem]:
    """A shard's entries in watchlist order: those not failed so far (or, with ``failed``, all of them)."""
    query = select(RunItem).where(RunItem.run_id == run_id, RunItem.shard == shard)
    if not failed:
        query = query.where(RunItem.stage.is_(None))
    with engine.connect() as connection:
        rows = connection.execute(query.order_by(RunItem.position)).mappings().all()
    return [
        WatchItem(r["symbol"], r["exchange"], r["interval"], r["file"], r["timezone"], r["source"], r["ticker"])
        for r in rows
    ]


def fail_items(engine: Engine, run_id: str, failures: dict[str, tuple[str, str]]) -> None:
    """Record why symbols failed: {symbol: (stage, reason)}; a retried task overwrites its own records."""
    if not failures:
        return
    with engine.begin() as connection:
        for symbol, (stage, reason) in failures.items():
            connection.execute(
                update(RunItem)
                .where(RunItem.run_id == run_id, RunItem.symbol == symbol)
                .values(stage=stage, reason=reason[:4000])
            )


def reset_shard(engine: Engine, run_id: str, shard: int, stages: Iterable[str]) -> None:
    """Forget the failures a shard's earlier attempt recorded at ``stages`` (a retried task starts clean)."""
    with engine.begin() as connection:
        connection.execute(
            update(RunItem)
            .where(RunItem.run_id == run_id, RunItem.shard == shard, RunItem.stage.in_(list(stages)))
            .values(stage=None, reason=None)
        )


def item_failures(engine: Engine, run_id: str, limit: int | None = None) -> list[tuple[str, str, str]]:
    """(symbol, stage, reason) of the run's failed entries in watchlist order (the first ``limit``)."""
    query = (
        select(RunItem.symbol, RunItem.stage, RunItem.reason)
        .where(RunItem.run_id == run_id, RunItem.stage.is_not(None))
        .order_by(RunItem.position)
        .limit(limit)
    )
    with engine.connect() as connection:
        return [tuple(row) for row in connection.execute(query)]


def item_counts(engine: Engine, run_id: str) -> tuple[int, int]:
    """(entries, failed entries) of a run."""
    query = select(func.count(), func.count(RunItem.stage)).where(RunItem.run_id == run_id)
    with engine.connect() as connection:
        total, failed = connection.execute(query).one()
    return int(total), int(failed)


def read_windows(engine: Engine, items: Sequence[WatchItem], end: datetime, limit: int) -> dict[str, pd.DataFrame]:
    """The last ``limit`` bars up to ``end`` of each entry, by symbol (ts UTC + features, oldest first): one
    query per ``READ_CHUNK`` entries instead of one per symbol."""
    found: dict[str, pd.DataFrame] = {}
    for start in range(0, len(items), READ_CHUNK):
        chunk = items[start : start + READ_CHUNK]
        rank = func.row_number().over(partition_by=(Bar.symbol, Bar.interval), order_by=Bar.ts.desc()).label("rank")
        # The stored UTC times without UtcDateTime's per-row conversion: pandas reads them as UTC at once.
        stamp = type_coerce(Bar.ts, DateTime(timezone=True)).label("ts")
        inner = (
            select(Bar.symbol, stamp, *(getattr(Bar, f) for f in FEATURES), rank)
            .where(tuple_(Bar.symbol, Bar.interval).in_([(i.symbol, i.interval) for i in chunk]), Bar.ts <= end)
            .subquery()
        )
        query = select(inner.c.symbol, inner.c.ts, *(inner.c[f] for f in FEATURES)).where(and_(inner.c.rank <= limit))
        with engine.connect() as connection:
            # Plain tuples from one fetch: pandas probing SQLAlchemy Row objects costs more than the query.
            rows = [tuple(row) for row in connection.execute(query).all()]
        frame = pd.DataFrame.from_records(rows, columns=["symbol", "ts", *FEATURES])
        frame["ts"] = pd.to_datetime(frame["ts"], utc=True)
        for symbol, bars in frame.groupby("symbol", sort=False):
            found[symbol] = bars.drop(columns="symbol").sort_values("ts").reset_index(drop=True)
    return found
