"""Synthetic daily bars for scale runs: N symbols of random-walk OHLCV on the XNYS calendar, one CSV each,
and a watchlist naming them (used by bench/daily_scale.py and the 2,000-symbol DAG test)."""

from __future__ import annotations

from pathlib import Path

import exchange_calendars as xcals
import numpy as np
import pandas as pd
import yaml

EXCHANGE = "XNYS"


def sessions(last: str, count: int) -> pd.DatetimeIndex:
    """The ``count`` XNYS sessions up to and including ``last``."""
    calendar = xcals.get_calendar(EXCHANGE, start="2000-01-01")
    return calendar.sessions_in_range(calendar.sessions_window(last, -count)[0], last)


def bars(days: pd.DatetimeIndex, seed: int) -> pd.DataFrame:
    """Random-walk daily bars on ``days`` (their values depend on ``seed`` and the day index only)."""
    rng = np.random.default_rng(seed)
    n = len(days)
    close = 50 * np.exp(np.cumsum(rng.normal(0, 0.015, n)))
    open_ = np.r_[close[0], close[:-1]] * np.exp(rng.normal(0, 0.003, n))
    spread = np.abs(rng.normal(0, 0.006, n)) * close
    volume = rng.integers(10_000, 1_000_000, n).astype(float)
    return pd.DataFrame(
        {
            "date": days.strftime("%Y-%m-%d"),
            "open": open_.round(4),
            "high": (np.maximum(open_, close) + spread).round(4),
            "low": (np.minimum(open_, close) - spread).round(4),
            "close": close.round(4),
            "volume": volume,
            "amount": (volume * close).round(2),
        }
    )


def write_universe(folder: Path, symbols: int, count: int, last: str) -> Path:
    """``symbols`` files ``S00000_1d.csv``... of ``count`` daily bars up to ``last`` in ``folder``, and the
    watchlist ``watchlist.yaml`` naming them -> the watchlist's path."""
    folder.mkdir(parents=True, exist_ok=True)
    days = sessions(last, count)
    for n in range(symbols):
        bars(days, n).to_csv(folder / f"S{n:05d}_1d.csv", index=False)
    entries = [{"symbol": f"S{n:05d}", "exchange": EXCHANGE, "interval": "1d"} for n in range(symbols)]
    watchlist = folder / "watchlist.yaml"
    watchlist.write_text(yaml.safe_dump({"symbols": entries}, sort_keys=False))
    return watchlist


def append_day(folder: Path, symbols: int, count: int, last: str) -> None:
    """Append the session after ``last`` to every file (what a vendor's daily export adds)."""
    days = sessions(last, count)
    calendar = xcals.get_calendar(EXCHANGE, start="2000-01-01")
    following = calendar.next_session(days[-1])
    extended = days.append(pd.DatetimeIndex([following]))
    for n in range(symbols):
        row = bars(extended, n).iloc[-1:]
        with (folder / f"S{n:05d}_1d.csv").open("a") as handle:
            row.to_csv(handle, index=False, header=False)
