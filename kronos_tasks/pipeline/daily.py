"""Task functions of the daily forecast: plan -> ingest per shard -> forecast per shard -> persist -> log -> finish.

Each function takes and returns the typed payloads of ``payloads`` (what Airflow passes between tasks:
ids, counts and small summaries) and can be called without Airflow. The watchlist, per-symbol failures,
windows and forecasts live in the database; the number of shards is fixed by the run, not by the
watchlist's length. A run is identified by its DAG and logical date: re-running that date reuses its
seed and replaces its rows.
"""

from __future__ import annotations

import logging
import socket
import time
from collections import Counter
from datetime import datetime, timezone
from typing import Any

import numpy as np
import pandas as pd

from kronos_tasks import __version__
from kronos_tasks.data.schema import FEATURES, DataError
from kronos_tasks.data.watchlist import load_watchlist, parse_watchlist
from kronos_tasks.errors import KronosFlowError, ParamsError
from kronos_tasks.forecasting.params import ForecastParams
from kronos_tasks.inference.params import STREAM_VERSION, InputError, check_int
from kronos_tasks.registry.cache import cached_pair
from kronos_tasks.registry.listing import pin
from kronos_tasks.storage import (
    calibration_content,
    clear_staging,
    fail_items,
    item_counts,
    item_failures,
    latest_calibration,
    persist_run,
    plan_items,
    reset_shard,
    shard_items,
    stage_forecasts,
    window_arrays,
)

from . import runtime
from .payloads import BatchResult, Failure, IngestSummary, RunPlan, RunSummary

log = logging.getLogger(__name__)


class RunFailed(KronosFlowError, RuntimeError):
    """More symbols failed than the configured share allows; the run's rows are stored all the same."""


MAX_MAP_LENGTH = 1024  # Airflow's [core] max_map_length default: the most mapped tasks one task may feed
FAILURES_SHOWN = 10  # failures a RunSummary carries (all of them are in the database)
FORECAST_CHUNK = 500  # a forecast shard's entries read, decoded and staged at a time
CLOSE = FEATURES.index("close")


def default_shards(settings) -> int:
    """Forecast shards of a run when not given: KRONOS_FORECAST_SHARDS, else one per forecast pool slot
    (KRONOS_GPU_POOL_SLOTS), at least two so that one shard's ingest overlaps another's forecast."""
    return settings.forecast_shards or max(2, settings.gpu_pool_slots)


