"""Task functions of the daily forecast: plan -> resolve -> ingest -> forecast -> persist -> log -> finish.

Each function takes and returns plain JSON-able values (what Airflow passes between tasks) and can be
called without Airflow. A run is identified by its DAG and logical date: re-running that date reuses
its seed and replaces its rows.
"""

from __future__ import annotations

import logging
import socket
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from kronos_tasks import __version__
from kronos_tasks.data import DataError
from kronos_tasks.hashing import combine
from kronos_tasks.inference import KronosPredictor, derive_seed
from kronos_tasks.registry import PinnedPair
from kronos_tasks.storage import clear_staging, persist_run, read_bars, stage_forecasts
from kronos_tasks.storage.bars import instrument

from . import runtime
from .forecasting import forecast_rows, make_window, predict_windows
from .ingest import ingest_file
from .params import ForecastParams, WatchItem, load_watchlist, parse_watchlist

log = logging.getLogger(__name__)

INGEST_OVERLAP_BARS = 10  # bars before the last stored one that are re-read, so vendor corrections land


class RunFailed(RuntimeError):
    """More symbols failed than the configured share allows; the run's rows are stored all the same."""


def _chunks(items: list, size: int) -> list[list]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def plan(
    params: dict[str, Any],
    watchlist: Any,
    logical_date: datetime | str,
    dag_id: str,
    dag_run_id: str | None = None,
    ingest_chunk_size: int = 50,
) -> dict[str, Any]:
    """Validate the run's parameters and watchlist, fix its seed and split the work into chunks and batches."""
    settings = runtime.settings()
    forecast_params = ForecastParams.from_dict(params)
    items = parse_watchlist(watchlist) if watchlist else load_watchlist(settings.watchlist)
    origin = runtime.utc(logical_date)
    run_id = f"{dag_id}@{origin.isoformat()}"
    seed = forecast_params.seed if forecast_params.seed is not None else derive_seed(0, run_id)
    clear_staging(runtime.engine(), run_id)
    entries = [item.to_dict() for item in items]
    return {
        "run_id": run_id,
        "dag_id": dag_id,
        "dag_run_id": dag_run_id,
        "origin": origin.isoformat(),
        "seed": seed,
        "params": forecast_params.to_dict(),
        "watchlist": entries,
        "started_at": datetime.now(timezone.utc).isoformat(),
        "ingest_chunks": _chunks(entries, ingest_chunk_size),
        "forecast_batches": [
            {"batch": f"batch-{i:04d}", "items": chunk}
            for i, chunk in enumerate(_chunks(entries, forecast_params.batch_size))
        ],
    }


def resolve_model(ref: str) -> dict[str, Any]:
    """Pin the model reference (alias or version) once per run: every batch then uses exactly these versions."""
    return runtime.registry().resolve(ref).to_dict()


def _source_file(item: WatchItem, data_dir: Path) -> Path:
    if item.file:
        path = Path(item.file)
        return path if path.is_absolute() else data_dir / path
    for suffix in (".csv", ".parquet", ".csv.gz"):
        for name in (f"{item.symbol}_{item.interval}{suffix}", f"{item.symbol}{suffix}"):
            if (data_dir / name).is_file():
                return data_dir / name
    raise DataError(
        f"{item.symbol}: no file {item.symbol}_{item.interval}.csv (or .parquet) in {data_dir}; "
        "add one or set `file` in the watchlist."
    )


