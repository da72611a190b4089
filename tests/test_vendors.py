"""Market-data vendors on recorded replies (tests/fixtures/vendors), parsed by the vendor libraries themselves."""

from __future__ import annotations

import json

import pandas as pd
import pytest

import replay
from kronos_tasks.data.schema import Interval
from kronos_tasks.data.vendors import VendorError, fetch_bars, vendor_for
from kronos_tasks.data.watchlist import WatchItem, parse_watchlist
from kronos_tasks.errors import ParamsError

UTC = "UTC"


@pytest.fixture(autouse=True)
def replayed(tmp_path):
    replay.install(tmp_path / "yfinance-cache")
    replay.requests.clear()
    replay.failures.clear()
    yield
    replay.failures.clear()


def utc(text: str) -> pd.Timestamp:
    return pd.Timestamp(text, tz=UTC)


def fetch(source, ticker, interval, exchange, since, until, sleep=lambda seconds: None):
    return fetch_bars(
        vendor_for(source), "S", ticker, Interval.parse(interval), exchange, utc(since), utc(until), sleep
    )


def recorded_klines():
    return json.loads((replay.FIXTURES / "binance_BTCUSDT_1h.json").read_text())["klines"]


def test_yfinance_daily_bars_through_yfinance_own_parsing():
    # 2024-08-28 15:00 New York: that day's session is still open, so its bar is not stored yet.
    bars = fetch("yfinance", "GOOG", "1d", "XNYS", "2024-08-01", "2024-08-28 19:00")
    chart = json.loads((replay.FIXTURES / "yahoo_chart_GOOG_1d.json").read_text())["chart"]["result"][0]
    opens = pd.to_datetime(chart["timestamp"], unit="s", utc=True)
    wanted = [i for i, t in enumerate(opens) if utc("2024-08-01") <= t < utc("2024-08-28")]
    assert list(bars["ts"]) == [t.tz_convert("America/New_York").normalize().tz_convert(UTC) for t in opens[wanted]]
    quote = chart["indicators"]["quote"][0]
    assert bars["close"].tolist() == [quote["close"][i] for i in wanted]
    assert bars["volume"].tolist() == [quote["volume"][i] for i in wanted]
    # Yahoo has no traded value: amount is volume x the mean of the four prices, as for files.
    expected = bars["volume"] * bars[["open", "high", "low", "close"]].mean(axis=1)
    assert bars["amount"].tolist() == pytest.approx(expected.tolist())
    assert bars["row"].tolist() == list(range(1, len(bars) + 1))
    # After the close the day's bar is there.
    assert fetch("yfinance", "GOOG", "1d", "XNYS", "2024-08-01", "2024-08-28 20:00")["ts"].iloc[-1] == utc(
        "2024-08-28 04:00"
    )


def test_ccxt_pages_through_long_histories_and_keeps_only_closed_candles(monkeypatch):
    from kronos_tasks.data.vendors import crypto

    monkeypatch.setattr(crypto, "PAGE_CANDLES", 100)
    # 03:30: the candle that opened at 03:00 has not closed.
    bars = fetch("ccxt:binance", "BTC/USDT", "1h", "24/7", "2024-08-01", "2024-08-29 03:30")
    klines = recorded_klines()
    assert len(bars) == len(klines) - 1 and bars["ts"].is_unique and bars["ts"].is_monotonic_increasing
    assert bars["ts"].iloc[-1] == utc("2024-08-29 02:00")
    assert bars["close"].tolist() == [float(k[4]) for k in klines[:-1]]
    pages = [r for r in replay.requests if r["url"].endswith("/klines")]
    assert len(pages) == 6 and all(int(p["params"]["limit"]) == 100 for p in pages)
    starts = [int(p["params"]["startTime"]) for p in pages]
    assert starts == sorted(starts) and len(set(starts)) == len(starts)


def test_akshare_minute_bars_are_end_labelled_in_shanghai_time():
    bars = fetch("akshare", "600000", "5min", "XSHG", "2024-08-29", "2024-08-29 03:27")
    local = pd.DatetimeIndex(bars["ts"]).tz_convert("Asia/Shanghai")
    assert local[0] == pd.Timestamp("2024-08-29 09:35", tz="Asia/Shanghai")
    # The bar labelled 11:25 ended at 11:25 (03:25 UTC) and is stored; 11:30 has not ended at 11:27.
    assert local[-1] == pd.Timestamp("2024-08-29 11:25", tz="Asia/Shanghai")
    lines = json.loads((replay.FIXTURES / "eastmoney_600000_5min.json").read_text())["data"]["klines"]
    by_time = {line.split(",")[0]: line.split(",") for line in lines}
    first = by_time["2024-08-29 09:35"]
    # Eastmoney's order is time, open, close, high, low, volume, amount.
    assert bars.iloc[0][["open", "close", "high", "low", "volume", "amount"]].tolist() == [float(v) for v in first[1:7]]