def plan(
    params: dict[str, Any],
    logical_date: datetime | str,
    dag_id: str,
    dag_run_id: str | None = None,
    max_failed_share: float | None = None,
    max_staleness: int | None = None,
    watchlist: Any = None,
    forecast_shards: int | None = None,
    max_map_length: int = MAX_MAP_LENGTH,
) -> RunPlan:
    """Validate the run's parameters, pin the model once, fix the seed, and store the watchlist as the run's
    entries in ``forecast_shards`` shards.

    Every later task of the run uses exactly these versions and parameters and reads its shard's entries
    from the database; a re-run of the same logical date gets the same seed. More shards than Airflow
    can map (``max_map_length``) fail here, once, with the run recorded as failed.
    """
    runtime.relax_gc()
    settings, engine = runtime.settings(), runtime.engine()
    requested = ForecastParams.from_dict(params)
    share = settings.max_failed_share if max_failed_share is None else max_failed_share
    if isinstance(share, bool) or not isinstance(share, (int, float)) or not 0 <= share <= 1:
        raise ParamsError(f"max_failed_share must be a number between 0 and 1, got {share!r}.")
    try:
        if max_staleness is not None:
            check_int("max_staleness", max_staleness, 0)
        shards = default_shards(settings) if forecast_shards is None else forecast_shards
        check_int("forecast_shards", shards, 1)
    except InputError as exc:
        raise ParamsError(str(exc)) from None
    items = parse_watchlist(watchlist) if watchlist else load_watchlist(settings.watchlist)
    repeated = sorted(symbol for symbol, count in Counter(i.symbol for i in items).items() if count > 1)
    if repeated:
        raise ParamsError(
            f"the watchlist lists {repeated[:5]} at several intervals; a daily run stores one forecast per symbol, "
            "so list each symbol once (run another watchlist for other intervals)."
        )
    origin = runtime.utc(logical_date)
    run_id = f"{dag_id}@{origin.isoformat()}"
    model = requested.model or settings.model_alias
    pinned = pin(settings, model)  # versions and checksums; each forecast task fetches and verifies the weights
    resolved = requested.resolve(pinned.max_context, model, settings.batch_size, seed_key=run_id)
    calibrations = {}
    for interval in sorted({item.interval for item in items}):
        found = latest_calibration(engine, pinned.model_name, pinned.model_version, interval)
        if found is not None:
            calibrations[interval] = found[0]
        else:
            log.warning(
                "%s v%s has no calibration at %s: its %s forecasts are stored raw (calibrated columns empty); "
                "the rollout DAG or `kronos-flow calibrate --model %s` fits one",
                pinned.model_name,
                pinned.model_version,
                interval,
                interval,
                pinned.model_version,
            )
    run = RunPlan(
        run_id=run_id,
        dag_id=dag_id,
        dag_run_id=dag_run_id,
        origin=origin.isoformat(),
        started_at=datetime.now(timezone.utc).isoformat(),
        params=resolved,
        pinned=pinned,
        max_failed_share=float(share),
        max_staleness=max_staleness,
        shards=min(shards, len(items)),
        symbols=len(items),
        calibrations=calibrations,
    )
    if shards > max_map_length:
        reason = (
            f"forecast_shards is {shards}, more than Airflow maps from one task ([core] max_map_length = "
            f"{max_map_length}); lower forecast_shards (shards hold any number of symbols) or raise max_map_length."
        )
        persist_run(
            engine, {**run_row(run, [], "failed", datetime.now(timezone.utc)), "extra": {"error": reason}}, [], []
        )
        raise ParamsError(reason)
    clear_staging(engine, run_id)
    plan_items(engine, run_id, items, run.shards)
    return run


def shard_indices(run: RunPlan) -> list[int]:
    """The shards the run's ingest and forecast tasks map over."""
    return list(range(run.shards))


def ingest(run: RunPlan, shard: int) -> IngestSummary:
    """Ingest the new bars of one shard's entries: from their files (skipped when unchanged), or fetched from
    their vendors up to the run's logical time (never later than now). A symbol that fails is recorded in
    the run's entries, not raised."""
    from .ingest import ingest_fetched, ingest_files, source_file

    runtime.relax_gc()
    settings, engine = runtime.settings(), runtime.engine()
    reset_shard(engine, run.run_id, shard, ("ingest",))
    until = min(pd.Timestamp(run.origin), pd.Timestamp.now("UTC"))
    items = shard_items(engine, run.run_id, shard)
    failed: dict[str, tuple[str, str]] = {}
    files = []
    for item in items:
        if item.source != "files":
            continue
        try:
            files.append((item, source_file(item, settings.data_dir)))
        except DataError as exc:
            failed[item.symbol] = ("ingest", str(exc))
    result, skipped = ingest_files(engine, files)
    for item in items:
        if item.source != "files":
            result.merge(ingest_fetched(engine, item, until))
    failed.update({symbol: ("ingest", reason) for symbol, reason in result.failed.items()})
    written = sum(result.written.values())
    fail_items(engine, run.run_id, failed)
    log.info(
        "shard %d: %d entries, %d bars written, %d files unchanged, %d failed",
        shard,
        len(items),
        written,
        skipped,
        len(failed),
    )
    return IngestSummary(shard, len(items), len(failed), written, skipped)


