"""Vendor servers replayed from the recorded replies in ``tests/fixtures/vendors``.

Each replay stands in for the vendor's HTTP endpoint only: the request goes through the vendor library
(yfinance's ``Ticker.history``, ccxt's ``binance`` class, akshare's Eastmoney functions) down to its
transport, and the reply is parsed by the library's own code. The replays answer as the vendors do
(Yahoo and Binance cut the range asked for; Eastmoney's minute endpoint returns all it holds) and write
each request to ``requests`` (and to the JSON-lines file named by ``KRONOS_REPLAY_LOG``, for DAG runs in
child processes). ``failures`` makes the next requests of a vendor fail with a given exception.
"""

from __future__ import annotations

import json
import os
from collections import defaultdict
from pathlib import Path
from urllib.parse import parse_qs, urlparse

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "vendors"
requests: list[dict] = []
failures: dict[str, list[Exception]] = defaultdict(list)


def _load(name: str) -> dict:
    return json.loads((FIXTURES / name).read_text())


def _record(vendor: str, url: str, params: dict) -> None:
    entry = {"vendor": vendor, "url": url, "params": {k: str(v) for k, v in (params or {}).items()}}
    requests.append(entry)
    if os.environ.get("KRONOS_REPLAY_LOG"):
        with open(os.environ["KRONOS_REPLAY_LOG"], "a") as log:
            log.write(json.dumps(entry) + "\n")
    if failures[vendor]:
        raise failures[vendor].pop(0)


class Reply:
    """The parts of an HTTP response the vendor libraries read."""

    def __init__(self, payload, url: str, status_code: int = 200):
        self._payload, self.url, self.status_code = payload, url, status_code
        self.text = json.dumps(payload)

    def json(self):
        return self._payload

    def raise_for_status(self):
        if self.status_code >= 400:
            import requests

            raise requests.HTTPError(f"{self.status_code} Client Error for url: {self.url}")


def yahoo_get(_data, url, params=None, timeout=30):
    """Yahoo's v8 chart endpoint: the recorded chart of the ticker, cut to [period1, period2)."""
    params = dict(params or {})
    _record("yfinance", url, params)
    ticker = urlparse(url).path.rsplit("/", 1)[-1]
    path = FIXTURES / f"yahoo_chart_{ticker}_{params.get('interval', '1d')}.json"
    if not path.exists():
        error = {"code": "Not Found", "description": "No data found, symbol may be delisted"}
        return Reply({"chart": {"result": None, "error": error}}, url, 404)
    chart = _load(path.name)["chart"]
    result = chart["result"][0]
    stamps = result["timestamp"]
    if "period1" in params:
        keep = [i for i, t in enumerate(stamps) if int(params["period1"]) <= t < int(params["period2"])]
    else:  # range=1d: the newest bar (yfinance asks this for the ticker's timezone)
        keep = [len(stamps) - 1]
    quote = result["indicators"]["quote"][0]
    cut = {
        "meta": result["meta"],
        "timestamp": [stamps[i] for i in keep],
        "indicators": {
            "quote": [{k: [v[i] for i in keep] for k, v in quote.items()}],
            "adjclose": [{"adjclose": [result["indicators"]["adjclose"][0]["adjclose"][i] for i in keep]}],
        },
    }
    if not keep:
        cut.pop("timestamp")
        cut["indicators"] = {"quote": [{}], "adjclose": [{}]}
    return Reply({"chart": {"result": [cut], "error": None}}, url)


def binance_fetch(_exchange, url, method="GET", headers=None, body=None):
    """Binance's exchangeInfo and klines endpoints; klines from startTime to endTime (inclusive), at most ``limit``."""
    parsed = urlparse(url)
    params = {k: v[0] for k, v in parse_qs(parsed.query).items()}
    _record("ccxt:binance", parsed.path, params)
    recorded = _load("binance_BTCUSDT_1h.json")
    if parsed.path.endswith("/exchangeInfo"):
        return recorded["exchangeInfo"] if parsed.path.startswith("/api/") else {"symbols": []}
    if parsed.path.endswith("/klines"):
        if params.get("symbol") != "BTCUSDT":
            import ccxt

            raise ccxt.BadSymbol(f'binance {{"code":-1121,"msg":"Invalid symbol {params.get("symbol")}."}}')
        start, end = int(params.get("startTime", 0)), int(params.get("endTime", 2**62))
        rows = [row for row in recorded["klines"] if start <= row[0] <= end]
        return rows[: int(params.get("limit", 500))]
    raise AssertionError(f"no recorded Binance reply for {url}")


def eastmoney_get(url, params=None, timeout=None, **_):
    """Eastmoney's kline endpoint: every recorded bar of the code (as its minute endpoint answers)."""
    params = dict(params or {})
    _record("akshare", url, params)
    recorded = _load("eastmoney_600000_5min.json")
    if params.get("secid") != "1.600000" or params.get("klt") != "5":
        return Reply({"rc": 0, "data": None}, url)
    return Reply({k: v for k, v in recorded.items() if not k.startswith("_")}, url)


def install(cache_dir: str | Path) -> None:
    """Point yfinance, ccxt's binance and akshare at the replays (yfinance's caches under ``cache_dir``)."""
    import types

    import akshare.stock_feature.stock_hist_em as hist_em
    import ccxt
    import requests as real_requests
    import yfinance
    import yfinance.data

    yfinance.set_tz_cache_location(str(cache_dir))
    yfinance.data.YfData.get = yahoo_get
    yfinance.data.YfData.cache_get.cache_clear()
    ccxt.binance.fetch = binance_fetch
    fake = types.SimpleNamespace(
        **{name: getattr(real_requests, name) for name in dir(real_requests) if not name.startswith("_")}
    )
    fake.get = eastmoney_get
    hist_em.requests = fake
