"""The watchlist: which symbols a run forecasts, at which interval, on which exchange, from which file."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import yaml

from kronos_tasks.errors import ParamsError

from .calendars import exchange_timezone
from .schema import SYMBOL_MAX, DataError, Interval

KEYS = ("symbol", "exchange", "interval", "source", "ticker", "file")
VENDOR_SOURCES = ("yfinance", "akshare")  # and ccxt:<exchange id>
# libyaml's safe loader where PyYAML was built with it: the same documents, 7x faster for a 1,000-entry list
SAFE_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def check_source(source: str, where: str) -> str:
    """``files``, ``yfinance``, ``akshare`` or ``ccxt:<exchange id>``; ParamsError naming ``where`` otherwise."""
    name, _, detail = source.partition(":")
    if source in ("files", *VENDOR_SOURCES) or (name == "ccxt" and detail.isidentifier()):
        return source
    raise ParamsError(
        f"{where}: unknown source {source!r}; use files (the default), yfinance, akshare or ccxt:<exchange> "
        "(for example ccxt:binance)."
    )


@dataclass(frozen=True)
class WatchItem:
    """One watchlist entry: a symbol at an interval on an exchange, and where its bars come from.

    ``source`` is ``files`` (a CSV/Parquet file in KRONOS_DATA_DIR, ``file`` or found by name) or a vendor
    that is asked for new bars (``yfinance``, ``akshare``, ``ccxt:<exchange>``), under ``ticker`` when the
    vendor names the symbol differently. ``timezone`` is the exchange's, filled in when the entry is read.
    """

    symbol: str
    exchange: str
    interval: str
    file: str | None = None
    timezone: str = ""
    source: str = "files"
    ticker: str | None = None

    @property
    def vendor_symbol(self) -> str:
        return self.ticker or self.symbol

    @classmethod
    def from_dict(cls, values: dict[str, Any], where: str) -> WatchItem:
        """An entry as a user wrote it (symbol, exchange, interval[, file]); ``where`` names it in errors."""
        missing = [k for k in KEYS[:3] if not values.get(k)]
        if missing:
            raise ParamsError(f"{where}: missing {missing}; each entry needs symbol, exchange and interval.")
        unknown = sorted(set(values) - set(KEYS))
        if unknown:
            raise ParamsError(f"{where}: unknown key(s) {unknown}; allowed: {', '.join(KEYS)}.")
        symbol = str(values["symbol"]).strip()
        if len(symbol) > SYMBOL_MAX:
            raise ParamsError(f"{where}: symbol {symbol[:20]!r}... is {len(symbol)} characters; at most {SYMBOL_MAX}.")
        source = check_source(str(values.get("source") or "files"), f"{where} ({symbol})")
        if values.get("file") and source != "files":
            raise ParamsError(f"{where} ({symbol}): `file` is for source files, not {source}; drop one of them.")
        try:
            interval = str(Interval.parse(values["interval"]))
            zone = exchange_timezone(values["exchange"])
        except DataError as exc:
            raise ParamsError(f"{where} ({symbol}): {exc}") from None
        ticker = str(values["ticker"]) if values.get("ticker") else None
        return cls(symbol, str(values["exchange"]).upper(), interval, values.get("file"), zone, source, ticker)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def parse_watchlist(raw: Any, where: str = "watchlist") -> list[WatchItem]:
    """Entries from a list of dicts, a {"symbols": [...]} mapping, or YAML/JSON text of either."""
    if isinstance(raw, str):
        try:
            raw = yaml.load(raw, Loader=SAFE_LOADER)
        except yaml.YAMLError as exc:
            raise ParamsError(f"{where}: not valid YAML or JSON: {exc}") from None
    if isinstance(raw, dict):
        raw = raw.get("symbols")
    if not isinstance(raw, list) or not raw:
        raise ParamsError(
            f"{where}: expected a non-empty list of entries (symbol, exchange, interval[, source, ticker, file])."
        )
    items = [
        WatchItem.from_dict(entry if isinstance(entry, dict) else {}, f"{where} entry {i + 1}")
        for i, entry in enumerate(raw)
    ]
    seen: set[tuple[str, str]] = set()
    for item in items:
        if (item.symbol, item.interval) in seen:
            raise ParamsError(f"{where}: {item.symbol} at {item.interval} is listed twice.")
        seen.add((item.symbol, item.interval))
    return items


def load_watchlist(path: Path) -> list[WatchItem]:
    """The entries of a YAML or JSON watchlist file."""
    if not path.is_file():
        raise ParamsError(f"watchlist file {path} does not exist; set KRONOS_WATCHLIST or pass a watchlist param.")
    return parse_watchlist(path.read_text(), str(path))