def forecast(run: RunPlan, shard: int) -> BatchResult:
    """Forecast one shard's entries that ingested and stage their rows and windows; a symbol that fails is
    recorded in the run's entries, not raised.

    The pinned versions are taken from this worker's model cache when they are there with the checksums
    the plan pinned (no registry call, no MLflow import), else fetched from the registry and checked
    against those checksums. Entries are read (one query per chunk), decoded and staged in chunks of
    ``FORECAST_CHUNK``; future bar times and freshness are computed once per calendar, interval and recent
    bar times.
    """
    from kronos_tasks.data.calendar_cache import CalendarCache
    from kronos_tasks.data.freshness import StaleData
    from kronos_tasks.evaluation.calibration import Calibration, annotate
    from kronos_tasks.forecasting.engine import pinned_predictor
    from kronos_tasks.forecasting.windows import forecast_columns, forecast_table, predict_windows, window_from_arrays

    started = time.perf_counter()
    runtime.relax_gc()
    settings, engine = runtime.settings(), runtime.engine()
    threads = runtime.prepare_decoding()
    params, wanted = run.params, run.pinned
    pair = cached_pair(settings.model_cache, wanted) or runtime.registry().resolve(
        f"{wanted.model_name}/{wanted.model_version}"
    )
    if not pair.same_weights(wanted):
        raise RuntimeError(
            f"the registry no longer serves the pinned {wanted.model_name} version "
            f"{wanted.model_version} unchanged; re-run the whole DAG run to pin again."
        )
    predictor = pinned_predictor(pair, settings.device, params.batch_size, params.dtype)
    loaded = time.perf_counter()

    reset_shard(engine, run.run_id, shard, ("stale", "window", "forecast"))
    items = shard_items(engine, run.run_id, shard)
    origin = runtime.utc(run.origin)
    calendars = CalendarCache(run.max_staleness, params.pred_len)
    calibrations = {
        interval: Calibration.from_dict(calibration_content(engine, sha)) for interval, sha in run.calibrations.items()
    }
    failed: dict[str, tuple[str, str]] = {}
    ok, read_seconds, forecast_seconds = 0, 0.0, 0.0
    at, lookback = pd.Timestamp(origin), params.lookback
    no_bars = (pd.DatetimeIndex([], tz="UTC"), np.zeros((len(FEATURES), 0)))
    # Entries go through reading, decoding and staging FORECAST_CHUNK at a time, so a shard's memory does not
    # grow with its size; an empty shard still replaces what an earlier attempt of it staged.
    for start in range(0, len(items), FORECAST_CHUNK) or [0]:
        began = time.perf_counter()
        windows = []
        chunk = items[start : start + FORECAST_CHUNK]
        history = {
            item.symbol: (times, values) for item, times, values in window_arrays(engine, chunk, origin, lookback)
        }
        for item in chunk:
            times, values = history.pop(item.symbol, no_bars)
            try:
                calendars.check_fresh(item, pd.Series(times, copy=False), at)
                windows.append(window_from_arrays(item, times, values, params, pair.max_context, calendars.future))
            except StaleData as exc:
                failed[item.symbol] = ("stale", str(exc))
            except DataError as exc:
                failed[item.symbol] = ("window", str(exc))
        read = time.perf_counter()
        predicted, errors = predict_windows(predictor, windows, params, run.seed)
        forecast_seconds += time.perf_counter() - read
        read_seconds += read - began
        failed.update({symbol: ("forecast", reason) for symbol, reason in errors.items()})
        parts = [
            annotate(
                forecast_columns(window, predicted[window.symbol]),
                window.values[CLOSE],
                calibrations.get(window.item.interval),
                params.quantiles,
            )
            for window in windows
            if window.symbol in predicted
        ]
        done = [w.record() for w in windows if w.symbol in predicted]
        rows = forecast_table(parts) if parts else []
        stage_forecasts(engine, run.run_id, f"shard-{shard:04d}", rows, done, append=start > 0)
        ok += len(predicted)
    fail_items(engine, run.run_id, failed)
    return BatchResult(
        shard=shard,
        ok=ok,
        failed=len(failed),
        bars=ok * params.sample_count * params.pred_len,
        forecast_seconds=forecast_seconds,
        load_seconds=loaded - started,
        read_seconds=read_seconds,
        device=str(predictor.device),
        host=socket.gethostname(),
        threads=threads,
    )


