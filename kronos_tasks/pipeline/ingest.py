"""Ingestion: read bar files, validate them, upsert what passes. One bad symbol never stops the others."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from kronos_tasks.data import DataError, Interval, Report, exchange_timezone, files_under, read_series, validate
from kronos_tasks.storage import write_bars

log = logging.getLogger(__name__)


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
) -> IngestResult:
    """Ingest one file; every problem ends up in the result, keyed by symbol (or by file name).

    With ``since``, only bars at or after it are read (the daily DAG's incremental ingest).
    """
    result = IngestResult()
    try:
        zone = timezone or (exchange_timezone(exchange) if exchange else "UTC")
        series = read_series(path, zone, symbol, Interval.parse(interval) if interval else None)
    except DataError as exc:
        result.failed[symbol or path.name] = str(exc)
        return result
    for item in series:
        if since is not None:
            item.bars = item.bars[item.bars["ts"] >= since].reset_index(drop=True)
            if item.bars.empty:  # nothing new
                result.written[item.symbol] = 0
                continue
        try:
            kept, report = validate(item.symbol, item.bars, item.interval, zone, policies)
            if item.notes:
                report.notes[item.symbol] = list(item.notes)
            result.report.merge(report)
            if item.symbol in report.rejected_symbols:
                result.failed[item.symbol] = f"rejected by validation: {report.rejected_symbols[item.symbol]}"
                continue
            result.written[item.symbol] = write_bars(
                engine, item.symbol, str(item.interval), kept, exchange, zone, str(path)
            )
        except (DataError, SQLAlchemyError, ValueError) as exc:
            log.exception("ingesting %s from %s failed", item.symbol, path)
            result.failed[item.symbol] = f"{type(exc).__name__}: {exc}"
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