def ingest_chunk(entries: list[dict[str, Any]]) -> dict[str, Any]:
    """Ingest the new bars of some watchlist symbols -> {"written": {symbol: rows}, "failed": {symbol: reason}}."""
    settings, engine = runtime.settings(), runtime.engine()
    written, failed = {}, {}
    for entry in entries:
        item = WatchItem(**entry)
        try:
            path = _source_file(item, settings.data_dir)
            known = instrument(engine, item.symbol, item.interval)
            since = None
            if known is not None:
                last = read_bars(engine, item.symbol, item.interval, limit=INGEST_OVERLAP_BARS)
                since = last["ts"].iloc[0] if len(last) else None
            result = ingest_file(
                engine, path, symbol=item.symbol, interval=item.interval, exchange=item.exchange, since=since
            )
        except DataError as exc:
            failed[item.symbol] = str(exc)
            continue
        written[item.symbol] = result.written.get(item.symbol, 0)
        if item.symbol in result.failed:
            failed[item.symbol] = result.failed[item.symbol]
        log.info("ingested %s: %s", item.symbol, result.render())
    return {"written": written, "failed": failed}


def forecast_batch(
    run: dict[str, Any], pinned: dict[str, Any], batch: dict[str, Any], skip: list[str] | None = None
) -> dict[str, Any]:
    """Forecast one batch of symbols and stage the rows; a symbol that fails is reported, not raised.

    The pinned versions are fetched (or taken from the cache) on this worker and checked against the
    checksums pinned at the start of the run.
    """
    started = time.perf_counter()
    settings, engine = runtime.settings(), runtime.engine()
    params = ForecastParams.from_dict(run["params"])
    wanted = PinnedPair.from_dict(pinned)
    pair = runtime.registry().resolve(f"{wanted.model_name}/{wanted.model_version}")
    if (pair.model_sha256, pair.tokenizer_sha256, pair.tokenizer_version) != (
        wanted.model_sha256,
        wanted.tokenizer_sha256,
        wanted.tokenizer_version,
    ):
        raise RuntimeError(
            f"the registry no longer serves the pinned {wanted.model_name} version "
            f"{wanted.model_version} unchanged; re-run the whole DAG run to pin again."
        )
    device = runtime.torch_device(settings.device)
    tokenizer, model = pair.load(device)
    predictor = KronosPredictor(
        model, tokenizer, device=device, max_context=pair.max_context, batch_size=params.batch_size
    )
    loaded = time.perf_counter()

    skip = set(skip or [])
    failed: dict[str, dict[str, str]] = {}
    windows = []
    origin = runtime.utc(run["origin"])
    for entry in batch["items"]:
        item = WatchItem(**entry)
        if item.symbol in skip:
            continue
        try:
            bars = read_bars(engine, item.symbol, item.interval, end=origin, limit=params.window(pair.max_context))
            windows.append(make_window(item, bars, params, pair.max_context))
        except DataError as exc:
            failed[item.symbol] = {"stage": "window", "reason": str(exc)}
    predicted, errors = predict_windows(predictor, windows, params, run["seed"])
    failed.update({symbol: {"stage": "forecast", "reason": reason} for symbol, reason in errors.items()})
    rows = [
        row
        for window in windows
        if window.symbol in predicted
        for row in forecast_rows(run["run_id"], window, predicted[window.symbol])
    ]
    forecast_seconds = time.perf_counter() - loaded
    stage_forecasts(engine, run["run_id"], batch["batch"], rows)
    return {
        "batch": batch["batch"],
        "ok": sorted(predicted),
        "failed": failed,
        "hashes": {w.symbol: w.sha256 for w in windows if w.symbol in predicted},
        "bars": len(predicted) * params.sample_count * params.pred_len,
        "forecast_seconds": forecast_seconds,
        "load_seconds": loaded - started,
        "device": device,
        "host": socket.gethostname(),
    }


