"""Replay a stored forecast run from its record alone, and say per symbol whether it reproduces.

The record holds everything a forecast depends on: each symbol's data window (first and last bar, count
and SHA-256 of the stored bars), the pinned versions with their checksums, every sampling parameter,
the seed, the device and the code version. A replay reads the same bars from the bars table, checks
their hash, fetches the same versions (checksums verified), forecasts the same future bar times with
the same seeds, and compares every stored value. A difference is explained by what changed: the data
window, the weights (``--model``), the device, or, when nothing recorded changed, the code.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from sqlalchemy import select

from kronos_tasks import __version__
from kronos_tasks.data import FEATURES
from kronos_tasks.data.watchlist import WatchItem
from kronos_tasks.errors import ParamsError
from kronos_tasks.forecasting.params import ForecastParams
from kronos_tasks.hashing import window_sha256
from kronos_tasks.inference.params import STREAM_VERSION
from kronos_tasks.storage import get_run, instrument, read_bars, run_windows
from kronos_tasks.storage.models import Forecast

from . import runtime

COMPARED = ("mean", "prob_above_last")  # with every stored quantile


@dataclass
class SymbolReplay:
    """One symbol's replay: ``exact``, ``differs``, ``data_changed`` or ``failed``, with numbers and why."""

    symbol: str
    interval: str
    verdict: str
    values: int = 0
    max_abs: float = 0.0
    max_rel: float = 0.0
    reason: str = ""


@dataclass
class Replay:
    run_id: str
    recorded: dict
    replayed: dict
    symbols: list[SymbolReplay] = field(default_factory=list)

    @property
    def exact(self) -> bool:
        return bool(self.symbols) and all(s.verdict == "exact" for s in self.symbols)


def _stored_rows(run_id: str) -> pd.DataFrame:
    columns = [Forecast.symbol, Forecast.feature, Forecast.step, Forecast.target_ts, Forecast.quantiles]
    columns += [getattr(Forecast, name) for name in (*COMPARED, "series_seed")]
    with runtime.engine().connect() as connection:
        rows = connection.execute(select(*columns).where(Forecast.run_id == run_id)).mappings().all()
    return pd.DataFrame([dict(r) for r in rows])


def _values(rows: pd.DataFrame) -> pd.DataFrame:
    """Stored or replayed rows as one numeric column per compared value, indexed by symbol, feature, step."""
    flat = rows[["symbol", "feature", "step", *COMPARED]].copy()
    quantiles = pd.DataFrame(list(rows["quantiles"]), index=rows.index).add_prefix("q")
    return pd.concat([flat, quantiles], axis=1).set_index(["symbol", "feature", "step"]).sort_index()


def _difference(stored: pd.DataFrame, replayed: pd.DataFrame) -> tuple[int, float, float]:
    a, b = stored.to_numpy(float), replayed.reindex(stored.index)[stored.columns].to_numpy(float)
    gap = np.abs(a - b)
    scale = np.maximum(np.abs(a), 1e-12)
    return a.size, float(np.nanmax(gap)) if gap.size else 0.0, float(np.nanmax(gap / scale)) if gap.size else 0.0


