"""``kronos-flow forecast``: one CSV of bars in, one CSV of forecasts out, without Airflow or a database."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from kronos_tasks.data import DataError, Interval, exchange_timezone, read_series, validate
from kronos_tasks.inference import KronosPredictor
from kronos_tasks.model import Kronos, KronosTokenizer

from . import runtime
from .forecasting import forecast_rows, make_window, predict_windows
from .params import ForecastParams, WatchItem


def wide_frame(rows: list[dict], timezone: str) -> pd.DataFrame:
    """One row per symbol and future bar: the mean of each feature (as upstream's predict returns) and its quantiles."""
    long = pd.DataFrame(rows)
    out = long.pivot_table(index=["symbol", "step", "target_ts"], columns="feature", values="mean", sort=False)
    out = out[[f for f in ("open", "high", "low", "close", "volume", "amount")]]
    for q in long["quantiles"].iloc[0]:
        values = long.assign(value=[levels[q] for levels in long["quantiles"]])
        out = out.join(
            values.pivot_table(
                index=["symbol", "step", "target_ts"], columns="feature", values="value", sort=False
            ).add_suffix(f"_q{q}")
        )
    out = out.reset_index()
    out.insert(3, "target_local", pd.DatetimeIndex(out["target_ts"]).tz_convert(timezone).tz_localize(None))
    return out


def forecast_csv(args) -> Path:
    settings = runtime.settings()
    zone = exchange_timezone(args.exchange)
    series = read_series(Path(args.csv), zone, interval=Interval.parse(args.interval) if args.interval else None)
    params = ForecastParams.from_options(args)
    device = runtime.torch_device(args.device or settings.device)
    if args.checkpoints:
        tokenizer = KronosTokenizer.from_pretrained(args.checkpoints[0], device)
        model = Kronos.from_pretrained(args.checkpoints[1], device)
        max_context = args.max_context
    else:
        pair = runtime.registry().resolve(args.model)
        tokenizer, model = pair.load(device)
        max_context = pair.max_context
    params.check(max_context)
    predictor = KronosPredictor(model, tokenizer, device=device, max_context=max_context)

    windows = []
    for item in series:
        kept, report = validate(item.symbol, item.bars, item.interval, zone)
        if item.symbol in report.rejected_symbols:
            raise DataError(f"{args.csv}: {item.symbol} rejected by validation:\n{report.render()}")
        bars = kept[["ts", "open", "high", "low", "close", "volume", "amount"]]
        watch = WatchItem(item.symbol, args.exchange.upper(), str(item.interval), None, zone)
        windows.append(make_window(watch, bars, params, max_context))
    predicted, failed = predict_windows(predictor, windows, params, params.seed or 0)
    if failed:
        raise DataError("; ".join(f"{symbol}: {reason}" for symbol, reason in failed.items()))
    rows = [row for w in windows for row in forecast_rows("cli", w, predicted[w.symbol])]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    wide_frame(rows, zone).to_csv(out, index=False)
    return out
