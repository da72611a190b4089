"""Freshness: whether a symbol's newest stored bar is as recent as its exchange calendar says it should be."""

from __future__ import annotations

import math

import pandas as pd

from .calendars import closed_bars
from .schema import DataError, Interval

# Intraday default: a working day of bars may be missing (a late vendor, a lost connection) before a
# symbol counts as stale.
INTRADAY_ALLOWANCE = pd.Timedelta(hours=8)
DAILY_ALLOWANCE = 2  # sessions


class StaleData(DataError):
    """A symbol's newest bar is older than its calendar and ``max_staleness`` allow."""


def default_max_staleness(interval: Interval) -> int:
    """Bars that may be missing before a symbol is stale: 2 sessions of daily bars, 8 hours of intraday ones."""
    if interval.daily:
        return DAILY_ALLOWANCE
    return max(1, math.ceil(INTRADAY_ALLOWANCE / interval.timedelta))


def check_fresh(
    symbol: str, history: pd.Series, at: pd.Timestamp, interval: Interval, exchange: str, max_staleness: int | None
) -> int:
    """How many bars that should exist at ``at`` are missing after the newest of ``history`` (UTC times of the
    stored bars, oldest first); StaleData naming both times when more than ``max_staleness`` are missing
    (default: ``default_max_staleness``)."""
    limit = default_max_staleness(interval) if max_staleness is None else max_staleness
    if history.empty:
        raise StaleData(f"{symbol}: no bars stored before {at}.")
    last = pd.Timestamp(history.iloc[-1])
    # Bars before the newest stored one never count, so the calendar is read from there at most.
    span = (pd.Timestamp(at) - last) / (pd.Timedelta(days=1) if interval.daily else interval.timedelta)
    if span <= 0:
        return 0
    expected = closed_bars(at, min(limit + 1, math.ceil(span) + 1), interval, exchange, history)
    missing = int((expected > last).sum())
    if missing > limit:
        # expected holds limit + 1 bars: when the oldest is still newer than `last`, even more are missing
        count = f"{missing}" if expected[0] <= last else f"at least {missing}"
        raise StaleData(
            f"{symbol}: stale: its newest bar is {last}, but by {at} the {exchange} calendar has bars up to "
            f"{expected[-1]} ({count} {interval} bar(s) missing, max_staleness {limit}); fetch or ingest newer "
            "bars, or raise max_staleness."
        )
    return missing


def bars_behind(history: pd.Series, at: pd.Timestamp, interval: Interval, exchange: str) -> int:
    """How many bars of the calendar have closed after the newest of ``history`` and by ``at`` (exactly)."""
    last = pd.Timestamp(history.iloc[-1])
    span = (pd.Timestamp(at) - last) / (pd.Timedelta(days=1) if interval.daily else interval.timedelta)
    if span <= 0:
        return 0
    expected = closed_bars(at, math.ceil(span) + 1, interval, exchange, history)
    return int((expected > last).sum())