def replay_run(run_id: str, model: str | None = None, device: str | None = None) -> Replay:
    """Re-run the stored forecast ``run_id`` and compare it with what was stored, symbol by symbol.

    ``model`` replays with another registered version (the difference is then the model's); ``device``
    overrides the configured one. Raises ParamsError for a run that is unknown or has nothing to replay.
    """
    from kronos_tasks.forecasting.engine import pinned_predictor, resolve_device
    from kronos_tasks.forecasting.windows import Window, forecast_rows, frame_arrays, predict_windows

    engine, settings = runtime.engine(), runtime.settings()
    run = get_run(engine, run_id)
    if run is None:
        raise ParamsError(f"no stored run {run_id!r}; `kronos-flow runs` lists them.")
    if not (run.extra or {}).get("params"):
        raise ParamsError(
            f"run {run_id} records no resolved parameters (made by an older release); it cannot be replayed."
        )
    params = ForecastParams.from_dict(run.extra["params"])
    registry = runtime.registry()
    pair = registry.resolve(model or f"{run.model_name}/{run.model_version}")  # checksums verified on download
    same_weights = (pair.model_sha256, pair.tokenizer_sha256) == (run.model_sha256, run.tokenizer_sha256)
    target = resolve_device(device or settings.device)
    recorded = {
        "model": f"{run.model_name} v{run.model_version}",
        "model_sha256": run.model_sha256,
        "tokenizer": f"{run.tokenizer_name} v{run.tokenizer_version}",
        "device": run.device,
        "dtype": params.dtype,
        "seed": run.seed,
        "code_version": run.code_version,
        "stream_version": (run.extra or {}).get("stream_version", 1),
    }
    replayed = {
        "model": f"{pair.model_name} v{pair.model_version}",
        "model_sha256": pair.model_sha256,
        "tokenizer": f"{pair.tokenizer_name} v{pair.tokenizer_version}",
        "device": target,
        "dtype": params.dtype,
        "seed": run.seed,
        "code_version": __version__,
        "stream_version": STREAM_VERSION,
    }
    result = Replay(run_id, recorded, replayed)
    stored = _stored_rows(run_id)
    windows = run_windows(engine, run_id)
    if stored.empty or not windows:
        raise ParamsError(f"run {run_id} stored no forecasts with data windows (none succeeded, or it predates them).")

    ready: list[Window] = []
    for w in windows:
        bars = read_bars(engine, w.symbol, w.interval, start=w.first_ts, end=w.last_ts)
        times, values = frame_arrays(bars)
        now = window_sha256(times, values) if len(bars) else ""
        if now != w.sha256:
            result.symbols.append(
                SymbolReplay(
                    w.symbol,
                    w.interval,
                    "data_changed",
                    reason=f"the stored bars from {w.first_ts:%Y-%m-%d %H:%M} to {w.last_ts:%Y-%m-%d %H:%M} UTC "
                    f"changed since the run ({len(bars)} bars now, {w.bars} then; window hash {w.sha256[:12]} then, "
                    f"{now[:12] or 'none'} now): a bar was re-ingested or edited. The difference is in the data, "
                    "not the model.",
                )
            )
            continue
        stored_instrument = instrument(engine, w.symbol, w.interval)
        item = WatchItem(
            w.symbol,
            stored_instrument.exchange or "",
            w.interval,
            timezone=stored_instrument.timezone,
        )
        targets = stored[(stored["symbol"] == w.symbol) & (stored["feature"] == FEATURES[0])].sort_values("step")
        future = pd.DatetimeIndex(pd.to_datetime(targets["target_ts"], utc=True))
        ready.append(Window(item, times, values, future, w.sha256))

    predictor = pinned_predictor(pair, target, params.batch_size, params.dtype)
    predicted, errors = predict_windows(predictor, ready, params, run.seed)
    for window in ready:
        if window.symbol in errors:
            result.symbols.append(
                SymbolReplay(window.symbol, window.item.interval, "failed", reason=errors[window.symbol])
            )
            continue
        replay_rows = pd.DataFrame(forecast_rows(run_id, window, predicted[window.symbol]))
        count, gap, rel = _difference(_values(stored[stored["symbol"] == window.symbol]), _values(replay_rows))
        if gap == 0:
            result.symbols.append(SymbolReplay(window.symbol, window.item.interval, "exact", count))
            continue
        result.symbols.append(
            SymbolReplay(
                window.symbol, window.item.interval, "differs", count, gap, rel, _why(recorded, replayed, same_weights)
            )
        )
    result.symbols.sort(key=lambda s: (s.symbol, s.interval))
    return result


def _why(recorded: dict, replayed: dict, same_weights: bool) -> str:
    if recorded["stream_version"] != replayed["stream_version"]:
        return (
            f"recorded with random stream {recorded['stream_version']}, this build draws stream "
            f"{replayed['stream_version']}: the same seed samples other paths by design"
        )
    if not same_weights:
        return f"other weights: recorded {recorded['model']}, replayed with {replayed['model']}"
    if recorded["device"] != replayed["device"]:
        return (
            f"recorded on {recorded['device']}, replayed on {replayed['device']}: float rounding differs between "
            "devices, and sampled paths can diverge from the first differing draw"
        )
    if recorded["code_version"] != replayed["code_version"]:
        return f"recorded by kronos-flow {recorded['code_version']}, replayed by {replayed['code_version']}"
    return (
        "same weights, data, parameters, seed and device: the decoding or the random stream of this build "
        "differs from the one that made the run (or the CPU's thread count changed the float rounding)"
    )
