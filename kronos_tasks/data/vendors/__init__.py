"""Market-data vendors that fetch bars themselves: yfinance, ccxt exchanges and akshare.

A watchlist entry names its source (``source: yfinance``, ``source: ccxt:binance``, ``source: akshare``;
``files`` is the default). ``fetch_bars`` asks the vendor for one range at a time (each vendor says how
long a range one request may span), waits between requests, retries transient errors with back-off,
keeps only bars that have closed by the time asked for and turns any vendor error into a ``VendorError``
that names the symbol and carries the vendor's own message. Each vendor's library is an optional extra
(``pip install kronos-flow[yfinance]`` and so on), imported only when its source is used.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import numpy as np
import pandas as pd

from ..calendars import bar_closes
from ..schema import COLUMNS, FEATURES, PRICES, DataError, Interval

log = logging.getLogger(__name__)

SOURCES = ("files", "yfinance", "ccxt:<exchange>", "akshare")
RETRIES = 4  # attempts of one request before its transient error counts as the symbol's failure
BACKOFF_SECONDS = 2.0  # first wait after a transient error, doubled after each further one


class VendorError(DataError):
    """A vendor could not deliver a symbol's bars; the message names the symbol and quotes the vendor."""


class TransientError(Exception):
    """A vendor error worth retrying (rate limit, time-out, lost connection); raised by the adapters."""


class Vendor:
    """What an adapter provides: a name, its bars' labelling, the span one request may cover and the request."""

    name: str = ""
    end_labelled: bool = False  # intraday bars labelled by their end (A-share data) or by their start
    pause_seconds: float = 0.0  # wait between two requests (the vendor's rate limit)

    def max_span(self, interval: Interval) -> pd.Timedelta | None:
        """The longest range one request may ask for (None: any)."""
        return None

    def earliest(self, interval: Interval, until: pd.Timestamp) -> pd.Timestamp | None:
        """The oldest time this vendor serves at ``interval`` (None: no limit)."""
        return None

    def request(self, ticker: str, interval: Interval, start: pd.Timestamp, end: pd.Timestamp) -> pd.DataFrame:
        """Bars labelled in [start, end) from the vendor; raise TransientError for errors worth retrying."""
        raise NotImplementedError


def vendor_for(source: str) -> Vendor:
    """The adapter of a watchlist ``source`` (``yfinance``, ``ccxt:<exchange id>``, ``akshare``)."""
    name, _, detail = source.partition(":")
    if name == "yfinance" and not detail:
        from .yahoo import Yahoo

        return Yahoo()
    if name == "ccxt" and detail:
        from .crypto import CcxtExchange

        return CcxtExchange(detail)
    if name == "akshare" and not detail:
        from .ashare import Akshare

        return Akshare()
    raise DataError(f"unknown source {source!r}; sources: {', '.join(SOURCES)}.")


def _with_retries(call: Callable[[], pd.DataFrame], what: str, sleep: Callable[[float], None]) -> pd.DataFrame:
    wait = BACKOFF_SECONDS
    for attempt in range(1, RETRIES + 1):
        try:
            return call()
        except TransientError as exc:
            if attempt == RETRIES:
                raise VendorError(f"{what}: gave up after {RETRIES} attempts: {exc}") from None
            log.warning("%s: %s; retrying in %.0f s (attempt %d of %d)", what, exc, wait, attempt, RETRIES)
            sleep(wait)
            wait *= 2
    raise AssertionError("unreachable")


def fetch_bars(
    vendor: Vendor,
    symbol: str,
    ticker: str,
    interval: Interval,
    exchange: str,
    since: pd.Timestamp,
    until: pd.Timestamp,
    sleep: Callable[[float], None] = time.sleep,
) -> pd.DataFrame:
    """The bars of ``ticker`` labelled from ``since`` that have closed by ``until``, in the schema of
    ``schema.COLUMNS`` (``row`` numbers the fetched bars from 1), oldest first.

    The range is asked for in pages of the vendor's ``max_span``; a missing ``amount`` is volume times the
    mean of the four prices, as for files. Errors of the vendor become a ``VendorError`` for ``symbol``.
    """
    since, until = pd.Timestamp(since).tz_convert("UTC"), pd.Timestamp(until).tz_convert("UTC")
    earliest = vendor.earliest(interval, until)
    if earliest is not None and since < earliest:
        log.info("%s: %s serves %s bars from %s only; fetching from there", symbol, vendor.name, interval, earliest)
        since = earliest
    span = vendor.max_span(interval)
    pages, start, first = [], since, True
    while start < until:
        end = until if span is None else min(until, start + span)
        if not first and vendor.pause_seconds:
            sleep(vendor.pause_seconds)
        what = f"{symbol}: {vendor.name} ({ticker}, {interval}, {start} to {end})"
        try:
            pages.append(_with_retries(lambda s=start, e=end: vendor.request(ticker, interval, s, e), what, sleep))
        except VendorError:
            raise
        except Exception as exc:  # the vendor's own error: this symbol's failure, with the vendor's words
            raise VendorError(f"{what}: {type(exc).__name__}: {exc}") from None
        start, first = end, False
    bars = pd.concat([p for p in pages if not p.empty] or [pd.DataFrame(columns=["ts", *FEATURES])])
    if bars.empty:
        return pd.DataFrame({c: pd.Series(dtype=float) for c in COLUMNS}).assign(
            ts=pd.Series(dtype="datetime64[ns, UTC]")
        )[COLUMNS]
    bars["ts"] = pd.DatetimeIndex(bars["ts"]).tz_convert("UTC")
    bars = bars.drop_duplicates("ts", keep="last").sort_values("ts").reset_index(drop=True)
    bars = bars[(bars["ts"] >= since)]
    closed = bar_closes(bars["ts"], interval, exchange, vendor.end_labelled) <= until
    bars = bars[closed.to_numpy()].reset_index(drop=True)
    for column in FEATURES:
        bars[column] = pd.to_numeric(bars.get(column), errors="coerce").astype(float)
    missing = bars["amount"].isna().to_numpy()
    bars.loc[missing, "amount"] = (bars["volume"] * bars[PRICES].mean(axis=1))[missing]
    bars["row"] = np.arange(1, len(bars) + 1)
    return bars[COLUMNS]
