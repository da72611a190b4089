"""Read bars from CSV or Parquet files (or folders of them) into the one schema kronos-flow stores.

Accepted without hand-editing: a named time column (timestamps, timestamp, datetime, date, time, ts;
or separate date and time columns) or an unnamed first (index) column; any capitalisation; vol / amt /
turnover for volume and amount; a symbol column (several symbols per file) or the symbol in the file
name, optionally followed by the interval (``GOOG_1d.csv``, ``a_share_5min.csv``); rows in descending
time order. Missing ``amount`` is derived as upstream Kronos does (volume x mean of the four prices);
missing ``volume`` becomes 0, and so does ``amount`` then. Naive timestamps are read in the source's
timezone (the exchange's, or one given) and stored in UTC.
"""

from __future__ import annotations

import io
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from .schema import COLUMNS, FEATURES, PRICES, DataError, Interval, infer_interval

SUFFIXES = (".csv", ".csv.gz", ".parquet", ".pq")
TIME_NAMES = ["timestamps", "timestamp", "datetime", "date_time", "date", "time", "ts"]
ALIASES = {
    "open": ["open", "o", "open_price"],
    "high": ["high", "h", "high_price"],
    "low": ["low", "l", "low_price"],
    "close": ["close", "c", "close_price"],
    "volume": ["volume", "vol", "v"],
    "amount": ["amount", "amt", "turnover"],
}
SYMBOL_NAMES = ["symbol", "ticker", "code", "instrument"]


@dataclass
class SourceSeries:
    """One symbol's bars from one file, normalised: ``bars`` has the columns of ``schema.COLUMNS``.

    ``naive`` says that none of the file's times carried a UTC offset: they were read as wall-clock times
    of the timezone given to ``read_series``. ``symbol`` is empty for rows with a blank symbol cell.
    """

    symbol: str
    interval: Interval
    path: Path
    bars: pd.DataFrame
    notes: list[str] = field(default_factory=list)  # what was derived or reordered, for the report
    naive: bool = True


def _key(name: str) -> str:
    return re.sub(r"[\s\-]+", "_", str(name).strip().lower())


def files_under(paths: list[str | Path]) -> list[Path]:
    """Every CSV/Parquet file named or found (not recursively) in the folders named, sorted."""
    found: list[Path] = []
    for raw in paths:
        path = Path(raw).expanduser()
        if path.is_dir():
            found += sorted(p for p in path.iterdir() if p.is_file() and p.name.lower().endswith(SUFFIXES))
        elif path.is_file():
            if not path.name.lower().endswith(SUFFIXES):
                raise DataError(f"{path}: not a CSV or Parquet file (expected one of {', '.join(SUFFIXES)}).")
            found.append(path)
        else:
            raise DataError(f"{path}: no such file or folder.")
    if not found:
        raise DataError(f"no CSV or Parquet files in {', '.join(str(p) for p in paths)}.")
    return found


def symbol_and_interval_from_name(path: Path) -> tuple[str, Interval | None]:
    """``GOOG_1d.csv`` -> ("GOOG", 1d); ``AAPL.parquet`` -> ("AAPL", None)."""
    stem = path.name
    for suffix in SUFFIXES:
        if stem.lower().endswith(suffix):
            stem = stem[: -len(suffix)]
            break
    head, _, tail = stem.rpartition("_")
    if head:
        try:
            return head, Interval.parse(tail)
        except DataError:
            pass
    return stem, None


def _read_table(path: Path, start_byte: int | None = None) -> pd.DataFrame:
    try:
        if path.name.lower().endswith((".parquet", ".pq")):
            frame = pd.read_parquet(path)
            if isinstance(frame.index, pd.DatetimeIndex):
                frame = frame.reset_index()
            return frame
        if start_byte is not None:  # the header line, then the rows from start_byte on
            with path.open("rb") as handle:
                header = handle.readline()
                handle.seek(start_byte)
                return pd.read_csv(io.BytesIO(header + handle.read()))
        return pd.read_csv(path)
    except (OSError, ValueError, pd.errors.ParserError) as exc:
        raise DataError(f"{path}: cannot be read as a table: {exc}") from exc


_COLUMN_NAME = re.compile(r"[A-Za-z_][\w .()-]{0,31}")


