"""From stored bars to forecast rows: windows, future bar times, batched prediction, per-symbol isolation."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from kronos_tasks.data import FEATURES, DataError, Interval, future_timestamps
from kronos_tasks.data.watchlist import WatchItem
from kronos_tasks.errors import KronosFlowError
from kronos_tasks.hashing import window_sha256
from kronos_tasks.inference.params import derive_seed
from kronos_tasks.inference.predictor import Forecast, KronosPredictor

from .params import ForecastParams

log = logging.getLogger(__name__)


@dataclass
class Window:
    """The history one symbol's forecast reads, and the times of the bars it forecasts."""

    item: WatchItem
    times: pd.DatetimeIndex  # UTC, oldest first
    values: np.ndarray  # [features, bars] float64, FEATURES order
    future: pd.DatetimeIndex  # UTC
    sha256: str
    bars: pd.DataFrame = field(init=False, repr=False)  # ts + features: what the predictor reads

    def __post_init__(self):
        self.bars = pd.DataFrame({"ts": self.times, **dict(zip(FEATURES, self.values))})

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
            "first_ts": self.times[0].to_pydatetime(),
            "last_ts": self.times[-1].to_pydatetime(),
            "bars": len(self.times),
            "sha256": self.sha256,
        }


def frame_arrays(bars: pd.DataFrame) -> tuple[pd.DatetimeIndex, np.ndarray]:
    """A frame of bars (``ts`` aware + the features) as ``Window``'s times and values [features, bars]."""
    return pd.DatetimeIndex(bars["ts"]), np.array([bars[f].to_numpy(np.float64) for f in FEATURES]).reshape(
        len(FEATURES), len(bars)
    )


def local_times(stamps, timezone: str) -> pd.Series:
    """UTC timestamps as naive wall-clock times in ``timezone``: what the model's time features use."""
    return pd.Series(pd.DatetimeIndex(stamps).tz_convert(timezone).tz_localize(None))


def make_window(
    item: WatchItem, bars: pd.DataFrame, params: ForecastParams, max_context: int, future_times=future_timestamps
) -> Window:
    """The last ``params.window(max_context)`` bars and the next ``pred_len`` bar times (from ``future_times``,
    ``calendars.future_timestamps`` or a cache of it); DataError if unusable."""
    return window_from_arrays(item, *frame_arrays(bars), params, max_context, future_times)


def window_from_arrays(
    item: WatchItem,
    times: pd.DatetimeIndex,
    values: np.ndarray,
    params: ForecastParams,
    max_context: int,
    future_times=future_timestamps,
) -> Window:
    """``make_window`` of bars given as times (UTC) and values [features, bars], as the database hands a
    shard's windows over: the window is cut and hashed as arrays, and its frame built once."""
    keep = params.window(max_context)
    times, values = times[-keep:], values[:, -keep:]
    if len(times) < params.min_history:
        raise DataError(
            f"{item.symbol}: {len(times)} bar(s) before the forecast origin, min_history is "
            f"{params.min_history}; ingest more history or lower min_history."
        )
    future = future_times(
        times[-1], params.pred_len, Interval.parse(item.interval), item.exchange, pd.Series(times, copy=False)
    )
    return Window(item, times, values, future, window_sha256(times, values))


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


