"""Walk-forward backtests: forecasts replayed over past origins from the bars table, with fixed seeds.

Every origin of every symbol becomes one series of a single batched prediction (the cached decoder
handles the mix of lengths), so hundreds of origins finish in minutes on a CPU with a small model.
The seed of an origin is derived from the run seed, the symbol and the origin time, so two model
versions are compared on the same windows with the same random streams. Baselines (persistence, drift,
and for intraday bars the seasonal naive one session back) are scored on the same windows.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from sqlalchemy import Engine

from kronos_tasks.data import FEATURES, DataError
from kronos_tasks.data.watchlist import WatchItem
from kronos_tasks.forecasting.params import ForecastParams
from kronos_tasks.forecasting.windows import local_times, predict_series
from kronos_tasks.inference.params import derive_seed
from kronos_tasks.inference.predictor import KronosPredictor
from kronos_tasks.storage import instrument, read_bars

from . import metrics

BASELINES = ("persistence", "drift", "seasonal")


@dataclass
class Origin:
    item: WatchItem
    history: pd.DataFrame  # ts + features, the window the forecast reads
    actual: pd.DataFrame  # the pred_len bars that followed
    seed: int


@dataclass
class BacktestResult:
    """Per-point rows (symbol, origin, step) and the scores of the model and the baselines."""

    rows: pd.DataFrame
    scores: dict[str, Any] = field(default_factory=dict)
    model_label: str = "model"


def bars_per_session(ts: pd.Series, timezone: str) -> int:
    """The usual number of bars per local trading day (the seasonal period of intraday bars)."""
    days = pd.DatetimeIndex(ts).tz_convert(timezone).normalize()
    counts = pd.Series(1, index=days).groupby(level=0).sum()
    return int(counts.mode().iloc[0]) if len(counts) else 1


def select_origins(
    engine: Engine,
    items: list[WatchItem],
    params: ForecastParams,
    max_context: int,
    count: int,
    stride: int,
    seed: int,
    end: pd.Timestamp | None = None,
) -> list[Origin]:
    """The last ``count`` origins per symbol, ``stride`` bars apart, each with a full window and pred_len actuals."""
    window = params.window(max_context)
    origins = []
    for item in items:
        bars = read_bars(engine, item.symbol, item.interval)
        last = len(bars) - params.pred_len - 1  # the latest index with pred_len bars after it
        if end is not None:
            last = min(last, int(bars["ts"].searchsorted(end, side="right")) - 1)
        first = params.min_history - 1
        picked = list(range(last, first - 1, -stride))[:count][::-1]
        if not picked:
            raise DataError(
                f"{item.symbol}: {len(bars)} bars are too few for a backtest with min_history "
                f"{params.min_history} and pred_len {params.pred_len}."
            )
        for i in picked:
            history = bars.iloc[max(0, i + 1 - window) : i + 1].reset_index(drop=True)
            actual = bars.iloc[i + 1 : i + 1 + params.pred_len].reset_index(drop=True)
            seed_i = derive_seed(seed, f"{item.symbol}@{history['ts'].iloc[-1].isoformat()}")
            origins.append(Origin(item, history, actual, seed_i))
    return origins


def run_backtest(
    origins: list[Origin], params: ForecastParams, predictor: KronosPredictor | None, label: str = "model"
) -> BacktestResult:
    """Forecast every origin (unless ``predictor`` is None: baselines only) and score close against the outcome."""
    forecasts = None
    if predictor is not None:
        forecasts = predict_series(
            predictor,
            params,
            [o.history[FEATURES] for o in origins],
            [local_times(o.history["ts"], o.item.timezone) for o in origins],
            [local_times(o.actual["ts"], o.item.timezone) for o in origins],
            seeds=[o.seed for o in origins],
            labels=[f"{o.item.symbol}@{o.history['ts'].iloc[-1]}" for o in origins],
        )
    rows = []
    for k, origin in enumerate(origins):
        close = origin.history["close"].to_numpy(dtype=float)
        actual = origin.actual["close"].to_numpy(dtype=float)
        horizon = len(actual)
        base = {"persistence": metrics.persistence(close, horizon), "drift": metrics.drift(close, horizon)}
        sigma = metrics.histvol_sigma(close)
        band = metrics.histvol_band(close[-1], sigma, horizon, params.quantiles)
        if origin.item.interval != "1d":
            period = bars_per_session(origin.history["ts"], origin.item.timezone)
            if len(close) >= period:
                base["seasonal"] = metrics.seasonal_naive(close, horizon, period)
        for step in range(horizon):
            row = {
                "symbol": origin.item.symbol,
                "interval": origin.item.interval,
                "origin_ts": origin.history["ts"].iloc[-1],
                "step": step + 1,
                "target_ts": origin.actual["ts"].iloc[step],
                "last": close[-1],
                "actual": actual[step],
                "seed": origin.seed,
                **{name: values[step] for name, values in base.items()},
                "hv_sd": close[-1] * sigma * np.sqrt(step + 1),
                **{f"hv_q{q:g}": float(values[step]) for q, values in band.items()},
            }
            if forecasts is not None:
                forecast = forecasts[k]
                paths = forecast.samples[:, step, FEATURES.index("close")]
                row.update(
                    {
                        "mean": float(forecast.mean["close"].iloc[step]),
                        "p_up": float(np.mean(paths > close[-1])),
                        "crps": metrics.crps_samples(paths[:, None], np.array([actual[step]])),
                        **{f"q{q:g}": float(forecast.quantile(q)["close"].iloc[step]) for q in params.quantiles},
                    }
                )
            rows.append(row)
    result = BacktestResult(pd.DataFrame(rows), model_label=label)
    result.scores = metrics.json_safe(score_rows(result.rows, params.quantiles if predictor is not None else ()))
    return result


def score_rows(rows: pd.DataFrame, quantiles=()) -> dict[str, Any]:
    """Scores of close over all rows: for the model (if present) and each baseline, with skill vs persistence."""
    actual, last = rows["actual"].to_numpy(), rows["last"].to_numpy()
    outcome_up = (actual > last).astype(float)
    persistence_mae = metrics.mae(rows["persistence"], actual)
    scores: dict[str, Any] = {
        "points": int(len(rows)),
        "origins": int(rows[["symbol", "origin_ts"]].drop_duplicates().shape[0]),
    }
    methods = [m for m in ("mean", *BASELINES) if m in rows and rows[m].notna().all()]
    for method in methods:
        name = "model" if method == "mean" else method
        pred = rows[method].to_numpy()
        direction = metrics.direction_accuracy(pred, actual, last)
        entry = {
            "mae": metrics.mae(pred, actual),
            "mape": metrics.mape(pred, actual),
            "skill": metrics.skill(metrics.mae(pred, actual), persistence_mae),
            "direction_accuracy": direction.value,
            "direction_ci_low": direction.low,
            "direction_ci_high": direction.high,
        }
        if name == "persistence":
            # No change forecast: a coin flip is its fair probability of "up".
            entry["brier"] = metrics.brier(np.full(len(rows), 0.5), outcome_up)
        scores[name] = entry
    if "mean" in methods and quantiles:
        model = scores["model"]
        levels = sorted(quantiles)
        model["pinball"] = metrics.pinball({q: rows[f"q{q:g}"].to_numpy() for q in levels}, actual)
        model["crps"] = float(rows["crps"].mean())
        model[f"coverage_{levels[0]:g}_{levels[-1]:g}"] = metrics.coverage(
            rows[f"q{levels[0]:g}"], rows[f"q{levels[-1]:g}"], actual
        )
        model["brier"] = metrics.brier(rows["p_up"], outcome_up)
        model["brier_skill"] = metrics.skill(model["brier"], scores["persistence"]["brier"])
        scores["reliability"] = metrics.reliability(rows["p_up"], outcome_up)
        scores["persistence"]["crps"] = metrics.mae(rows["persistence"], actual)  # a point forecast's CRPS
        if f"hv_q{levels[0]:g}" in rows:
            scores["histvol"] = band_scores(rows, levels, "hv_")
            scores["histvol"]["crps"] = metrics.crps_normal(rows["last"], rows["hv_sd"], actual)
        scores["by_horizon"] = {
            int(step): {
                "mae": metrics.mae(part["mean"], part["actual"]),
                "skill": metrics.skill(
                    metrics.mae(part["mean"], part["actual"]), metrics.mae(part["persistence"], part["actual"])
                ),
                "brier": metrics.brier(part["p_up"], (part["actual"] > part["last"]).astype(float)),
            }
            for step, part in rows.groupby("step")
        }
    return scores


def band_scores(rows: pd.DataFrame, levels, prefix: str = "") -> dict[str, Any]:
    """``metrics.band_scores`` of the backtest rows' quantile columns ``<prefix>q<level>``."""
    return metrics.band_scores({q: rows[f"{prefix}q{q:g}"].to_numpy() for q in levels}, rows["actual"].to_numpy())


def items_from(engine: Engine, specs: list[str] | None, watchlist: list[WatchItem]) -> list[WatchItem]:
    """Watchlist entries for ``symbol[:interval]`` specs (exchange and zone from the stored instrument)."""
    if not specs:
        return watchlist
    items = []
    for spec in specs:
        symbol, _, interval = spec.partition(":")
        listed = [w for w in watchlist if w.symbol == symbol and (not interval or w.interval == interval)]
        if listed:
            items.append(listed[0])
            continue
        if not interval:
            raise DataError(f"{symbol} is not in the watchlist: give it as {symbol}:INTERVAL.")
        meta = instrument(engine, symbol, interval)
        if meta is None or not meta.exchange:
            raise DataError(
                f"no ingested bars of {symbol} at {interval} with an exchange; ingest them with "
                "`kronos-flow ingest PATH --exchange X` first."
            )
        items.append(WatchItem(symbol, meta.exchange, interval, None, meta.timezone))
    return items
