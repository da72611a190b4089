"""Timestamps of future bars from exchange calendars (the ``exchange_calendars`` library).

Sessions, holidays and lunch breaks come from the library; nothing is hand-written here. Intraday
bars can be labelled by their end (A-share convention: 09:35 ... 11:30, 13:05 ... 15:00) or their
start (09:30 ... 15:55 on the NYSE); the label is inferred from the history. Exchange "24/7" (alias
"CRYPTO") trades continuously.
"""

from __future__ import annotations

import math
from functools import lru_cache

import exchange_calendars as xcals
import pandas as pd

from .schema import DataError, Interval

CONTINUOUS = {"24/7", "CRYPTO"}


def _calendar_name(exchange: str) -> str:
    name = exchange.strip().upper()
    if name in CONTINUOUS:
        return "24/7"
    try:
        return xcals.resolve_alias(name)
    except Exception:
        pass
    if name not in xcals.get_calendar_names(include_aliases=True):
        raise DataError(
            f"unknown exchange {exchange!r}: use an exchange_calendars code such as XNYS, XNAS, XSHG, XSHE, XHKG, "
            f"XLON or 24/7 (for crypto); see exchange_calendars.get_calendar_names()."
        )
    return name


def exchange_timezone(exchange: str) -> str:
    """The IANA timezone of ``exchange`` (UTC for 24/7)."""
    name = _calendar_name(exchange)
    if name == "24/7":
        return "UTC"
    return str(xcals.get_calendar(name).tz)


@lru_cache(maxsize=64)
def _calendar(name: str, start: pd.Timestamp, end: pd.Timestamp):
    return xcals.get_calendar(name, start=start, end=end)


def _segments(calendar, session: pd.Timestamp) -> list[tuple[pd.Timestamp, pd.Timestamp]]:
    """The trading periods of a session in UTC: [(open, break start), (break end, close)] or [(open, close)]."""
    opened, closed = calendar.session_open(session), calendar.session_close(session)
    if calendar.session_has_break(session):
        return [(opened, calendar.session_break_start(session)), (calendar.session_break_end(session), closed)]
    return [(opened, closed)]


def _labels(start: pd.Timestamp, end: pd.Timestamp, step: pd.Timedelta, end_labelled: bool) -> list[pd.Timestamp]:
    count = int((end - start) / step)
    offsets = range(1, count + 1) if end_labelled else range(0, count)
    return [start + k * step for k in offsets]


RECENT_BARS = 500  # history bars looked at to infer the labelling


def _end_labelled(calendar, history: pd.Series | None) -> bool:
    """True when bars carry their end time: some bar sits on a period end, or none on a period start."""
    if history is None or history.empty:
        return True
    recent = pd.DatetimeIndex(history.iloc[-RECENT_BARS:])
    sessions = calendar.sessions_in_range(
        recent[0].tz_convert(calendar.tz).normalize().tz_localize(None),
        recent[-1].tz_convert(calendar.tz).normalize().tz_localize(None),
    )
    starts, ends = set(), set()
    for session in sessions:
        for opened, closed in _segments(calendar, session):
            starts.add(opened)
            ends.add(closed)
    stamps = set(recent)
    if stamps & ends:
        return True
    return not (stamps & starts)


def future_timestamps(
    last: pd.Timestamp, pred_len: int, interval: Interval, exchange: str, history: pd.Series | None = None
) -> pd.DatetimeIndex:
    """The ``pred_len`` bar timestamps (UTC) after ``last`` on ``exchange``'s calendar.

    ``history`` (UTC timestamps of past bars) tells daily bars' time of day and intraday bars' labelling.
    """
    last = pd.Timestamp(last)
    last = last.tz_localize("UTC") if last.tzinfo is None else last.tz_convert("UTC")
    name = _calendar_name(exchange)
    if name == "24/7":
        step = pd.Timedelta(days=1) if interval.daily else interval.timedelta
        return pd.DatetimeIndex([last + k * step for k in range(1, pred_len + 1)])

    zone = str(xcals.get_calendar(name).tz)
    local_last = last.tz_convert(zone)
    first_day = local_last.normalize().tz_localize(None)
    earliest = first_day
    if history is not None and not history.empty:
        earliest = min(
            first_day, pd.Timestamp(history.iloc[-RECENT_BARS:].iloc[0]).tz_convert(zone).normalize().tz_localize(None)
        )
    if interval.daily:
        days = pred_len * 2 + 30
    else:
        days = math.ceil(pred_len * interval.timedelta / pd.Timedelta(hours=4)) * 2 + 30
    calendar = _calendar(name, earliest - pd.Timedelta(days=10), first_day + pd.Timedelta(days=days))
    sessions = calendar.sessions_in_range(first_day, calendar.last_session)

    if interval.daily:
        time_of_day = local_last - local_last.normalize()
        out = []
        for session in sessions:
            stamp = (session + time_of_day).tz_localize(zone).tz_convert("UTC")
            if stamp > last:
                out.append(stamp)
            if len(out) == pred_len:
                return pd.DatetimeIndex(out)
    else:
        step = interval.timedelta
        end_labelled = _end_labelled(calendar, history)
        out = []
        for session in sessions:
            for opened, closed in _segments(calendar, session):
                out += [t for t in _labels(opened, closed, step, end_labelled) if t > last]
            if len(out) >= pred_len:
                return pd.DatetimeIndex(out[:pred_len]).tz_convert("UTC")
    raise DataError(f"the {name} calendar has too few sessions after {last} for {pred_len} bars.")
