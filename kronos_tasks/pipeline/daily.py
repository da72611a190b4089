"""Task functions of the daily forecast: plan and split -> ingest per shard -> forecast per shard -> persist -> log
-> finish.

Each function takes and returns the typed payloads of ``payloads`` (what Airflow passes between tasks)
and can be called without Airflow. A run is identified by its DAG and logical date: re-running that
date reuses its seed and replaces its rows.
"""

from __future__ import annotations

import logging
import socket
import time
from datetime import datetime, timezone
from typing import Any

import pandas as pd

from kronos_tasks import __version__
from kronos_tasks.data import DataError, Interval
from kronos_tasks.data.freshness import StaleData, check_fresh
from kronos_tasks.data.watchlist import load_watchlist, parse_watchlist
from kronos_tasks.errors import KronosFlowError, ParamsError
from kronos_tasks.forecasting.params import ForecastParams
from kronos_tasks.hashing import combine
from kronos_tasks.inference.params import InputError, check_int
from kronos_tasks.storage import clear_staging, persist_run, read_bars, stage_forecasts

from . import runtime
from .ingest import ingest_fetched, ingest_file, resume_point, source_file
from .payloads import BatchResult, Failure, IngestedBatch, RunPlan, RunSummary, Shard

log = logging.getLogger(__name__)


class RunFailed(KronosFlowError, RuntimeError):
    """More symbols failed than the configured share allows; the run's rows are stored all the same."""


def plan(
    params: dict[str, Any],
    logical_date: datetime | str,
    dag_id: str,
    dag_run_id: str | None = None,
    max_failed_share: float | None = None,
    max_staleness: int | None = None,
) -> RunPlan:
    """Validate the run's parameters, pin the model once and fix the seed.

    Every later task of the run uses exactly these versions and parameters; a re-run of the same
    logical date gets the same seed.
    """
    settings = runtime.settings()
    requested = ForecastParams.from_dict(params)
    share = settings.max_failed_share if max_failed_share is None else max_failed_share
    if isinstance(share, bool) or not isinstance(share, (int, float)) or not 0 <= share <= 1:
        raise ParamsError(f"max_failed_share must be a number between 0 and 1, got {share!r}.")
    if max_staleness is not None:
        try:
            check_int("max_staleness", max_staleness, 0)
        except InputError as exc:
            raise ParamsError(str(exc)) from None
    origin = runtime.utc(logical_date)
    run_id = f"{dag_id}@{origin.isoformat()}"
    model = requested.model or settings.model_alias
    pinned = runtime.registry().resolve(model)
    resolved = requested.resolve(pinned.max_context, model, settings.batch_size, seed_key=run_id)
    clear_staging(runtime.engine(), run_id)
    return RunPlan(
        run_id=run_id,
        dag_id=dag_id,
        dag_run_id=dag_run_id,
        origin=origin.isoformat(),
        started_at=datetime.now(timezone.utc).isoformat(),
        params=resolved,
        pinned=pinned,
        max_failed_share=float(share),
        max_staleness=max_staleness,
    )


def split_watchlist(watchlist: Any, symbols_per_task: int | None = None) -> list[Shard]:
    """The run's watchlist (given, else the KRONOS_WATCHLIST file), validated and cut into shards of
    ``symbols_per_task`` consecutive entries (default: KRONOS_SYMBOLS_PER_TASK)."""
    settings = runtime.settings()
    items = parse_watchlist(watchlist) if watchlist else load_watchlist(settings.watchlist)
    size = settings.symbols_per_task if symbols_per_task is None else symbols_per_task
    try:
        check_int("symbols_per_task", size, 1)
    except InputError as exc:
        raise ParamsError(str(exc)) from None
    return [Shard(i, tuple(items[start : start + size])) for i, start in enumerate(range(0, len(items), size))]


def ingest(run: RunPlan, shard: Shard) -> IngestedBatch:
    """Ingest the new bars of one shard's symbols: from their files, or fetched from their vendors up to the
    run's logical time (never later than now). A symbol that fails is reported, not raised."""
    settings, engine = runtime.settings(), runtime.engine()
    until = min(pd.Timestamp(run.origin), pd.Timestamp.now("UTC"))
    written, failed = {}, {}
    for item in shard.items:
        if item.source == "files":
            try:
                path = source_file(item, settings.data_dir)
            except DataError as exc:
                failed[item.symbol] = str(exc)
                continue
            since = resume_point(engine, item.symbol, item.interval)
            result = ingest_file(
                engine, path, symbol=item.symbol, interval=item.interval, exchange=item.exchange, since=since
            )
        else:
            result = ingest_fetched(engine, item, until)
        written[item.symbol] = result.written.get(item.symbol, 0)
        if item.symbol in result.failed:
            failed[item.symbol] = result.failed[item.symbol]
        log.info("ingested %s from %s: %s", item.symbol, item.source, result.render())
    return IngestedBatch(shard, written, failed)


