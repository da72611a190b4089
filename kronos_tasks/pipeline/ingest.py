"""Ingestion: read bar files or fetch from vendors, validate, upsert what passes. One bad symbol never stops
the others."""

from __future__ import annotations

import hashlib
import io
import logging
from collections import defaultdict, deque
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd
from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from kronos_tasks.data import DataError, Interval, Report, exchange_timezone, files_under, read_series, validate
from kronos_tasks.data.sources import ROW_COLUMN, SYMBOL_COLUMN, series_from_frame
from kronos_tasks.data.validation import bar_arrays, check_bars, check_policies, wall_clock_ns
from kronos_tasks.data.watchlist import WatchItem
from kronos_tasks.storage import (
    instrument,
    instruments,
    read_bars,
    record_sources,
    source_records,
    window_starts,
    write_bars,
    write_bars_many,
)

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
            if (path := inside(name)).is_file():
                return path
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


def _scan(
    path: Path, prefix: int | None, context: int = OVERLAP_BARS, chunk_bytes: int = 1 << 20
) -> tuple[str, str | None, int, int | None]:
    """One pass over a file -> (its SHA-256, the SHA-256 of its first ``prefix`` bytes, the lines in them,
    the byte where the last ``context`` of those lines start). The last two are None and 0 when the prefix
    does not end a line (the file was not simply appended to)."""
    whole, head, lines = hashlib.sha256(), None, 0
    starts: deque[int] = deque(maxlen=context + 1)  # offsets just after the latest newlines of the prefix
    read = 0
    with path.open("rb") as handle:
        while chunk := handle.read(chunk_bytes):
            inside = len(chunk) if prefix is None or head is not None else min(len(chunk), prefix - read)
            part = chunk[:inside]
            if head is None:
                lines += part.count(b"\n")
                latest, end = [], len(part)  # the chunk's last context + 1 newlines, from the end back
                while len(latest) < starts.maxlen and (at := part.rfind(b"\n", 0, end)) >= 0:
                    latest.append(read + at + 1)
                    end = at
                starts.extend(reversed(latest))
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


@dataclass
class FileState:
    """One watchlist file as the daily ingest found it: its stat and digest, and where to read it from."""

    item: WatchItem
    path: Path
    size: int
    mtime_ns: int
    sha256: str
    start_byte: int | None = None  # None: read it whole
    first_row: int = 1

    def record(self) -> tuple[str, str, str, int, int, str]:
        return (self.item.symbol, self.item.interval, str(self.path), self.size, self.mtime_ns, self.sha256)


def file_states(engine: Engine, entries: list[tuple[WatchItem, Path]]) -> tuple[list[FileState], int]:
    """The changed files of ``entries`` (each with where to read it from) and how many were unchanged.

    A file with the path, size and modification time of its last ingest is unchanged. A CSV that only grew
    (its old bytes hash as recorded) is read from ``OVERLAP_BARS`` rows before where it ended: the rows a
    whole read keeps from ``resume_point``. Anything else is read whole.
    """
    known = source_records(engine, [(item.symbol, item.interval) for item, _ in entries])
    changed, unchanged = [], 0
    for item, path in entries:
        stat = path.stat()
        before = known.get((item.symbol, item.interval))
        same_file = before is not None and before.path == str(path)
        if same_file and (before.size, before.mtime_ns) == (stat.st_size, stat.st_mtime_ns):
            unchanged += 1
            continue
        grown = same_file and stat.st_size > before.size and path.name.lower().endswith(TAILABLE)
        digest, prefix, lines, context_start = _scan(path, before.size if grown else None)
        state = FileState(item, path, stat.st_size, stat.st_mtime_ns, digest)
        if grown and prefix == before.sha256 and context_start is not None:
            state.start_byte, state.first_row = context_start, lines - OVERLAP_BARS
        changed.append(state)
    return changed, unchanged


def ingest_file_incremental(engine: Engine, path: Path, item: WatchItem) -> IngestResult | None:
    """The daily ingest of one watchlist entry's file (see ``ingest_files``); None when it is unchanged."""
    result, unchanged = ingest_files(engine, [(item, path)])
    return None if unchanged else result


def ingest_files(engine: Engine, entries: list[tuple[WatchItem, Path]]) -> tuple[IngestResult, int]:
    """The daily ingest of watchlist entries' files -> (result, files skipped as unchanged).

    Files read whole go through ``ingest_file`` one by one; the ends of grown CSVs are read together: one
    parse per header, timezone and interval, one query for the symbols' stored instruments and resume
    points, one write for all their bars. Either way only bars from ``resume_point`` on are validated and
    written, and a symbol that fails is reported, not raised.
    """
    changed, unchanged = file_states(engine, entries)
    result = IngestResult()
    done = []
    for state in (s for s in changed if s.start_byte is None):
        one = ingest_file(
            engine,
            state.path,
            symbol=state.item.symbol,
            interval=state.item.interval,
            exchange=state.item.exchange,
            since=resume_point(engine, state.item.symbol, state.item.interval),
        )
        result.merge(one)
        if state.item.symbol not in one.failed:
            done.append(state)
    tails = [s for s in changed if s.start_byte is not None]
    if tails:
        result.merge(ingest_tails(engine, tails))
        done += [s for s in tails if s.item.symbol not in result.failed]
    record_sources(engine, [s.record() for s in done])
    return result, unchanged


