"""Calendar answers shared by the symbols of one forecast task.

Future bar times and freshness depend on the exchange, the interval and the symbol's recent bar times
only (``calendars.RECENT_BARS`` of them); symbols that share those get the same answer, computed once.
"""

from __future__ import annotations

import hashlib

import pandas as pd

from .calendars import RECENT_BARS, future_timestamps
from .freshness import check_fresh
from .schema import Interval
from .watchlist import WatchItem


def _key(*parts, history: pd.Series) -> tuple:
    recent = history.array[-RECENT_BARS:].as_unit("ns").asi8
    return (*parts, hashlib.sha1(recent.tobytes()).hexdigest())


class CalendarCache:
    """``check_fresh`` and ``future_timestamps`` remembered per exchange, interval and recent bar times."""

    def __init__(self, max_staleness: int | None, pred_len: int):
        self.max_staleness, self.pred_len = max_staleness, pred_len
        self._fresh: dict[tuple, Exception | int] = {}
        self._future: dict[tuple, pd.DatetimeIndex] = {}

    def check_fresh(self, item: WatchItem, history: pd.Series, at: pd.Timestamp) -> int:
        """As ``freshness.check_fresh`` (StaleData naming this symbol when it is stale)."""
        if history.empty:
            return check_fresh(
                item.symbol, history, at, Interval.parse(item.interval), item.exchange, self.max_staleness
            )
        key = _key(item.exchange, item.interval, at, history=history)
        if key not in self._fresh:
            try:
                self._fresh[key] = check_fresh(
                    "{symbol}", history, at, Interval.parse(item.interval), item.exchange, self.max_staleness
                )
            except Exception as exc:  # StaleData, DataError: the same for every symbol with these bar times
                self._fresh[key] = exc
        found = self._fresh[key]
        if isinstance(found, Exception):
            raise type(found)(str(found).replace("{symbol}", item.symbol))
        return found

    def future(
        self, last: pd.Timestamp, pred_len: int, interval: Interval, exchange: str, history: pd.Series | None = None
    ) -> pd.DatetimeIndex:
        """As ``calendars.future_timestamps``."""
        if history is None or history.empty:
            return future_timestamps(last, pred_len, interval, exchange, history)
        key = _key(exchange, str(interval), pd.Timestamp(last), pred_len, history=history)
        if key not in self._future:
            self._future[key] = future_timestamps(last, pred_len, interval, exchange, history)
        return self._future[key]
