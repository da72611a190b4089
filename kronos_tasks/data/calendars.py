"""Timestamps of future bars from exchange calendars (the ``exchange_calendars`` library).

Sessions, holidays and lunch breaks come from the library; nothing is hand-written here. Intraday
bars can be labelled by their end (A-share convention: 09:35 ... 11:30, 13:05 ... 15:00) or their
start (09:30 ... 15:55 on the NYSE); the label is inferred from the history. Exchange "24/7" (alias
"CRYPTO") trades continuously.
"""

from __future__ import annotations

import math
from functools import cache, lru_cache

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
    return _zone(name)


def _calendar_class(name: str) -> type:
    found = _built_class(name)
    if isinstance(found, str):
        raise DataError(found)
    return found


@cache
def _built_class(name: str) -> type | str:
    """The calendar class of ``name``, or why the library cannot build it (remembered: a failed build costs as
    much as a good one, and every symbol on that exchange would repeat it)."""
    # The library keeps one calendar per name and replaces it whenever one over other dates is asked for, and
    # building one costs 0.1-0.3 s: calendars over given dates are made from the class, so its default
    # calendar (made here, once) stays cached.
    try:
        return type(xcals.get_calendar(name))
    except Exception as exc:  # the library's own defect for this exchange, whatever its type
        cause = " ".join(f"{type(exc).__name__}: {exc}".split())
        cause = cause if len(cause) <= 160 else cause[:160] + "..."
        return (
            f"exchange_calendars {xcals.__version__} cannot build the {name} calendar ({cause}); symbols on {name} "
            "cannot be ingested or forecast with it: list them with another exchange code that has the same "
            "sessions, or upgrade exchange_calendars."
        )


def _zone(name: str) -> str:
    return str(_calendar_class(name).tz)


def _calendar(name: str, start: pd.Timestamp, end: pd.Timestamp):
    """A calendar covering [start, end]: the whole calendar years around them, so that the nearby ranges the
    symbols of a task ask for share one (cut to the years the library has holidays for)."""
    return _years_calendar(name, start.year, end.year)


@lru_cache(maxsize=64)
def _years_calendar(name: str, first_year: int, last_year: int):
    start, end = pd.Timestamp(first_year, 1, 1), pd.Timestamp(last_year, 12, 31)
    kind = _calendar_class(name)
    lowest, highest = kind.bound_min(), kind.bound_max()  # None where the calendar has no bound
    if lowest is not None:
        start = max(start, lowest)
    if highest is not None:
        end = min(end, highest)
    return kind(start=start, end=end)


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

    zone = _zone(name)
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


def closed_bars(
    at: pd.Timestamp, count: int, interval: Interval, exchange: str, history: pd.Series
) -> pd.DatetimeIndex:
    """Labels (UTC) of the last ``count`` bars of ``exchange``'s calendar that have closed by ``at``.

    ``history`` (UTC times of the symbol's stored bars, oldest first, not empty) tells daily bars' time of
    day and intraday bars' labelling; on a 24/7 market the bars continue its last bar's grid.
    """
    at = pd.Timestamp(at).tz_convert("UTC")
    last = pd.Timestamp(history.iloc[-1]).tz_convert("UTC")
    name = _calendar_name(exchange)
    if name == "24/7":
        step = pd.Timedelta(days=1) if interval.daily else interval.timedelta
        newest = last + math.floor((at - last - step) / step) * step  # the newest bar whose end is <= at
        return pd.DatetimeIndex([newest - k * step for k in range(count - 1, -1, -1)])
    zone = _zone(name)
    span = count if interval.daily else math.ceil(count * interval.timedelta / pd.Timedelta(hours=4))
    first_day = (at.tz_convert(zone) - pd.Timedelta(days=span * 2 + 10)).normalize().tz_localize(None)
    last_day = at.tz_convert(zone).normalize().tz_localize(None)
    earliest = min(
        first_day, pd.Timestamp(history.iloc[-RECENT_BARS:].iloc[0]).tz_convert(zone).normalize().tz_localize(None)
    )
    calendar = _calendar(name, earliest - pd.Timedelta(days=10), last_day + pd.Timedelta(days=10))
    sessions = calendar.sessions_in_range(max(first_day, calendar.first_session), last_day)
    labels = []
    if interval.daily:
        local_last = last.tz_convert(zone)
        time_of_day = local_last - local_last.normalize()
        for session in sessions:
            if calendar.session_close(session) <= at:
                labels.append((session + time_of_day).tz_localize(zone).tz_convert("UTC"))
    else:
        step = interval.timedelta
        end_labelled = _end_labelled(calendar, history)
        for session in sessions:
            for opened, closed in _segments(calendar, session):
                for label in _labels(opened, closed, step, end_labelled):
                    if (label if end_labelled else label + step) <= at:
                        labels.append(label.tz_convert("UTC"))
    return pd.DatetimeIndex(labels[-count:])


def bar_closes(labels: pd.Series, interval: Interval, exchange: str, end_labelled: bool) -> pd.Series:
    """When each bar (UTC label) has closed: a daily bar at its session's close (the next midnight on a
    24/7 market or a non-session day), an intraday bar at its label or one interval after it."""
    labels = pd.Series(pd.DatetimeIndex(labels).tz_convert("UTC"), index=getattr(labels, "index", None))
    if not interval.daily:
        return labels if end_labelled else labels + interval.timedelta
    name = _calendar_name(exchange)
    if name == "24/7" or labels.empty:
        return labels + pd.Timedelta(days=1)
    zone = _zone(name)
    days = labels.dt.tz_convert(zone).dt.normalize().dt.tz_localize(None)
    calendar = _calendar(name, days.min() - pd.Timedelta(days=10), days.max() + pd.Timedelta(days=10))
    closes = calendar.closes  # session -> close (UTC)
    next_midnight = (days + pd.Timedelta(days=1)).dt.tz_localize(zone).dt.tz_convert("UTC")
    return pd.Series(
        [closes.get(day, fallback) for day, fallback in zip(days, next_midnight)], index=labels.index
    ).astype("datetime64[ns, UTC]")