def ingest_tails(engine: Engine, tails: list[FileState], policies: dict[str, str] | None = None) -> IngestResult:
    """The new rows of grown CSVs (and ``OVERLAP_BARS`` before them), read, validated and written together."""
    result = IngestResult()
    pairs = [(s.item.symbol, s.item.interval) for s in tails]
    stored = instruments(engine, pairs)
    starts = window_starts(engine, [s.item for s in tails], datetime(2200, 1, 1, tzinfo=timezone.utc), OVERLAP_BARS)
    groups: dict[tuple[bytes, str, str], list[FileState]] = defaultdict(list)
    for state in tails:
        place = stored.get((state.item.symbol, state.item.interval))
        try:
            zone = exchange_timezone(state.item.exchange)
        except DataError as exc:  # an exchange the calendar library cannot build fails its symbols alone
            result.failed[state.item.symbol] = str(exc)
            continue
        if place is not None and (
            (place.exchange or "").upper() != state.item.exchange.upper() or place.timezone != zone
        ):
            result.failed[state.item.symbol] = (
                f"{state.item.symbol} at {state.item.interval} was ingested with exchange {place.exchange or 'none'} "
                f"(timezone {place.timezone}); the watchlist says {state.item.exchange}: fix the watchlist entry."
            )
            continue
        with state.path.open("rb") as handle:
            header = handle.readline()
        groups[(header.rstrip(b"\r\n"), zone, state.item.interval)].append(state)
    policies = check_policies(policies or {})
    written, kept_bars = [], []
    for (header, zone, interval), states in groups.items():
        buffer = io.BytesIO()
        buffer.write(f"{SYMBOL_COLUMN},{ROW_COLUMN},".encode() + header + b"\n")
        for state in states:
            label = '"' + state.item.symbol.replace('"', '""') + '"'
            with state.path.open("rb") as handle:
                handle.seek(state.start_byte)
                rows = [line for line in handle.read().splitlines() if line.strip()]
            for offset, line in enumerate(rows):
                buffer.write(f"{label},{state.first_row + offset},".encode() + line + b"\n")
        buffer.seek(0)
        by_symbol = {s.item.symbol: s for s in states}
        try:
            frame = pd.read_csv(buffer, dtype={SYMBOL_COLUMN: str})
            series = series_from_frame(frame, states[0].path, zone, None, Interval.parse(interval))
        except (DataError, ValueError, pd.errors.ParserError) as exc:
            for state in states:
                result.failed[state.item.symbol] = f"{state.path}: {exc}"
            continue
        # The rules run on arrays cut from one table of every symbol's rows: per-symbol frames cost more
        # than the checks on a daily ingest's few new bars each.
        table = pd.concat([one.bars for one in series], ignore_index=True)
        utc_ns, values = bar_arrays(table)
        local_ns = wall_clock_ns(utc_ns, zone)
        file_rows = table["row"].to_numpy()
        kept_rows = []
        for one, end in zip(series, np.cumsum([len(one.bars) for one in series])):
            state, at = by_symbol[one.symbol], np.arange(end - len(one.bars), end)
            since = starts.get(one.symbol)
            if since is not None:
                at = at[utc_ns[at] >= since.value]  # usually every row of a tail
            if not len(at):
                result.written[one.symbol] = 0
                continue
            kept, report = check_bars(
                one.symbol, utc_ns[at], values[at], file_rows[at], one.interval, zone, policies, local_ns[at]
            )
            if one.notes:
                report.notes[one.symbol] = list(one.notes)
            result.report.merge(report)
            if one.symbol in report.rejected_symbols:
                result.failed[one.symbol] = f"rejected by validation: {report.rejected_symbols[one.symbol]}"
                continue
            kept_rows.append(at[kept])
            written.append((one.symbol, interval, len(kept), state.item.exchange.upper(), zone, str(state.path)))
            result.written[one.symbol] = len(kept)
        if kept_rows:
            kept_bars.append(table.take(np.concatenate(kept_rows)))
    try:
        if written:
            write_bars_many(engine, pd.concat(kept_bars, ignore_index=True), written)
    except SQLAlchemyError as exc:
        for symbol, *_ in written:
            result.failed[symbol] = f"{type(exc).__name__}: {exc}"
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
