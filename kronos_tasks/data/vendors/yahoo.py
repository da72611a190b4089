"""Yahoo Finance through yfinance: equities, ETFs, indices and FX, daily and intraday bars.

Prices are as traded (``auto_adjust=False``: splits and dividends are not folded in), without pre- and
post-market bars. Yahoo labels bars by their start and serves intraday history for a limited time back
(1-minute bars: 30 days, in requests of 7; up to 30 minutes: 60 days; hourly: 730 days).
"""

from __future__ import annotations

import pandas as pd

from ..schema import DataError, Interval
from . import TransientError, Vendor

INTERVALS = {"1min": "1m", "2min": "2m", "5min": "5m", "15min": "15m", "30min": "30m", "90min": "90m", "1h": "1h"}
# (longest request, oldest bar served) per Yahoo interval; daily bars have no limit.
LIMITS = {
    "1m": (pd.Timedelta(days=7), pd.Timedelta(days=29)),
    "2m": (pd.Timedelta(days=59), pd.Timedelta(days=59)),
    "5m": (pd.Timedelta(days=59), pd.Timedelta(days=59)),
    "15m": (pd.Timedelta(days=59), pd.Timedelta(days=59)),
    "30m": (pd.Timedelta(days=59), pd.Timedelta(days=59)),
    "90m": (pd.Timedelta(days=59), pd.Timedelta(days=59)),
    "1h": (pd.Timedelta(days=729), pd.Timedelta(days=729)),
}


def yahoo_interval(interval: Interval) -> str:
    if interval.daily:
        return "1d"
    try:
        return INTERVALS[str(interval)]
    except KeyError:
        raise DataError(f"yfinance has no {interval} bars; use one of 1d, {', '.join(INTERVALS)}.") from None


class Yahoo(Vendor):
    name = "yfinance"
    end_labelled = False
    pause_seconds = 0.5

    def max_span(self, interval: Interval) -> pd.Timedelta | None:
        return None if interval.daily else LIMITS[yahoo_interval(interval)][0]

    def earliest(self, interval: Interval, until: pd.Timestamp) -> pd.Timestamp | None:
        if interval.daily:
            return None
        return pd.Timestamp.now("UTC").floor("min") - LIMITS[yahoo_interval(interval)][1]

    def request(self, ticker: str, interval: Interval, start: pd.Timestamp, end: pd.Timestamp) -> pd.DataFrame:
        import yfinance as yf
        from yfinance.exceptions import YFRateLimitError

        try:
            frame = yf.Ticker(ticker).history(
                start=start.to_pydatetime(),
                end=end.to_pydatetime(),
                interval=yahoo_interval(interval),
                auto_adjust=False,
                actions=False,
                repair=False,
                prepost=False,
                raise_errors=True,
            )
        except YFRateLimitError as exc:
            raise TransientError(str(exc)) from None
        except Exception as exc:
            if _is_network_error(exc):
                raise TransientError(f"{type(exc).__name__}: {exc}") from None
            raise
        index = pd.DatetimeIndex(frame.index)
        return pd.DataFrame(
            {
                "ts": index.tz_convert("UTC") if index.tz is not None else index.tz_localize("UTC"),
                "open": frame["Open"].to_numpy(),
                "high": frame["High"].to_numpy(),
                "low": frame["Low"].to_numpy(),
                "close": frame["Close"].to_numpy(),
                "volume": frame["Volume"].to_numpy(),
            }
        )


def _is_network_error(exc: Exception) -> bool:
    """curl_cffi's and requests' connection and time-out errors (yfinance's transports)."""
    names = {cls.__name__ for cls in type(exc).__mro__}
    return bool(names & {"ConnectionError", "Timeout", "ReadTimeout", "ConnectTimeout", "CurlError", "TimeoutError"})