def forecast(run: RunPlan, ingested: IngestedBatch) -> BatchResult:
    """Forecast the symbols of an ingested shard and stage their rows; a symbol that fails is reported, not raised.

    Symbols whose ingest failed are not forecast. The pinned versions are fetched (or taken from the
    cache) on this worker and checked against the checksums pinned by the plan.
    """
    from kronos_tasks.forecasting.engine import pinned_predictor
    from kronos_tasks.forecasting.windows import forecast_rows, make_window, predict_windows

    started = time.perf_counter()
    settings, engine = runtime.settings(), runtime.engine()
    params, wanted = run.params, run.pinned
    pair = runtime.registry().resolve(f"{wanted.model_name}/{wanted.model_version}")
    if not pair.same_weights(wanted):
        raise RuntimeError(
            f"the registry no longer serves the pinned {wanted.model_name} version "
            f"{wanted.model_version} unchanged; re-run the whole DAG run to pin again."
        )
    predictor = pinned_predictor(pair, settings.device, params.batch_size)
    loaded = time.perf_counter()

    shard = ingested.shard
    failed = {symbol: Failure("ingest", reason) for symbol, reason in ingested.failed.items()}
    windows = []
    origin = runtime.utc(run.origin)
    for item in shard.items:
        if item.symbol in failed:
            continue
        try:
            bars = read_bars(engine, item.symbol, item.interval, end=origin, limit=params.lookback)
            interval = Interval.parse(item.interval)
            check_fresh(item.symbol, bars["ts"], pd.Timestamp(origin), interval, item.exchange, run.max_staleness)
            windows.append(make_window(item, bars, params, pair.max_context))
        except StaleData as exc:
            failed[item.symbol] = Failure("stale", str(exc))
        except DataError as exc:
            failed[item.symbol] = Failure("window", str(exc))
    predicted, errors = predict_windows(predictor, windows, params, run.seed)
    failed.update({symbol: Failure("forecast", reason) for symbol, reason in errors.items()})
    rows = [
        row
        for window in windows
        if window.symbol in predicted
        for row in forecast_rows(run.run_id, window, predicted[window.symbol])
    ]
    forecast_seconds = time.perf_counter() - loaded
    read = [w.record() for w in windows if w.symbol in predicted]
    stage_forecasts(engine, run.run_id, f"shard-{shard.index:04d}", rows, read)
    return BatchResult(
        shard=shard.index,
        ok=tuple(sorted(predicted)),
        failed=failed,
        hashes={w.symbol: w.sha256 for w in windows if w.symbol in predicted},
        bars=len(predicted) * params.sample_count * params.pred_len,
        forecast_seconds=forecast_seconds,
        load_seconds=loaded - started,
        device=str(predictor.device),
        host=socket.gethostname(),
    )


def run_row(
    run: RunPlan, shards: list[Shard], results: list[BatchResult], status: str, finished_at: datetime
) -> dict[str, Any]:
    """The forecast_runs row of a run from its plan, its shards and their results."""
    params = run.params
    ok = [s for r in results for s in r.ok]
    failed = sum(len(r.failed) for r in results)
    hashes = {s: h for r in results for s, h in r.hashes.items()}
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
        "data_window_hash": combine(hashes) if hashes else None,
        "code_version": __version__,
        "symbols_ok": len(ok),
        "symbols_failed": failed,
        "bars_per_second": bars / seconds if seconds else None,
        "timings": {"forecast_seconds": seconds, "load_seconds": sum(r.load_seconds for r in results)},
        "extra": {
            "dag_run_id": run.dag_run_id,
            "params": params.to_dict(),
            "watchlist": [item.to_dict() for shard in shards for item in shard.items],
            "window_hashes": hashes,
            "hosts": sorted({r.host for r in results}),
            "trained_model": run.pinned.trained,
            "shards": len(shards),
        },
    }


def persist(run: RunPlan, shards: list[Shard], results: list[BatchResult]) -> RunSummary:
    """Write the run, its staged forecasts and its failures in one transaction -> the run's summary."""
    now = datetime.now(timezone.utc)
    failed: dict[str, Failure] = {s: f for r in results for s, f in r.failed.items()}
    ok = [s for r in results for s in r.ok]
    status = "success" if not failed else ("failed" if not ok else "partial")
    row = run_row(run, shards, results, status, now)
    failures = [
        {"run_id": run.run_id, "symbol": s, "stage": f.stage, "reason": f.reason[:4000], "recorded_at": now}
        for s, f in sorted(failed.items())
    ]
    rows = persist_run(runtime.engine(), row, None, failures)
    total = sum(len(shard.items) for shard in shards)
    return RunSummary(
        run_id=run.run_id,
        status=status,
        symbols_ok=len(ok),
        symbols_failed=len(failed),
        failures=failed,
        forecast_rows=rows,
        forecast_seconds=row["timings"]["forecast_seconds"],
        bars_per_second=row["bars_per_second"],
        failed_share=len(failed) / total if total else 0.0,
        max_failed_share=run.max_failed_share,
        devices=tuple(sorted({r.device for r in results})),
    )


def finish(summary: RunSummary) -> RunSummary:
    """Fail the run when more symbols failed than its plan allows (after everything was stored and logged)."""
    if summary.failed_share > summary.max_failed_share:
        reasons = "; ".join(f"{s}: {f.reason}" for s, f in list(summary.failures.items())[:10])
        raise RunFailed(
            f"{summary.symbols_failed} symbol(s) failed ({summary.failed_share:.0%} > "
            f"{summary.max_failed_share:.0%} allowed): {reasons}"
        )
    log.info(
        "run %s: %d symbol(s) forecast, %d failed, %d rows",
        summary.run_id,
        summary.symbols_ok,
        summary.symbols_failed,
        summary.forecast_rows,
    )
    return summary