def _columns_found(frame: pd.DataFrame) -> str:
    """The header's column names for an error message, leaving out any that do not look like a column name
    (so that a file that is not a table of bars, say a credentials file, is never quoted)."""
    names = [str(c) for c in frame.columns]
    shown = [n for n in names if _COLUMN_NAME.fullmatch(n) and not n.startswith("Unnamed")]
    hidden = len(names) - len(shown)
    return f"Columns found: {shown}" + (f" and {hidden} other(s) not shown" if hidden else "")


def _time_column(frame: pd.DataFrame, path: Path) -> pd.Series:
    keys = {_key(c): c for c in frame.columns}
    if "date" in keys and "time" in keys:
        return frame[keys["date"]].astype(str) + " " + frame[keys["time"]].astype(str)
    for name in TIME_NAMES:
        if name in keys:
            return frame[keys[name]]
    first = frame.columns[0] if len(frame.columns) else None
    if first is not None and (str(first).startswith("Unnamed") or str(first).strip() == ""):
        return frame[first]
    raise DataError(
        f"{path}: no time column; name one of {TIME_NAMES} (any capitalisation) or put the times in the first, "
        f"unnamed column. {_columns_found(frame)}."
    )


# An offset after a time of day (a date alone, "2024-08-19", must not read as offset -19).
_OFFSET = r"\d:\d{2}(?::\d{2}(?:\.\d*)?)?\s*(?:Z|UTC|GMT|[+-]\d{2}(?::?\d{2})?)$"


def _to_utc(values: pd.Series, timezone: str, path: Path) -> tuple[pd.Series, bool]:
    """UTC times of a time column -> (times, whether none carried an offset); unreadable values become NaT.

    Offsets are read per value, so a column whose offset changes at daylight-saving time (a pandas export of
    a tz-aware index) or mixes ``Z`` and ``+02:00`` reads as written. Values without an offset are wall-clock
    times in ``timezone``; those that do not exist there or are ambiguous (DST changes) become NaT.
    """
    if isinstance(values.dtype, pd.DatetimeTZDtype):
        return values.dt.tz_convert("UTC"), False
    try:
        pd.Timestamp("2000-01-01").tz_localize(timezone)
    except Exception as exc:  # an unknown zone name
        raise DataError(f"{path}: cannot read times in timezone {timezone!r}: {exc}") from exc
    out = pd.Series(pd.NaT, index=values.index, dtype="datetime64[ns, UTC]")
    if pd.api.types.is_datetime64_dtype(values.dtype):
        local = values.dt.tz_localize(timezone, ambiguous="NaT", nonexistent="NaT")
        return local.dt.tz_convert("UTC").astype(out.dtype), True
    text = values.astype("string").str.strip()
    with_offset = text.str.contains(_OFFSET, case=False, regex=True, na=False).to_numpy()
    if with_offset.any():
        out[with_offset] = pd.to_datetime(text[with_offset], errors="coerce", format="mixed", utc=True)
    naive = ~with_offset & text.notna().to_numpy()
    if naive.any():
        local = pd.to_datetime(text[naive], errors="coerce", format="mixed")
        out[naive] = local.dt.tz_localize(timezone, ambiguous="NaT", nonexistent="NaT").dt.tz_convert("UTC")
    return out, not with_offset.any()


def read_series(
    path: Path,
    timezone: str = "UTC",
    symbol: str | None = None,
    interval: Interval | None = None,
    start_byte: int | None = None,
    first_row: int = 1,
) -> list[SourceSeries]:
    """Normalised series of one file (one per symbol in it). Values are not checked here (see validation).

    With ``start_byte`` (a CSV that grew since it was last read) only the header and the rows from that byte
    on are read; ``first_row`` is the file row number of the first of them, so findings name real rows.
    """
    return series_from_frame(_read_table(path, start_byte), path, timezone, symbol, interval, first_row)


# Columns that ``series_from_frame`` takes the symbol and the file row from when a caller has combined
# the new rows of several files into one frame (their names cannot collide with a file's own columns).
SYMBOL_COLUMN, ROW_COLUMN = "__kronos_symbol__", "__kronos_row__"


