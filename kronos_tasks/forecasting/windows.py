"""From stored bars to forecast rows: windows, future bar times, batched prediction, per-symbol isolation."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime

import numpy as np
import pandas as pd

from kronos_tasks.data import FEATURES, DataError, Interval, future_timestamps
from kronos_tasks.data.watchlist import WatchItem
from kronos_tasks.errors import KronosFlowError
from kronos_tasks.hashing import frame_sha256
from kronos_tasks.inference.params import derive_seed
from kronos_tasks.inference.predictor import Forecast, KronosPredictor

from .params import ForecastParams

log = logging.getLogger(__name__)


@dataclass
class Window:
    """The history one symbol's forecast reads, and the times of the bars it forecasts."""

    item: WatchItem
    bars: pd.DataFrame  # ts (UTC) + features, oldest first
    future: pd.DatetimeIndex  # UTC
    sha256: str

    @property
    def symbol(self) -> str:
        return self.item.symbol

    def local(self, stamps) -> pd.Series:
        return local_times(stamps, self.item.timezone)

    def record(self) -> dict:
        """What the forecast read, for the forecast_windows table: its first and last bar, count and hash."""
        return {
            "symbol": self.symbol,
            "interval": self.item.interval,
            "first_ts": self.bars["ts"].iloc[0].to_pydatetime(),
            "last_ts": self.bars["ts"].iloc[-1].to_pydatetime(),
            "bars": len(self.bars),
            "sha256": self.sha256,
        }


def local_times(stamps, timezone: str) -> pd.Series:
    """UTC timestamps as naive wall-clock times in ``timezone``: what the model's time features use."""
    return pd.Series(pd.DatetimeIndex(stamps).tz_convert(timezone).tz_localize(None))


def make_window(
    item: WatchItem, bars: pd.DataFrame, params: ForecastParams, max_context: int, future_times=future_timestamps
) -> Window:
    """The last ``params.window(max_context)`` bars and the next ``pred_len`` bar times (from ``future_times``,
    ``calendars.future_timestamps`` or a cache of it); DataError if unusable."""
    history = bars.iloc[-params.window(max_context) :].reset_index(drop=True)
    if len(history) < params.min_history:
        raise DataError(
            f"{item.symbol}: {len(history)} bar(s) before the forecast origin, min_history is "
            f"{params.min_history}; ingest more history or lower min_history."
        )
    future = future_times(
        history["ts"].iloc[-1], params.pred_len, Interval.parse(item.interval), item.exchange, history["ts"]
    )
    return Window(item, history, future, frame_sha256(history, ["ts", *FEATURES]))


def predict_windows(
    predictor: KronosPredictor, windows: list[Window], params: ForecastParams, run_seed: int
) -> tuple[dict[str, Forecast], dict[str, str]]:
    """Forecasts per symbol, and the symbols that failed with their reason.

    Symbols are decoded together in batches of ``params.batch_size``; if a batch fails on one symbol's
    input (an expected error, ``KronosFlowError``), its symbols are retried one by one so that only the bad
    one fails. Any other exception is a bug or a device failure and propagates. Each symbol's seed comes
    from the run seed and its name, so it does not depend on the other symbols of the run.
    """
    results: dict[str, Forecast] = {}
    failed: dict[str, str] = {}

    def run(group: list[Window]) -> list[Forecast]:
        return predict_series(
            predictor,
            params,
            [w.bars[FEATURES] for w in group],
            [w.local(w.bars["ts"]) for w in group],
            [w.local(w.future) for w in group],
            seeds=[derive_seed(run_seed, w.symbol) for w in group],
            labels=[w.symbol for w in group],
        )

    size = params.batch_size or predictor.batch_size
    for start in range(0, len(windows), size):
        group = windows[start : start + size]
        try:
            results.update({w.symbol: f for w, f in zip(group, run(group))})
        except KronosFlowError as exc:
            log.warning("batch of %d symbols failed (%s); retrying them one by one", len(group), exc)
            for window in group:
                try:
                    results[window.symbol] = run([window])[0]
                except KronosFlowError as single:
                    failed[window.symbol] = f"{type(single).__name__}: {single}"
    for symbol, forecast in list(results.items()):
        bad = ~np.isfinite(forecast.samples).all(axis=(0, 1))
        if bad.any():  # never stored: a NaN or inf forecast is a failure of that symbol alone
            del results[symbol]
            columns = [name for name, flag in zip(FEATURES, bad) if flag]
            failed[symbol] = (
                f"the forecast of {columns} is not finite (values too large for the model's float32 arithmetic?); "
                "check the bars' magnitudes"
            )
    return results, failed


def forecast_rows(run_id: str, window: Window, forecast: Forecast) -> list[dict]:
    """One row per feature and step: mean, quantiles, share of sample paths above the last observed value."""
    bars = window.bars
    origin = bars["ts"].iat[-1].to_pydatetime()
    last = np.array([bars[feature].iat[-1] for feature in FEATURES], dtype=float)  # [6]
    samples = forecast.samples  # [S, pred_len, 6]
    # Python floats per [feature][step], converted once (tolist) rather than value by value
    above = (samples > last[None, None, :]).mean(axis=0).T.tolist()
    means = forecast.mean.to_numpy(dtype=float).T.tolist()
    levels = [(f"{q:g}", forecast.quantile(q).to_numpy(dtype=float).T.tolist()) for q in forecast.quantiles]
    targets: list[datetime] = list(window.future.to_pydatetime())
    symbol, interval, seed, last = window.symbol, window.item.interval, int(forecast.seed), last.tolist()
    return [
        {
            "run_id": run_id,
            "symbol": symbol,
            "feature": feature,
            "step": step + 1,
            "interval": interval,
            "origin_ts": origin,
            "target_ts": targets[step],
            "last_value": last[f],
            "mean": means[f][step],
            "quantiles": {key: values[f][step] for key, values in levels},
            "prob_above_last": above[f][step],
            "series_seed": seed,
        }
        for f, feature in enumerate(FEATURES)
        for step in range(len(means[0]))
    ]


def predict_series(
    predictor: KronosPredictor,
    params: ForecastParams,
    bars: list[pd.DataFrame],
    past: list[pd.Series],
    future: list[pd.Series],
    seeds: list[int],
    labels: list[str],
) -> list[Forecast]:
    """Forecast several series in one call with ``params``' sampling settings, one seed per series;
    each ``Forecast`` carries the mean, the quantiles and the sample paths."""
    return predictor.forecast(
        bars, past, future, params.pred_len, params.sampling(), params.sample_count, seeds, params.quantiles, labels
    )
