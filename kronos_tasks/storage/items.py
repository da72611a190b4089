"""A daily run's watchlist in the database (``run_items``) and the batched reads its tasks make.

The plan task writes every entry with its shard; each ingest and forecast task reads its own shard's
entries by key and records the symbols that failed there. What Airflow passes between tasks stays a
few ids and counts however long the watchlist is.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Sequence
from datetime import datetime
from functools import cache

import numpy as np
import pandas as pd
from sqlalchemy import (
    Engine,
    delete,
    func,
    select,
    tuple_,
    update,
)

from kronos_tasks.data.schema import FEATURES
from kronos_tasks.data.watchlist import WatchItem

from .db import insert_rows
from .models import Bar, RunItem, bulk_utc, utc_from_micros, utc_index

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


def window_starts(engine: Engine, items: Sequence[WatchItem], end: datetime, limit: int) -> dict[str, pd.Timestamp]:
    """The time (UTC) of the oldest of the last ``limit`` bars up to ``end`` of each entry, by symbol: where
    its window starts. Symbols without bars are left out."""
    return {item.symbol: times[0] for item, times, _ in window_arrays(engine, items, end, limit)}


def window_arrays(engine: Engine, items: Sequence[WatchItem], end: datetime, limit: int):
    """The last ``limit`` bars up to ``end`` of each entry with bars, oldest first, as (entry, times [bars] UTC,
    values [features, bars] float64): one query per ``READ_CHUNK`` entries instead of one per symbol."""
    for start in range(0, len(items), READ_CHUNK):
        chunk = items[start : start + READ_CHUNK]
        if engine.dialect.name == "postgresql":
            ordinals, times, values = _array_windows(engine, chunk, end, limit)
        else:
            ordinals, times, values = _select_windows(engine, chunk, end, limit)
        edges = [0, *(np.flatnonzero(np.diff(ordinals)) + 1), len(ordinals)]
        for first, after in zip(edges[:-1], edges[1:]):
            if first < after:
                yield chunk[ordinals[first]], times[first:after], values[:, first:after]


def _no_bars():
    """A chunk's window arrays when none of its entries has bars."""
    return np.zeros(0, np.int64), utc_index([]), np.zeros((len(FEATURES), 0))


def _select_windows(engine: Engine, chunk: Sequence[WatchItem], end: datetime, limit: int):
    """``window_arrays``' bars of one chunk by a SELECT: (entry ordinals [rows], times [rows], values
    [features, rows]), each entry's rows together and in time order."""
    with engine.connect() as connection:
        rows = connection.execute(_windows_query(chunk, end, limit)).all()
    if not rows:
        return _no_bars()
    symbols, intervals, stamps, *features = zip(*rows)
    position = {(item.symbol, item.interval): n for n, item in enumerate(chunk)}
    ordinals = np.fromiter(map(position.__getitem__, zip(symbols, intervals)), np.int64, len(rows))
    return ordinals, utc_index(stamps), np.array(features, dtype=np.float64)


# On PostgreSQL each entry's window comes back as one row of arrays in the binary protocol, which numpy takes
# whole, where a row per bar builds a Python object for each of the hundreds of thousands of values a shard
# reads. The aggregates take the bars in no promised order, but each row of the window feeds all of them
# at once, so sorting by the times afterwards puts every array in order.
_WINDOW_ARRAYS = f"""
SELECT k.ordinal - 1, w.*
FROM unnest(%(symbols)s::text[], %(intervals)s::text[]) WITH ORDINALITY AS k(symbol, "interval", ordinal)
CROSS JOIN LATERAL (
    SELECT array_agg((extract(epoch FROM b.ts) * 1000000)::int8) AS micros,
        {", ".join(f"array_agg(b.{f}) AS {f}" for f in FEATURES)}
    FROM (
        SELECT * FROM bars
        WHERE bars.symbol = k.symbol AND bars."interval" = k."interval" AND bars.ts <= %(end)s
        ORDER BY bars.ts DESC LIMIT %(limit)s
    ) b
) w
WHERE w.micros IS NOT NULL
ORDER BY k.ordinal"""


def _array_loaders(cursor) -> None:
    """Load the int8[] and float8[] results of ``cursor`` (binary) as numpy arrays: psycopg's own loaders build a
    Python number per element, half the time of a shard's window reads. Only one-dimensional arrays without
    NULLs (the windows' aggregates of NOT NULL columns) are accepted."""
    from psycopg import postgres

    cursor.adapters.register_loader(postgres.types["int8"].array_oid, _numpy_loader(np.int64))
    cursor.adapters.register_loader(postgres.types["float8"].array_oid, _numpy_loader(np.float64))


@cache
def _numpy_loader(element: type) -> type:
    from psycopg.adapt import Loader
    from psycopg.pq import Format

    # The binary form: dimensions, a NULL flag and the element type, each dimension's length and lower bound,
    # then every element as its byte length and its big-endian value.
    cells = np.dtype([("size", ">i4"), ("value", np.dtype(element).newbyteorder(">"))])

    class NumpyArrayLoader(Loader):
        format = Format.BINARY

        def load(self, data) -> np.ndarray:
            dimensions, has_nulls, _ = struct.unpack_from(">iiI", data)
            if dimensions == 0:
                return np.zeros(0, element)
            if dimensions != 1 or has_nulls:
                found = f"{dimensions} dimension(s)" + (" with NULLs" if has_nulls else "")
                raise ValueError(f"expected a one-dimensional array without NULLs, got {found}")
            (length,) = struct.unpack_from(">i", data, 12)
            return np.frombuffer(data, cells, length, 20)["value"].astype(element)

    return NumpyArrayLoader


def _array_windows(engine: Engine, chunk: Sequence[WatchItem], end: datetime, limit: int):
    """``_select_windows`` on PostgreSQL: one row of arrays per entry."""
    bind = {"symbols": [i.symbol for i in chunk], "intervals": [i.interval for i in chunk], "end": end, "limit": limit}
    with engine.connect() as connection, connection.connection.driver_connection.cursor(binary=True) as cursor:
        _array_loaders(cursor)
        rows = cursor.execute(_WINDOW_ARRAYS, bind).fetchall()
    ordinals, micros, values = [], [], []
    for ordinal, times, *features in rows:
        order = np.argsort(times)
        ordinals.append(np.full(len(times), ordinal))
        micros.append(times[order])
        values.append(np.stack(features)[:, order])  # [features, bars]
    if not rows:
        return _no_bars()
    return np.concatenate(ordinals), utc_from_micros(np.concatenate(micros)), np.concatenate(values, axis=1)


def _windows_query(chunk: Sequence[WatchItem], end: datetime, limit: int):
    """``_select_windows``' query: (symbol, interval, ts, features) ordered by pair and time, the bars ranked
    by a row_number() window over each (symbol, interval) up to ``end``."""
    rank = func.row_number().over(partition_by=(Bar.symbol, Bar.interval), order_by=Bar.ts.desc()).label("rank")
    columns = (Bar.symbol, Bar.interval, bulk_utc(Bar.ts), *(getattr(Bar, f) for f in FEATURES), rank)
    pairs = [(i.symbol, i.interval) for i in chunk]
    inner = select(*columns).where(tuple_(Bar.symbol, Bar.interval).in_(pairs), Bar.ts <= end).subquery()
    return (
        select(*(c for c in inner.c if c.name != "rank"))
        .where(inner.c.rank <= limit)
        .order_by(inner.c.symbol, inner.c.interval, inner.c.ts)
    )
