"""The watchlist: which symbols a run forecasts, at which interval, on which exchange, from which file."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import yaml

from kronos_tasks.errors import ParamsError

from .calendars import exchange_timezone
from .schema import DataError, Interval

KEYS = ("symbol", "exchange", "interval", "file")


@dataclass(frozen=True)
class WatchItem:
    """One watchlist entry: a symbol at an interval on an exchange, and (optionally) its source file.

    ``timezone`` is the exchange's, filled in when the entry is read.
    """

    symbol: str
    exchange: str
    interval: str
    file: str | None = None
    timezone: str = ""

    @classmethod
    def from_dict(cls, values: dict[str, Any], where: str) -> WatchItem:
        """An entry as a user wrote it (symbol, exchange, interval[, file]); ``where`` names it in errors."""
        missing = [k for k in KEYS[:3] if not values.get(k)]
        if missing:
            raise ParamsError(f"{where}: missing {missing}; each entry needs symbol, exchange and interval.")
        unknown = sorted(set(values) - set(KEYS))
        if unknown:
            raise ParamsError(f"{where}: unknown key(s) {unknown}; allowed: {', '.join(KEYS)}.")
        try:
            interval = str(Interval.parse(values["interval"]))
            zone = exchange_timezone(values["exchange"])
        except DataError as exc:
            raise ParamsError(f"{where} ({values['symbol']}): {exc}") from None
        return cls(str(values["symbol"]), str(values["exchange"]).upper(), interval, values.get("file"), zone)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def parse_watchlist(raw: Any, where: str = "watchlist") -> list[WatchItem]:
    """Entries from a list of dicts, a {"symbols": [...]} mapping, or YAML/JSON text of either."""
    if isinstance(raw, str):
        try:
            raw = yaml.safe_load(raw)
        except yaml.YAMLError as exc:
            raise ParamsError(f"{where}: not valid YAML or JSON: {exc}") from None
    if isinstance(raw, dict):
        raw = raw.get("symbols")
    if not isinstance(raw, list) or not raw:
        raise ParamsError(f"{where}: expected a non-empty list of entries (symbol, exchange, interval[, file]).")
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
