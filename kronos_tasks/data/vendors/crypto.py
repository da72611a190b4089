"""Crypto exchanges through ccxt (``source: ccxt:binance``, ``ccxt:kraken``, ...): 24/7 bars of any market ccxt lists.

OHLCV candles are public on every exchange ccxt supports; where an exchange wants credentials anyway
they come from the Airflow connection ``kronos_ccxt_<exchange>`` (login = API key, password = secret,
extra ``{"password": ...}`` for a passphrase) or from ``KRONOS_CCXT_<EXCHANGE>_API_KEY`` / ``_SECRET`` /
``_PASSWORD``, never from the watchlist. ccxt keeps to the exchange's rate limit itself.
"""

from __future__ import annotations

import functools
import json
import os
import sys

import pandas as pd

from ..schema import DataError, Interval
from . import TransientError, Vendor

PAGE_CANDLES = 1000


def credentials(exchange_id: str) -> dict[str, str]:
    """ccxt's apiKey/secret/password for ``exchange_id``: the Airflow connection, else the environment."""
    conn_id = f"kronos_ccxt_{exchange_id}"
    if "airflow.sdk" in sys.modules:  # inside an Airflow task: connections come from Airflow's backends
        try:
            from airflow.sdk import Connection

            connection = Connection.get(conn_id)
        except Exception:  # no such connection (or no task context): fall back to the environment
            connection = None
        if connection is not None:
            extra = json.loads(connection.extra or "{}") if isinstance(connection.extra, str) else {}
            found = {"apiKey": connection.login, "secret": connection.password, "password": extra.get("password")}
            return {k: v for k, v in found.items() if v}
    prefix = f"KRONOS_CCXT_{exchange_id.upper()}_"
    found = {key: os.environ.get(prefix + env) for key, env in (("apiKey", "API_KEY"), ("secret", "SECRET"))}
    found["password"] = os.environ.get(prefix + "PASSWORD")
    return {k: v for k, v in found.items() if v}


@functools.lru_cache(maxsize=16)
def _exchange(exchange_id: str):
    """One ccxt client per exchange and process (its markets are loaded once)."""
    import ccxt

    if exchange_id not in ccxt.exchanges:
        raise DataError(f"ccxt has no exchange {exchange_id!r}; see ccxt.exchanges (binance, kraken, coinbase, ...).")
    return getattr(ccxt, exchange_id)({"enableRateLimit": True, **credentials(exchange_id)})


UNITS = {"min": "m", "h": "h", "d": "d"}


def timeframe(interval: Interval) -> str:
    """ccxt's name of an interval: 1m, 5m, 1h, 1d, ..."""
    return f"{interval.count}{UNITS[interval.unit]}"


class CcxtExchange(Vendor):
    end_labelled = False  # candles carry their open time

    def __init__(self, exchange_id: str):
        self.exchange_id = exchange_id.lower()
        self.name = f"ccxt:{self.exchange_id}"

    def request(self, ticker: str, interval: Interval, start: pd.Timestamp, end: pd.Timestamp) -> pd.DataFrame:
        import ccxt

        exchange = _exchange(self.exchange_id)
        frame = timeframe(interval)
        if frame not in (exchange.timeframes or {}):
            raise DataError(f"{self.name} has no {frame} candles; it has {sorted(exchange.timeframes or {})}.")
        step_ms = int(interval.timedelta / pd.Timedelta(milliseconds=1))
        since, end_ms = int(start.timestamp() * 1000), int(end.timestamp() * 1000)
        rows: list[list] = []
        try:
            while since < end_ms:
                page = exchange.fetch_ohlcv(
                    ticker, frame, since=since, limit=PAGE_CANDLES, params={"until": end_ms - 1}
                )
                page = [row for row in page if since <= row[0] < end_ms]
                if not page:
                    break
                rows += page
                since = page[-1][0] + step_ms
        except (ccxt.RateLimitExceeded, ccxt.DDoSProtection, ccxt.RequestTimeout, ccxt.NetworkError) as exc:
            raise TransientError(f"{type(exc).__name__}: {exc}") from None
        frame_out = pd.DataFrame(rows, columns=["ms", "open", "high", "low", "close", "volume"])
        frame_out.insert(0, "ts", pd.to_datetime(frame_out.pop("ms"), unit="ms", utc=True))
        return frame_out
