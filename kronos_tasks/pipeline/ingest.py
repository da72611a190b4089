"""Ingestion: read bar files or fetch from vendors, validate, upsert what passes. One bad symbol never stops
the others."""

from __future__ import annotations

import hashlib
import logging
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import pandas as pd
from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from kronos_tasks.data import DataError, Interval, Report, exchange_timezone, files_under, read_series, validate
from kronos_tasks.data.watchlist import WatchItem
from kronos_tasks.storage import instrument, read_bars, record_source, source_record, write_bars

log = logging.getLogger(__name__)

OVERLAP_BARS = 10  # stored bars re-read on every incremental ingest, so that vendor corrections land
INITIAL_BARS = 2048  # bars a symbol's first fetch asks for (the vendor may serve fewer)


@dataclass
class IngestResult:
    """The validation report, the rows written per symbol and the symbols that failed with their reason."""

    report: Report = field(default_factory=Report)
    written: dict[str, int] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)

    def merge(self, other: IngestResult) -> None:
        self.report.merge(other.report)
        self.written.update(other.written)
        self.failed.update(other.failed)

    def render(self) -> str:
        lines = [self.report.render()]
        lines += [f"  wrote {rows} bar(s) for {symbol}" for symbol, rows in sorted(self.written.items())]
        lines += [f"  FAILED {symbol}: {reason}" for symbol, reason in sorted(self.failed.items())]
        return "\n".join(lines)


def source_file(item: WatchItem, data_dir: Path) -> Path:
    """The file of a ``files`` watchlist entry: its ``file`` (relative to ``data_dir``), else
    ``<symbol>_<interval>.csv`` / ``.parquet`` / ``.csv.gz`` or ``<symbol>.csv`` ... in ``data_dir``.

    The file must lie inside ``data_dir`` once ``..`` and symbolic links are resolved: a watchlist (a DAG
    run's conf, an Airflow Variable) cannot make a worker read other files.
    """
    root = data_dir.resolve()

    def inside(name: str) -> Path:
        path = (data_dir / name).resolve()  # an absolute name replaces data_dir here
        if not path.is_relative_to(root):
            raise DataError(
                f"{item.symbol}: file {name!r} is outside the data folder {data_dir}; watchlist files must "
                "lie inside KRONOS_DATA_DIR (give a path relative to it)."
            )
        return path

    if item.file:
        return inside(item.file)
    for suffix in (".csv", ".parquet", ".csv.gz"):
        for name in (f"{item.symbol}_{item.interval}{suffix}", f"{item.symbol}{suffix}"):
            if inside(name).is_file():
                return inside(name)
    raise DataError(
        f"{item.symbol}: no file {item.symbol}_{item.interval}.csv (or .parquet) in {data_dir}; "
        "add one or set `file` in the watchlist."
    )


def _rows(bars, limit: int = 5) -> str:
    rows = [str(r) for r in bars["row"].iloc[:limit]]
    return ", ".join(rows) + (f" and {len(bars) - limit} more" if len(bars) > limit else "")


def place_of(
    engine: Engine, symbol: str, interval: str, exchange: str | None, timezone: str | None
) -> tuple[str | None, str]:
    """(exchange, timezone) of a symbol's bars: the ones given, else those it was first ingested with, else UTC.

    A choice that contradicts the stored one is refused: the same bars would be stored a second time at
    other UTC times.
    """
    stored = instrument(engine, symbol, interval)
    if exchange:
        zone = exchange_timezone(exchange)
        if stored is not None and ((stored.exchange or "").upper() != exchange.upper() or stored.timezone != zone):
            raise DataError(
                f"{symbol} at {interval} was ingested with exchange {stored.exchange or 'none'} "
                f"(timezone {stored.timezone}); ingesting it with exchange {exchange.upper()} would store its bars "
                f"again at other times. Drop --exchange (the stored one applies) or use a new symbol name."
            )
        return exchange.upper(), zone
    if timezone:
        if stored is not None and stored.timezone != timezone:
            raise DataError(
                f"{symbol} at {interval} was ingested with timezone {stored.timezone}; ingesting it with "
                f"{timezone} would store its bars again at other times. Drop --timezone (the stored one applies)."
            )
        return (stored.exchange if stored is not None else None), timezone
    if stored is not None:
        return stored.exchange, stored.timezone
    return None, "UTC"


