"""A daily run's watchlist in the database (``run_items``) and the batched reads its tasks make.

The plan task writes every entry with its shard; each ingest and forecast task reads its own shard's
entries by key and records the symbols that failed there. What Airflow passes between tasks stays a
few ids and counts however long the watchlist is.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime

import numpy as np
import pandas as pd
from sqlalchemy import (
    Engine,
    column,
    delete,
    func,
    select,
    true,
    tuple_,
    update,
    values,
)

from kronos_tasks.data.schema import FEATURES
from kronos_tasks.data.watchlist import WatchItem

from .db import insert_rows
from .models import Bar, RunItem, bulk_utc, utc_index

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
    query per ``READ_CHUNK`` entries instead of one per symbol. Symbols without bars are left out."""
    found: dict[str, pd.DataFrame] = {}
    for start in range(0, len(items), READ_CHUNK):
        query = _windows_query(engine.dialect.name, items[start : start + READ_CHUNK], end, limit)
        with engine.connect() as connection:
            rows = connection.execute(query).all()  # ordered by symbol, then time
        if not rows:
            continue
        symbols, stamps, *features = zip(*rows)
        times = utc_index(stamps)
        values = np.array(features, dtype=np.float64)  # [features, rows]; NULL -> NaN
        edges = [0, *(np.flatnonzero(np.array(symbols[1:]) != np.array(symbols[:-1])) + 1), len(rows)]
        for first, after in zip(edges[:-1], edges[1:]):
            found[symbols[first]] = pd.DataFrame(
                {"ts": times[first:after], **{f: values[i, first:after] for i, f in enumerate(FEATURES)}}
            )
    return found


def _windows_query(dialect: str, chunk: Sequence[WatchItem], end: datetime, limit: int):
    """The bars of ``read_windows`` for one chunk of entries, ordered by symbol and time.

    On PostgreSQL a LATERAL join walks each pair's primary-key index backwards from ``end`` and stops after
    ``limit`` bars; elsewhere a row_number() window ranks every bar of the pairs up to ``end``.
    """
    columns = (Bar.symbol, bulk_utc(Bar.ts), *(getattr(Bar, f) for f in FEATURES))
    pairs = [(i.symbol, i.interval) for i in chunk]
    if dialect == "postgresql":
        keys = values(
            column("symbol", Bar.__table__.c.symbol.type),
            column("interval", Bar.__table__.c.interval.type),
            name="keys",
        ).data(pairs)
        latest = (
            select(*columns)
            .where(Bar.symbol == keys.c.symbol, Bar.interval == keys.c.interval, Bar.ts <= end)
            .order_by(Bar.ts.desc())
            .limit(limit)
            .lateral("latest")
        )
        return select(latest).select_from(keys).join(latest, true()).order_by(latest.c.symbol, latest.c.ts)
    rank = func.row_number().over(partition_by=(Bar.symbol, Bar.interval), order_by=Bar.ts.desc()).label("rank")
    inner = select(*columns, rank).where(tuple_(Bar.symbol, Bar.interval).in_(pairs), Bar.ts <= end).subquery()
    return (
        select(inner.c.symbol, inner.c.ts, *(inner.c[f] for f in FEATURES))
        .where(inner.c.rank <= limit)
        .order_by(inner.c.symbol, inner.c.ts)
    )