def forecast_columns(window: Window, forecast: Forecast) -> dict[str, np.ndarray]:
    """One symbol's forecast rows as columns, one row per feature and step (features in ``FEATURES`` order,
    steps 1..pred_len within each): symbol, feature, step, interval, origin_ts and target_ts (UTC), last_value,
    mean, ``quantiles`` [rows, levels] in ``forecast.quantiles``' order, prob_above_last (the share of sample
    paths above last_value), series_seed, and the quantiles' level names as ``levels`` ("0.1", ...)."""
    samples = forecast.samples  # [S, pred_len, 6]
    steps, features = samples.shape[1], len(FEATURES)
    rows = steps * features
    last = window.values[:, -1]  # [6]
    return {
        "symbol": np.full(rows, window.symbol, dtype=object),
        "feature": np.repeat(np.array(FEATURES, dtype=object), steps),
        "step": np.tile(np.arange(1, steps + 1), features),
        "interval": np.full(rows, window.item.interval, dtype=object),
        "origin_ts": np.full(rows, _utc_micros(window.times[-1:])[0]),
        "target_ts": np.tile(_utc_micros(window.future), features),
        "last_value": np.repeat(last, steps),
        # [pred_len, 6] -> [6, pred_len] -> rows, feature-major like every column here
        "mean": forecast.mean.to_numpy(float).T.ravel(),
        "quantiles": np.stack([forecast.quantile(q).to_numpy(float).T.ravel() for q in forecast.quantiles], axis=1),
        "prob_above_last": (samples > last).mean(axis=0).T.ravel(),
        "series_seed": np.full(rows, int(forecast.seed), dtype=np.int64),
        "levels": np.array([f"{q:g}" for q in forecast.quantiles], dtype=object),
    }


def _utc_micros(stamps: pd.DatetimeIndex) -> np.ndarray:
    """Microseconds since the epoch of aware times: an aware index's integers are UTC whatever its zone, so no
    conversion (which costs more than the rest of a symbol's rows)."""
    if stamps.tz is None:
        raise ValueError("forecast bar times must carry a time zone")
    return stamps.as_unit("us").asi8


def forecast_table(parts: list[dict[str, np.ndarray]]):
    """Several symbols' ``forecast_columns`` (all or none with ``calibration.annotate``'s columns) as one Arrow
    table of forecast rows: quantile columns as structs keyed by level ("0.1", ...), null where a row has
    none; timestamps in UTC."""
    import pyarrow as pa

    def joined(name: str) -> np.ndarray:
        return np.concatenate([part[name] for part in parts])

    def stamps(name: str):
        return pa.array(joined(name), pa.timestamp("us", tz="UTC"))

    def levels(name: str, keys: np.ndarray):
        values = joined(name)  # [rows, levels]
        present = joined(f"{name}_present") if f"{name}_present" in parts[0] else None
        return pa.StructArray.from_arrays(
            [pa.array(values[:, i]) for i in range(values.shape[1])],
            names=list(keys),
            mask=None if present is None else pa.array(~present),
        )

    keys = parts[0]["levels"]
    if any(list(part["levels"]) != list(keys) for part in parts):
        raise ValueError("forecast_table: the parts have different quantile levels")
    columns = {
        "symbol": pa.array(joined("symbol"), pa.string()),
        "feature": pa.array(joined("feature"), pa.string()),
        "step": pa.array(joined("step"), pa.int32()),
        "interval": pa.array(joined("interval"), pa.string()),
        "origin_ts": stamps("origin_ts"),
        "target_ts": stamps("target_ts"),
        "last_value": pa.array(joined("last_value")),
        "mean": pa.array(joined("mean")),
        "quantiles": levels("quantiles", keys),
        "prob_above_last": pa.array(joined("prob_above_last")),
        "series_seed": pa.array(joined("series_seed"), pa.int64()),
    }
    if "calibrated_quantiles" in parts[0]:
        present = joined("calibrated_quantiles_present")
        columns["calibrated_quantiles"] = levels("calibrated_quantiles", parts[0]["calibrated_levels"])
        columns["calibrated_prob_above_last"] = pa.array(joined("calibrated_prob_above_last"), mask=~present)
        columns["baseline_quantiles"] = levels("baseline_quantiles", parts[0]["baseline_levels"])
    return pa.table(columns)


def forecast_rows(run_id: str, window: Window, forecast: Forecast) -> list[dict]:
    """One symbol's forecast rows (``forecast_columns``) as dicts, each with ``run_id``."""
    return [{"run_id": run_id, **row} for row in forecast_table([forecast_columns(window, forecast)]).to_pylist()]


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