def run_row(run: RunPlan, results: list[BatchResult], status: str, finished_at: datetime) -> dict[str, Any]:
    """The forecast_runs row of a run from its plan and its shards' results (its windows' hash is added by
    ``persist``, which reads them)."""
    params = run.params
    seconds = sum(r.forecast_seconds for r in results)
    bars = sum(r.bars for r in results)
    return {
        "run_id": run.run_id,
        "kind": "daily",
        "dag_id": run.dag_id,
        "logical_date": runtime.utc(run.origin),
        "status": status,
        "started_at": runtime.utc(run.started_at),
        "finished_at": finished_at,
        "lookback": params.lookback,
        "pred_len": params.pred_len,
        "temperature": params.T,
        "top_k": params.top_k,
        "top_p": params.top_p,
        "sample_count": params.sample_count,
        "quantiles": list(params.quantiles),
        "seed": run.seed,
        "batch_size": params.batch_size,
        "device": ",".join(sorted({r.device for r in results})) or "none",
        **run.pinned.audit_fields(),
        "mlflow_run_id": None,
        "data_window_hash": None,
        "calibrations": dict(run.calibrations),
        "code_version": __version__,
        "symbols_ok": sum(r.ok for r in results),
        "symbols_failed": sum(r.failed for r in results),
        "bars_per_second": bars / seconds if seconds else None,
        "timings": {
            "forecast_seconds": seconds,
            "load_seconds": sum(r.load_seconds for r in results),
            "read_seconds": sum(r.read_seconds for r in results),
        },
        "extra": {
            "dag_run_id": run.dag_run_id,
            "params": params.to_dict(),
            "symbols": run.symbols,
            "shards": run.shards,
            "hosts": sorted({r.host for r in results}),
            "threads": sorted({r.threads for r in results}),
            "trained_model": run.pinned.trained,
            "stream_version": STREAM_VERSION,
        },
    }


def persist(run: RunPlan, results: list[BatchResult]) -> RunSummary:
    """Write the run, its staged forecasts and windows and its failures in one transaction -> its summary."""
    runtime.relax_gc()
    engine = runtime.engine()
    now = datetime.now(timezone.utc)
    total, failed = item_counts(engine, run.run_id)
    ok = sum(r.ok for r in results)
    status = "success" if not failed else ("failed" if not ok else "partial")
    row = run_row(run, results, status, now)
    row["symbols_failed"] = failed  # entries that failed at ingest never reached a forecast task's count
    rows = persist_run(engine, row, None, None)
    first = item_failures(engine, run.run_id, FAILURES_SHOWN)
    return RunSummary(
        run_id=run.run_id,
        status=status,
        symbols_ok=ok,
        symbols_failed=failed,
        failures={symbol: Failure(stage, reason) for symbol, stage, reason in first},
        forecast_rows=rows,
        forecast_seconds=row["timings"]["forecast_seconds"],
        bars_per_second=row["bars_per_second"],
        failed_share=failed / total if total else 0.0,
        max_failed_share=run.max_failed_share,
        devices=tuple(sorted({r.device for r in results})),
    )


def finish(summary: RunSummary) -> RunSummary:
    """Fail the run when more symbols failed than its plan allows (after everything was stored and logged)."""
    if summary.failed_share > summary.max_failed_share:
        reasons = "; ".join(f"{s}: {f.reason}" for s, f in summary.failures.items())
        more = summary.symbols_failed - len(summary.failures)
        raise RunFailed(
            f"{summary.symbols_failed} symbol(s) failed ({summary.failed_share:.0%} > "
            f"{summary.max_failed_share:.0%} allowed): {reasons}"
            + (f"; and {more} more (kronos-flow runs)" if more > 0 else "")
        )
    log.info(
        "run %s: %d symbol(s) forecast, %d failed, %d rows",
        summary.run_id,
        summary.symbols_ok,
        summary.symbols_failed,
        summary.forecast_rows,
    )
    return summary