def test_transient_errors_are_retried_with_backoff_then_given_up():
    from yfinance.exceptions import YFRateLimitError

    waits = []
    replay.failures["yfinance"] += [YFRateLimitError(), YFRateLimitError()]
    bars = fetch("yfinance", "GOOG", "1d", "XNYS", "2024-07-01", "2024-08-29", sleep=waits.append)
    assert len(bars) > 0 and waits == [2.0, 4.0]

    waits.clear()
    replay.failures["yfinance"] += [YFRateLimitError() for _ in range(4)]
    with pytest.raises(VendorError, match=r"S: yfinance \(GOOG, 1d.*gave up after 4 attempts") as caught:
        fetch("yfinance", "GOOG", "1d", "XNYS", "2024-06-01", "2024-08-29", sleep=waits.append)
    assert waits == [2.0, 4.0, 8.0] and "Rate limited" in str(caught.value)


def test_vendor_errors_name_the_symbol_and_quote_the_vendor():
    with pytest.raises(
        VendorError, match=r"S: ccxt:binance \(NOPE/USDT.*binance does not have market symbol NOPE/USDT"
    ):
        fetch("ccxt:binance", "NOPE/USDT", "1h", "24/7", "2024-08-01", "2024-08-29")
    with pytest.raises(VendorError, match=r"S: yfinance \(NOSUCHTICKER.*NOSUCHTICKER"):
        fetch("yfinance", "NOSUCHTICKER", "1d", "XNYS", "2024-08-01", "2024-08-29")
    with pytest.raises(VendorError, match=r"no bars for '999999'"):
        fetch("akshare", "999999", "5min", "XSHG", "2024-08-28", "2024-08-29")
    with pytest.raises(VendorError, match="has no 3h candles"):
        fetch("ccxt:binance", "BTC/USDT", "3h", "24/7", "2024-08-01", "2024-08-29")


def test_ccxt_credentials_come_from_the_environment_and_never_from_the_watchlist(monkeypatch):
    from kronos_tasks.data.vendors.crypto import credentials

    monkeypatch.setenv("KRONOS_CCXT_KRAKEN_API_KEY", "key-1")
    monkeypatch.setenv("KRONOS_CCXT_KRAKEN_SECRET", "secret-1")
    assert credentials("kraken") == {"apiKey": "key-1", "secret": "secret-1"}
    assert credentials("binance") == {}
    entry = {"symbol": "BTC", "exchange": "24/7", "interval": "1h", "source": "ccxt:kraken", "api_key": "x"}
    with pytest.raises(ParamsError, match=r"unknown key\(s\) \['api_key'\]"):
        parse_watchlist([entry])


@pytest.mark.parametrize(
    "entry, message",
    [
        ({"source": "bloomberg"}, "unknown source 'bloomberg'"),
        ({"source": "ccxt"}, "unknown source 'ccxt'"),
        ({"source": "yfinance", "file": "x.csv"}, "`file` is for source files"),
    ],
)
def test_bad_sources_are_refused_when_the_watchlist_is_read(entry, message):
    with pytest.raises(ParamsError, match=message):
        parse_watchlist([{"symbol": "X", "exchange": "XNYS", "interval": "1d", **entry}])


def test_a_fetched_symbol_resumes_from_its_last_bars_and_upserts_the_overlap(tmp_path):
    from kronos_tasks.pipeline.ingest import OVERLAP_BARS, ingest_fetched
    from kronos_tasks.storage import make_engine, read_bars, upgrade

    engine = make_engine(f"sqlite:///{tmp_path / 'k.db'}")
    upgrade(engine)
    item = WatchItem("BTC-USDT", "24/7", "1h", source="ccxt:binance", ticker="BTC/USDT", timezone="UTC")
    first = ingest_fetched(engine, item, utc("2024-08-28 04:00"))
    assert not first.failed and first.written["BTC-USDT"] > 0
    stored = read_bars(engine, "BTC-USDT", "1h", limit=10**6)
    assert stored["ts"].iloc[-1] == utc("2024-08-28 03:00")

    replay.requests.clear()
    second = ingest_fetched(engine, item, utc("2024-08-29 04:00"))
    assert not second.failed
    klines = [r for r in replay.requests if r["url"].endswith("/klines")]
    assert [int(r["params"]["startTime"]) for r in klines[:1]] == [
        int(stored["ts"].iloc[-OVERLAP_BARS].timestamp() * 1000)
    ]
    after = read_bars(engine, "BTC-USDT", "1h", limit=10**6)
    assert after["ts"].is_unique and len(after) == len(stored) + 24
    assert after["close"].tolist() == [float(k[4]) for k in recorded_klines()[-len(after) :]]
