"""``kronos-flow forecast``: one file of bars in, one CSV of forecasts out, without Airflow or a database."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd

from kronos_tasks import __version__
from kronos_tasks.data import DataError, Interval, exchange_timezone, read_series, validate
from kronos_tasks.data.watchlist import WatchItem
from kronos_tasks.forecasting.engine import load_predictor
from kronos_tasks.forecasting.params import ForecastParams
from kronos_tasks.forecasting.windows import forecast_rows, make_window, predict_windows
from kronos_tasks.hashing import sha256_file
from kronos_tasks.model.checkpoint import weights_path

from . import runtime


@dataclass(frozen=True)
class FileForecast:
    """What ``forecast_file`` did: the parameters resolved for it, what made it, the bars validation dropped,
    a warning about the weights (untrained, demonstration) and the provenance file written beside the output."""

    params: ForecastParams
    model: str
    dropped: list[str]
    warning: str | None
    provenance: Path
    device: str


@dataclass(frozen=True)
class Checkpoints:
    """Local checkpoint folders to forecast with instead of a registered pair."""

    tokenizer: Path
    model: Path
    max_context: int


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


def forecast_file(
    bars_file: Path,
    out: Path,
    exchange: str,
    params: ForecastParams,
    *,
    interval: str | None = None,
    checkpoints: Checkpoints | None = None,
    device: str | None = None,
) -> FileForecast:
    """Forecast every symbol of ``bars_file`` with the registered ``params.model`` (or local ``checkpoints``)
    and write the wide forecast table to ``out``. Bars that fail validation are dropped and named.

    Without a seed, the seed derives from the file's name, so the same file forecasts the same way.
    """
    settings = runtime.settings()
    zone = exchange_timezone(exchange)
    series = read_series(bars_file, zone, interval=Interval.parse(interval) if interval else None)
    model = params.model or settings.model_alias
    if checkpoints is not None:
        tokenizer_path, model_path, max_context = checkpoints.tokenizer, checkpoints.model, checkpoints.max_context
        label, warning = f"checkpoints {checkpoints.tokenizer} + {checkpoints.model}", None
        weights = {
            "tokenizer_folder": str(checkpoints.tokenizer.resolve()),
            "tokenizer_sha256": sha256_file(weights_path(checkpoints.tokenizer)),
            "model_folder": str(checkpoints.model.resolve()),
            "model_sha256": sha256_file(weights_path(checkpoints.model)),
        }
    else:
        pair = runtime.registry().resolve(model)
        tokenizer_path, model_path, max_context = pair.tokenizer_path, pair.model_path, pair.max_context
        label, warning = f"{pair.model_name} v{pair.model_version}", pair.warning
        weights = pair.audit_fields()
    params = params.resolve(max_context, model, settings.batch_size, seed_key=bars_file.name)
    predictor = load_predictor(
        tokenizer_path, model_path, max_context, device or settings.device, params.batch_size, params.dtype
    )

    windows, dropped = [], []
    for item in series:
        if not item.symbol:
            rows = ", ".join(str(r) for r in item.bars["row"].iloc[:5])
            raise DataError(f"{bars_file}: {len(item.bars)} row(s) with a blank symbol cell (rows {rows}, ...).")
        kept, report = validate(item.symbol, item.bars, item.interval, zone)
        dropped += [str(f) for f in report.findings if f.action != "warn"]
        if item.symbol in report.rejected_symbols:
            raise DataError(f"{bars_file}: {item.symbol} rejected by validation:\n{report.render()}")
        bars = kept[["ts", "open", "high", "low", "close", "volume", "amount"]]
        watch = WatchItem(item.symbol, exchange.upper(), str(item.interval), None, zone)
        windows.append(make_window(watch, bars, params, max_context))
    predicted, failed = predict_windows(predictor, windows, params, params.seed)
    if failed:
        raise DataError("; ".join(f"{symbol}: {reason}" for symbol, reason in failed.items()))
    rows = [row for w in windows for row in forecast_rows("cli", w, predicted[w.symbol])]
    out.parent.mkdir(parents=True, exist_ok=True)
    wide_frame(rows, zone).to_csv(out, index=False)
    provenance = out.with_name(out.name + ".json")
    record = {
        "output": str(out.resolve()),
        "input": {"file": str(bars_file.resolve()), "sha256": sha256_file(bars_file)},
        "windows": {w.symbol: w.record() for w in windows},
        "exchange": exchange,
        "weights": weights,
        "warning": warning,
        "params": params.to_dict(),
        "device": str(predictor.device),
        "dtype": params.dtype,
        "kronos_flow_version": __version__,
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    provenance.write_text(json.dumps(record, indent=2, default=str) + "\n")
    return FileForecast(params, label, dropped, warning, provenance, str(predictor.device))
