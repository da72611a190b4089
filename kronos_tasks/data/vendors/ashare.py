"""China A-shares through akshare (Eastmoney's quotes): daily and 1/5/15/30/60-minute bars, Kronos's home market.

``ticker`` is the six-digit code (600000, 000001, ...). Prices are as traded (no adjustment); volume is
in lots of 100 shares and amount in yuan, as Eastmoney reports them (and as the bundled A-share sample
holds them). Intraday bars carry their end time (09:35 ... 11:30, 13:05 ... 15:00), daily bars the date;
Eastmoney serves recent intraday history only.
"""

from __future__ import annotations

import pandas as pd

from ..schema import DataError, Interval
from . import TransientError, Vendor

ZONE = "Asia/Shanghai"
MINUTES = {"1min": "1", "5min": "5", "15min": "15", "30min": "30", "1h": "60"}
COLUMNS = {"开盘": "open", "最高": "high", "最低": "low", "收盘": "close", "成交量": "volume", "成交额": "amount"}


class Akshare(Vendor):
    name = "akshare"
    end_labelled = True
    pause_seconds = 0.5

    def request(self, ticker: str, interval: Interval, start: pd.Timestamp, end: pd.Timestamp) -> pd.DataFrame:
        import akshare as ak
        import requests

        local_start, local_end = start.tz_convert(ZONE), end.tz_convert(ZONE)
        try:
            if interval.daily:
                frame = ak.stock_zh_a_hist(
                    symbol=ticker,
                    period="daily",
                    start_date=local_start.strftime("%Y%m%d"),
                    end_date=local_end.strftime("%Y%m%d"),
                    adjust="",
                )
                time_column = "日期"
            else:
                if str(interval) not in MINUTES:
                    raise DataError(f"akshare has no {interval} A-share bars; use 1d or one of {', '.join(MINUTES)}.")
                frame = ak.stock_zh_a_hist_min_em(
                    symbol=ticker,
                    start_date=local_start.strftime("%Y-%m-%d %H:%M:%S"),
                    end_date=local_end.strftime("%Y-%m-%d %H:%M:%S"),
                    period=MINUTES[str(interval)],
                    adjust="",
                )
                time_column = "时间"
        except (requests.ConnectionError, requests.Timeout) as exc:
            raise TransientError(f"{type(exc).__name__}: {exc}") from None
        except (KeyError, TypeError) as exc:  # akshare's way of saying the reply held no data
            raise DataError(f"no bars for {ticker!r} in Eastmoney's reply ({type(exc).__name__}: {exc})") from None
        if frame.empty:
            return pd.DataFrame(columns=["ts", *COLUMNS.values()])
        stamps = pd.to_datetime(frame[time_column].astype(str)).dt.tz_localize(ZONE).dt.tz_convert("UTC")
        out = frame.rename(columns=COLUMNS)[list(COLUMNS.values())]
        out.insert(0, "ts", stamps.to_numpy())
        return out[(out["ts"] >= start) & (out["ts"] < end)].reset_index(drop=True)