def _runs(frame: pd.DataFrame, names: np.ndarray) -> list[tuple[str, pd.DataFrame]]:
    """``frame``'s rows by ``names``, in order of first appearance. Rows of several files combined come one
    file after another: then each name's rows are one slice of the frame, not a copy gathered by groupby."""
    starts = np.flatnonzero(np.r_[True, names[1:] != names[:-1]])
    if len(starts) != len(set(names[starts])):  # a name in two places
        return [(str(s), part) for s, part in frame.groupby(names, sort=False)]
    ends = [*starts[1:], len(names)]
    return [(str(names[a]), frame.iloc[a:b]) for a, b in zip(starts, ends)]


def series_from_frame(
    frame: pd.DataFrame,
    path: Path,
    timezone: str = "UTC",
    symbol: str | None = None,
    interval: Interval | None = None,
    first_row: int = 1,
) -> list[SourceSeries]:
    """``read_series`` on a table already read from ``path``. A frame holding ``SYMBOL_COLUMN`` and
    ``ROW_COLUMN`` (rows of several files, combined) is split by the first and numbered by the second."""
    combined = SYMBOL_COLUMN in frame.columns
    if combined:
        symbols, rows = frame.pop(SYMBOL_COLUMN).astype("string"), frame.pop(ROW_COLUMN).to_numpy()
    if frame.empty:
        raise DataError(f"{path}: the file holds no rows.")
    keys = {_key(c): c for c in frame.columns}
    times = _time_column(frame, path)
    stamps, naive = _to_utc(times, timezone, path)
    out = pd.DataFrame({"ts": stamps})
    unreadable = pd.Series(np.where(stamps.isna() & times.notna(), times.astype("string"), None), index=out.index)
    notes = []
    for feature in FEATURES:
        column = next((keys[a] for a in ALIASES[feature] if a in keys), None)
        out[feature] = np.nan if column is None else pd.to_numeric(frame[column], errors="coerce")
        if column is None and feature in PRICES:
            raise DataError(
                f"{path}: no {feature!r} column (accepted names: {ALIASES[feature]}). {_columns_found(frame)}."
            )
    if not any(a in keys for a in ALIASES["volume"]):
        out["volume"], out["amount"] = 0.0, 0.0
        notes.append("no volume column: volume and amount set to 0")
    elif not any(a in keys for a in ALIASES["amount"]):
        out["amount"] = out["volume"] * out[PRICES].mean(axis=1)
        notes.append("no amount column: amount = volume x mean(open, high, low, close)")
    out["row"] = rows if combined else np.arange(first_row, first_row + len(out))
    out = out[COLUMNS]  # once for the file, not once per symbol

    symbol_column = next((keys[n] for n in SYMBOL_NAMES if n in keys), None)
    name_symbol, name_interval = symbol_and_interval_from_name(path)
    groups = [(symbol or name_symbol, out)]
    if combined:
        groups = _runs(out, symbols.to_numpy())
    elif symbol_column is not None and symbol is None:
        names = frame[symbol_column].astype("string").str.strip().fillna("")  # blank cells: symbol ""
        groups = [(str(s), part) for s, part in out.groupby(names.to_numpy(), sort=True)]

    series, any_unreadable = [], bool(unreadable.notna().any())
    for name, bars in groups:
        own_notes = list(notes)
        bad = unreadable[bars.index].dropna() if any_unreadable else ()
        if len(bad):
            # At most 5 values of at most 32 characters: enough to find the row, never a whole line of the file.
            shown = ", ".join(f"row {bars.loc[i, 'row']} ({str(value)[:32]!r})" for i, value in bad.iloc[:5].items())
            more = f" and {len(bad) - 5} more" if len(bad) > 5 else ""
            own_notes.append(f"unreadable or non-existent time(s) in {path.name}: {shown}{more}")
        bars = bars.reset_index(drop=True)
        stamps = bars["ts"].dropna()
        if len(stamps) > 1 and stamps.is_monotonic_decreasing and not stamps.is_monotonic_increasing:
            bars = bars.iloc[::-1].reset_index(drop=True)
            own_notes.append("rows were in descending time order: read in ascending order")
        chosen = interval or name_interval or infer_interval(bars["ts"].dropna())
        series.append(SourceSeries(str(name), chosen, path, bars, own_notes, naive))
    return series