def persist(
    run: dict[str, Any], pinned: dict[str, Any], ingested: list[dict[str, Any]], forecasted: list[dict[str, Any]]
) -> dict[str, Any]:
    """Write the run, its staged forecasts and its failures in one transaction -> the run's summary."""
    settings = runtime.settings()
    params = ForecastParams.from_dict(run["params"])
    pair = PinnedPair.from_dict(pinned)
    now = datetime.now(timezone.utc)
    failed: dict[str, dict[str, str]] = {}
    for result in ingested:
        for symbol, reason in result["failed"].items():
            failed.setdefault(symbol, {"stage": "ingest", "reason": reason})
    for result in forecasted:
        for symbol, failure in result["failed"].items():
            failed.setdefault(symbol, failure)
    ok = sorted(s for result in forecasted for s in result["ok"] if s not in failed)
    hashes = {s: h for result in forecasted for s, h in result["hashes"].items()}
    seconds = sum(r["forecast_seconds"] for r in forecasted)
    bars = sum(r["bars"] for r in forecasted)
    total = len(run["watchlist"])
    status = "success" if not failed else ("failed" if not ok else "partial")
    row = {
        "run_id": run["run_id"],
        "kind": "daily",
        "dag_id": run["dag_id"],
        "logical_date": runtime.utc(run["origin"]),
        "status": status,
        "started_at": runtime.utc(run["started_at"]),
        "finished_at": now,
        "lookback": params.window(pair.max_context),
        "pred_len": params.pred_len,
        "temperature": params.T,
        "top_k": params.top_k,
        "top_p": params.top_p,
        "sample_count": params.sample_count,
        "quantiles": list(params.quantiles),
        "seed": run["seed"],
        "max_context": pair.max_context,
        "batch_size": params.batch_size,
        "device": ",".join(sorted({r["device"] for r in forecasted})) or "none",
        "model_name": pair.model_name,
        "model_version": pair.model_version,
        "model_sha256": pair.model_sha256,
        "tokenizer_name": pair.tokenizer_name,
        "tokenizer_version": pair.tokenizer_version,
        "tokenizer_sha256": pair.tokenizer_sha256,
        "model_alias": pair.alias,
        "mlflow_run_id": None,
        "data_window_hash": combine(hashes) if hashes else None,
        "code_version": __version__,
        "symbols_ok": len(ok),
        "symbols_failed": len(failed),
        "bars_per_second": bars / seconds if seconds else None,
        "timings": {"forecast_seconds": seconds, "load_seconds": sum(r["load_seconds"] for r in forecasted)},
        "extra": {
            "dag_run_id": run["dag_run_id"],
            "params": run["params"],
            "watchlist": run["watchlist"],
            "window_hashes": hashes,
            "hosts": sorted({r["host"] for r in forecasted}),
            "trained_model": pair.trained,
        },
    }
    failures = [
        {"run_id": run["run_id"], "symbol": s, "stage": f["stage"], "reason": f["reason"][:4000], "recorded_at": now}
        for s, f in sorted(failed.items())
    ]
    rows = persist_run(runtime.engine(), row, None, failures)
    return {
        "run_id": run["run_id"],
        "status": status,
        "symbols_ok": ok,
        "symbols_failed": failed,
        "failed_share": len(failed) / total if total else 0.0,
        "forecast_rows": rows,
        "bars_per_second": row["bars_per_second"],
        "seconds": seconds,
        "max_failed_share": settings.max_failed_share,
    }


def finish(summary: dict[str, Any], max_failed_share: float | None = None) -> dict[str, Any]:
    """Fail the run when more symbols failed than allowed (after everything was stored and logged)."""
    limit = summary["max_failed_share"] if max_failed_share is None else max_failed_share
    if summary["failed_share"] > limit:
        reasons = "; ".join(f"{s}: {f['reason']}" for s, f in list(summary["symbols_failed"].items())[:10])
        raise RunFailed(
            f"{len(summary['symbols_failed'])} symbol(s) failed ({summary['failed_share']:.0%} > "
            f"{limit:.0%} allowed): {reasons}"
        )
    log.info(
        "run %s: %d symbol(s) forecast, %d failed, %d rows",
        summary["run_id"],
        len(summary["symbols_ok"]),
        len(summary["symbols_failed"]),
        summary["forecast_rows"],
    )
    return summary
