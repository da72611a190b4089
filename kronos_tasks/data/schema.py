"""The one bar schema kronos-flow stores, and bar intervals."""

from __future__ import annotations

import re
from dataclasses import dataclass

import pandas as pd

from kronos_tasks.errors import KronosFlowError

FEATURES = ["open", "high", "low", "close", "volume", "amount"]
PRICES = ["open", "high", "low", "close"]
# Canonical bar frame: a UTC "ts" column, the six features as float64, and "row", the 1-based data row
# of each bar in its source file (for error messages).
COLUMNS = ["ts", *FEATURES, "row"]
SYMBOL_MAX = 64  # characters: the width of the symbol columns of the forecasts database

_UNITS = {
    "min": "min",
    "m": "min",
    "minute": "min",
    "minutes": "min",
    "mins": "min",
    "t": "min",
    "h": "h",
    "hr": "h",
    "hour": "h",
    "hours": "h",
    "d": "d",
    "day": "d",
    "days": "d",
}
_INTERVAL = re.compile(r"^\s*(\d+)\s*([a-zA-Z]+)\s*$")


class DataError(KronosFlowError, ValueError):
    """Input data that cannot be read or used; the message names the file, symbol or row and what to do."""


@dataclass(frozen=True)
class Interval:
    """A bar interval: a number of minutes or hours within sessions, or one trading day per bar ("1d")."""

    count: int
    unit: str  # "min", "h" or "d"

    @classmethod
    def parse(cls, text: str) -> Interval:
        match = _INTERVAL.match(str(text))
        unit = _UNITS.get(match.group(2).lower()) if match else None
        if not match or unit is None or int(match.group(1)) < 1:
            raise DataError(f"interval {text!r} is not understood; use minutes (5min, 15m), hours (1h) or days (1d).")
        count = int(match.group(1))
        if unit == "d" and count != 1:
            raise DataError(f"interval {text!r}: only daily bars (1d) are supported above intraday intervals.")
        if unit == "h" and count * 60 >= 24 * 60 or unit == "min" and count >= 24 * 60:
            raise DataError(f"interval {text!r} is a day or longer; use 1d.")
        if unit == "min" and count % 60 == 0:
            count, unit = count // 60, "h"  # one spelling per interval: 60min is 1h
        return cls(count, unit)

    @property
    def daily(self) -> bool:
        return self.unit == "d"

    @property
    def timedelta(self) -> pd.Timedelta:
        return pd.Timedelta(self.count, unit={"min": "min", "h": "h", "d": "D"}[self.unit])

    def __str__(self) -> str:
        return f"{self.count}{self.unit}"


def infer_interval(ts: pd.Series) -> Interval:
    """The interval of bars from their timestamps: the most common gap within a day, or 1d."""
    stamps = pd.Series(ts).sort_values()
    gaps = stamps.diff().dropna()
    intraday = gaps[(gaps > pd.Timedelta(0)) & (gaps < pd.Timedelta(hours=12))]
    if len(intraday) >= max(1, len(gaps) // 4):
        minutes = int(round(intraday.mode().iloc[0] / pd.Timedelta(minutes=1)))
        if minutes >= 1:
            return Interval(minutes // 60, "h") if minutes % 60 == 0 else Interval(minutes, "min")
    return Interval(1, "d")