def ingest_file(
    engine: Engine,
    path: Path,
    *,
    symbol: str | None = None,
    interval: str | None = None,
    exchange: str | None = None,
    timezone: str | None = None,
    policies: dict[str, str] | None = None,
    since: datetime | None = None,
    start_byte: int | None = None,
    first_row: int = 1,
) -> IngestResult:
    """Ingest one file; every problem ends up in the result, keyed by symbol (or by file name).

    Each symbol keeps the exchange and timezone it was first ingested with (see ``place_of``); times
    without a UTC offset are read in that timezone. With ``since``, only bars at or after it are read
    (the daily DAG's incremental ingest); with ``start_byte``, only the rows of a CSV from that byte on
    (``first_row`` is the file row of the first of them).
    """
    result = IngestResult()
    try:
        read_zone = timezone or (exchange_timezone(exchange) if exchange else "UTC")
        series = read_series(
            path, read_zone, symbol, Interval.parse(interval) if interval else None, start_byte, first_row
        )
    except DataError as exc:
        result.failed[symbol or path.name] = str(exc)
        return result
    for item in series:
        if not item.symbol:
            result.failed[f"{path.name} (blank symbol)"] = (
                f"{path}: {len(item.bars)} row(s) with a blank symbol cell (rows {_rows(item.bars)}); "
                "fill in the symbol column."
            )
            continue
        try:
            place, zone = place_of(engine, item.symbol, str(item.interval), exchange, timezone)
            if item.naive and zone != read_zone:  # wall-clock times of the stored timezone, not of UTC
                local = item.bars["ts"].dt.tz_convert(read_zone).dt.tz_localize(None)
                item.bars["ts"] = local.dt.tz_localize(zone, ambiguous="NaT", nonexistent="NaT").dt.tz_convert("UTC")
            if since is not None:
                item.bars = item.bars[item.bars["ts"] >= since].reset_index(drop=True)
                if item.bars.empty:  # nothing new
                    result.written[item.symbol] = 0
                    continue
            store(engine, result, item.symbol, item.interval, item.bars, place, zone, str(path), policies, item.notes)
        except (DataError, SQLAlchemyError) as exc:
            log.exception("ingesting %s from %s failed", item.symbol, path)
            result.failed[item.symbol] = f"{type(exc).__name__}: {exc}"
    return result


def store(
    engine: Engine,
    result: IngestResult,
    symbol: str,
    interval: Interval,
    bars: pd.DataFrame,
    exchange: str | None,
    zone: str,
    source: str,
    policies: dict[str, str] | None = None,
    notes: list[str] | None = None,
) -> None:
    """Validate one symbol's bars and upsert those that pass; the outcome goes into ``result``."""
    kept, report = validate(symbol, bars, interval, zone, policies)
    if notes:
        report.notes[symbol] = list(notes)
    result.report.merge(report)
    if symbol in report.rejected_symbols:
        found = "; ".join([report.rejected_symbols[symbol], *(notes or [])])
        result.failed[symbol] = f"rejected by validation: {found}"
        return
    result.written[symbol] = write_bars(engine, symbol, str(interval), kept, exchange, zone, source)


TAILABLE = (".csv",)  # files whose new rows can be read from where the last read ended


def _scan(path: Path, prefix: int | None, context: int = OVERLAP_BARS) -> tuple[str, str | None, int, int | None]:
    """One pass over a file -> (its SHA-256, the SHA-256 of its first ``prefix`` bytes, the lines in them,
    the byte where the last ``context`` of those lines start). The last two are None and 0 when the prefix
    does not end a line (the file was not simply appended to)."""
    whole, head, lines = hashlib.sha256(), None, 0
    starts: deque[int] = deque(maxlen=context + 1)  # offsets just after the latest newlines of the prefix
    read = 0
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            inside = len(chunk) if prefix is None or head is not None else min(len(chunk), prefix - read)
            part = chunk[:inside]
            if head is None:
                at = part.find(b"\n")
                while at >= 0:
                    lines += 1
                    starts.append(read + at + 1)
                    at = part.find(b"\n", at + 1)
            whole.update(part)
            if prefix is not None and head is None and read + inside == prefix:
                head = whole.copy()
            whole.update(chunk[inside:])
            read += len(chunk)
    ends_line = bool(starts) and starts[-1] == prefix
    if head is None or not ends_line:
        return whole.hexdigest(), None, 0, None
    # The line after the header is line 2: keep the header out of the context.
    first = starts[0] if lines > context else None
    return whole.hexdigest(), head.hexdigest(), lines, first


def ingest_file_incremental(engine: Engine, path: Path, item: WatchItem) -> IngestResult | None:
    """The daily ingest of a watchlist entry's file: None when the file is unchanged since its last ingest
    (same path, size and modification time); a CSV that only grew (its old bytes unchanged) is read from
    ``OVERLAP_BARS`` rows before where it ended; anything else is read whole. Either way only bars from
    ``resume_point`` on are validated and written."""
    stat = path.stat()
    known = source_record(engine, item.symbol, item.interval)
    same_file = known is not None and known.path == str(path)
    if same_file and (known.size, known.mtime_ns) == (stat.st_size, stat.st_mtime_ns):
        return None
    grown = same_file and stat.st_size > known.size and path.name.lower().endswith(TAILABLE)
    digest, prefix, lines, context_start = _scan(path, known.size if grown else None)
    start_byte = first_row = None
    if grown and prefix == known.sha256 and context_start is not None:
        # The appended rows and the OVERLAP_BARS rows before them: the rows a whole read keeps from resume_point.
        start_byte, first_row = context_start, lines - OVERLAP_BARS
    result = ingest_file(
        engine,
        path,
        symbol=item.symbol,
        interval=item.interval,
        exchange=item.exchange,
        since=resume_point(engine, item.symbol, item.interval),
        start_byte=start_byte,
        first_row=first_row or 1,
    )
    if item.symbol not in result.failed:
        record_source(engine, item.symbol, item.interval, str(path), stat.st_size, stat.st_mtime_ns, digest)
    return result


def resume_point(engine: Engine, symbol: str, interval: str) -> pd.Timestamp | None:
    """Where an incremental ingest starts: ``OVERLAP_BARS`` before the newest stored bar (None: nothing stored),
    so that bars a vendor corrected since are read, validated and upserted again."""
    last = read_bars(engine, symbol, interval, limit=OVERLAP_BARS)
    return last["ts"].iloc[0] if len(last) else None


def initial_start(interval: Interval, until: pd.Timestamp) -> pd.Timestamp:
    """Where the first fetch of a symbol starts: ``INITIAL_BARS`` bars' worth of time before ``until``
    (calendar time: markets close overnight and at weekends)."""
    if interval.daily:
        return until - pd.Timedelta(days=round(INITIAL_BARS * 7 / 5))
    return until - INITIAL_BARS * interval.timedelta * 4


def ingest_fetched(
    engine: Engine,
    item: WatchItem,
    until: pd.Timestamp,
    since: pd.Timestamp | None = None,
    policies: dict[str, str] | None = None,
) -> IngestResult:
    """Fetch a watchlist entry's bars from its vendor up to ``until`` and store what passes validation.

    Without ``since`` the fetch resumes from the stored bars (``resume_point``), or starts ``initial_start``
    back for a new symbol. Only bars that have closed by ``until`` are stored.
    """
    from kronos_tasks.data.vendors import fetch_bars, vendor_for

    result = IngestResult()
    interval = Interval.parse(item.interval)
    try:
        place, zone = place_of(engine, item.symbol, item.interval, item.exchange, None)
        start = since if since is not None else resume_point(engine, item.symbol, item.interval)
        start = initial_start(interval, until) if start is None else start
        vendor = vendor_for(item.source)
        bars = fetch_bars(vendor, item.symbol, item.vendor_symbol, interval, item.exchange, start, until)
        if bars.empty:
            result.written[item.symbol] = 0
            return result
        store(engine, result, item.symbol, interval, bars, place, zone, f"{item.source}:{item.vendor_symbol}", policies)
    except (DataError, SQLAlchemyError) as exc:
        log.warning("fetching %s from %s failed: %s", item.symbol, item.source, exc)
        result.failed[item.symbol] = str(exc)
    return result


def ingest_paths(
    engine: Engine,
    paths: list[str | Path],
    *,
    symbol: str | None = None,
    interval: str | None = None,
    exchange: str | None = None,
    timezone: str | None = None,
    policies: dict[str, str] | None = None,
) -> IngestResult:
    """Ingest files and folders (as ``kronos-flow ingest`` does)."""
    if exchange and timezone:
        raise DataError("give an exchange (its timezone is known) or a timezone, not both.")
    files = files_under(paths)
    if symbol and len(files) > 1:
        raise DataError(f"--symbol names the symbol of one file, but {len(files)} files were given.")
    result = IngestResult()
    for path in files:
        result.merge(
            ingest_file(
                engine, path, symbol=symbol, interval=interval, exchange=exchange, timezone=timezone, policies=policies
            )
        )
    return result
