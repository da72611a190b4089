"""MLflow records of forecast runs, as MLflow shows them natively.

One MLflow run per forecast run, named by date, model version and symbol count, with the resolved
parameters; each symbol's data window as a dataset input (digest = its stored window hash); the
registered versions' logged models as model inputs, and the run's metrics logged against the model's
logged model, so that the version's page leads to the runs that used it; a description with links to the
versions and the windows; the forecasts, the failures and fan charts as artifacts.
"""

from __future__ import annotations

import json
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path

import numpy as np
import pandas as pd
from mlflow.entities import Dataset, DatasetInput, InputTag, LoggedModelInput, Metric
from sqlalchemy import BigInteger, Integer, String, Text, select

from kronos_tasks.inference.params import STREAM_VERSION
from kronos_tasks.registry.mlflow_setup import client, ensure_experiment
from kronos_tasks.registry.pinned import PinnedPair
from kronos_tasks.registry.runs import finish_run, start_run
from kronos_tasks.settings import redact
from kronos_tasks.storage import get_run, instrument, item_failures, read_bars, run_windows, update_run
from kronos_tasks.storage.db import copy_out_csv
from kronos_tasks.storage.models import Forecast, ForecastWindow, UtcDateTime, bulk_utc, utc_index

from . import runtime
from .payloads import RunPlan, RunSummary

CSV_CHUNK = 20_000
COPY_BLOCK_BYTES = 4 << 20  # CSV text Arrow converts at a time (about 18,000 forecast rows)
PER_SYMBOL_DATASETS = 500  # above this many symbols a run logs one dataset for all its windows
CHARTED_SYMBOLS = 8  # one chart per symbol for the first ones; the overview shows the first few
OVERVIEW_SYMBOLS = 4
HISTORY_SHOWN = 60
DESCRIBED_WINDOWS = 30  # rows of the window table in the run's description (the datasets list every one)
DATASET_BATCH = 100
DIGEST_CHARS = 32  # MLflow keeps dataset digests of up to 36 characters: the first 128 bits of the SHA-256
DATASET_SCHEMA = json.dumps(
    {
        "mlflow_colspec": [{"name": "ts", "type": "datetime"}]
        + [{"name": n, "type": "double"} for n in ("open", "high", "low", "close", "volume", "amount")]
    }
)


BANDS = {"quantiles": "q", "calibrated_quantiles": "cal_q", "baseline_quantiles": "hv_q"}
STAMP_COLUMNS = {c.name for c in Forecast.__table__.columns if isinstance(c.type, UtcDateTime)}
INTEGER_COLUMNS = {c.name for c in Forecast.__table__.columns if isinstance(c.type, (Integer, BigInteger))}
TEXT_COLUMNS = {c.name for c in Forecast.__table__.columns if isinstance(c.type, (String, Text))}


def _flat_forecast_query(run: RunPlan, symbols: list[str] | None = None, feature: str | None = None):
    """The run's forecast rows (of ``symbols`` and ``feature`` when given) as flat columns: the plain ones
    (timestamps without the per-row conversion) and each band's levels read out of its JSON by the database
    (``q0.1``, ``cal_q0.1`` when the run had a calibration, ``hv_q0.1``), ordered by symbol, feature and step."""
    columns = [bulk_utc(c) if c.name in STAMP_COLUMNS else c for c in Forecast.__table__.columns if c.name not in BANDS]
    for band, prefix in BANDS.items():
        if band == "calibrated_quantiles" and not run.calibrations:
            continue
        for q in sorted(run.params.quantiles):
            columns.append(getattr(Forecast, band)[f"{q:g}"].as_float().label(f"{prefix}{q:g}"))
    query = select(*columns).where(Forecast.run_id == run.run_id)
    if symbols is not None:
        query = query.where(Forecast.symbol.in_(symbols))
    if feature is not None:
        query = query.where(Forecast.feature == feature)
    return query.order_by(Forecast.symbol, Forecast.feature, Forecast.step)


def _column_kind(name: str) -> str:
    """How a column of ``_flat_forecast_query`` is typed in the artifacts: stamp, integer, text or float."""
    if name in STAMP_COLUMNS:
        return "stamp"
    if name in INTEGER_COLUMNS:
        return "integer"
    return "text" if name in TEXT_COLUMNS else "float"


def _typed_frame(names: list[str], rows) -> pd.DataFrame:
    """Rows as a frame with one dtype per column whatever the chunk holds (float64 for numbers that may be
    missing, UTC timestamps), so that every chunk of a Parquet file has the same schema."""
    frame = {}
    for name, values in zip(names, list(zip(*rows)) or [()] * len(names)):
        kind = _column_kind(name)
        if kind == "stamp":
            frame[name] = utc_index(values)
        elif kind == "integer":
            frame[name] = np.array(values, dtype=np.int64)
        elif kind == "text":
            frame[name] = pd.Series(values, dtype=object)
        else:
            frame[name] = np.array(values, dtype=np.float64)  # NULL -> NaN
    return pd.DataFrame(frame)


def _forecast_frame(run: RunPlan, symbols: list[str], feature: str) -> pd.DataFrame:
    with runtime.engine().connect() as connection:
        result = connection.execute(_flat_forecast_query(run, symbols, feature))
        return _typed_frame(list(result.keys()), result.all())


def write_forecasts(run: RunPlan, folder: Path, symbols: int) -> Path:
    """The run's forecasts as ``forecasts.csv`` (``forecasts.parquet`` above PER_SYMBOL_DATASETS symbols,
    where CSV formatting would cost more than the forecasts), streamed ``CSV_CHUNK`` rows at a time so that
    memory does not grow with the run; the bands' quantiles as columns (see ``_flat_forecast_query``).
    On PostgreSQL the Parquet file is filled from ``COPY ... TO STDOUT`` read by Arrow's CSV reader, in
    blocks of ``COPY_BLOCK_BYTES``: the same columns and values, without a Python object per value."""
    query = _flat_forecast_query(run)
    path = folder / ("forecasts.parquet" if symbols > PER_SYMBOL_DATASETS else "forecasts.csv")
    writer = None
    with runtime.engine().connect() as connection, ExitStack() as stack:
        if path.suffix == ".parquet" and connection.dialect.name == "postgresql":
            _copy_to_parquet(connection, query, path)
            return path
        result = connection.execution_options(stream_results=True, yield_per=CSV_CHUNK).execute(query)
        names = list(result.keys())
        for chunk in result.partitions(CSV_CHUNK):
            frame = _typed_frame(names, chunk)
            if path.suffix == ".csv":
                frame.to_csv(path, mode="a", index=False, header=writer is None)
                writer = True
                continue
            import pyarrow as pa
            import pyarrow.parquet as pq

            table = pa.Table.from_pandas(frame, preserve_index=False)
            if writer is None:
                writer = stack.enter_context(pq.ParquetWriter(path, table.schema))
            writer.write_table(table)
    if writer is None:
        path.write_text("")
    return path


def _copy_to_parquet(connection, query, path: Path) -> None:
    """PostgreSQL: ``query``'s rows into the Parquet file ``path``, typed as ``_typed_frame`` types them."""
    import pyarrow as pa
    import pyarrow.csv as pa_csv
    import pyarrow.parquet as pq

    arrow = {"stamp": pa.timestamp("us", tz="UTC"), "integer": pa.int64(), "text": pa.string(), "float": pa.float64()}
    types = {name: arrow[_column_kind(name)] for name in query.selected_columns.keys()}
    schema = pa.schema(list(types.items()))
    with copy_out_csv(connection, query) as stream:
        reader = pa_csv.open_csv(
            stream,
            read_options=pa_csv.ReadOptions(block_size=COPY_BLOCK_BYTES),
            convert_options=pa_csv.ConvertOptions(column_types=types, quoted_strings_can_be_null=False),
        )
        with pq.ParquetWriter(path, schema) as writer:
            for batch in reader:
                writer.write_batch(batch)


def run_name(run: RunPlan, symbols: int) -> str:
    """``2024-08-28 21:30 UTC · kronos-model v3 · 2 symbols``: what tells runs apart in a list."""
    when = pd.Timestamp(run.origin).tz_convert("UTC")
    label = f"{when:%Y-%m-%d %H:%M} UTC · {run.pinned.model_name} v{run.pinned.model_version} · {symbols} symbols"
    return label + ("" if run.pinned.trained else " · UNTRAINED")


def version_link(name: str, version: str) -> str:
    """A markdown link to a registered version's page in the MLflow UI."""
    return f"[{name} v{version}](#/models/{name}/versions/{version})"


def dataset_inputs(windows: list[ForecastWindow], db_url: str, combined: str | None = None) -> list[DatasetInput]:
    """One MLflow dataset per symbol: the stored bars its forecast read; above PER_SYMBOL_DATASETS symbols,
    one dataset for all of them (digest = the run's combined window hash; forecast_windows.csv lists each)."""
    if len(windows) > PER_SYMBOL_DATASETS:
        profile = {
            "symbols": len(windows),
            "num_rows": sum(w.bars for w in windows),
            "first_bar": min(w.first_ts for w in windows).isoformat(),
            "last_bar": max(w.last_ts for w in windows).isoformat(),
            "sha256": combined,
            "per_symbol": "forecast_windows.csv",
        }
        dataset = Dataset(
            name=f"{len(windows)} symbols",
            digest=(combined or "")[:DIGEST_CHARS],
            source_type="kronos-bars",
            source=json.dumps({"database": redact(db_url), "table": "bars", "windows": "forecast_windows"}),
            schema=DATASET_SCHEMA,
            profile=json.dumps(profile),
        )
        return [DatasetInput(dataset, [InputTag("mlflow.data.context", "forecast")])]
    inputs = []
    for w in windows:
        source = {"database": redact(db_url), "table": "bars", "symbol": w.symbol, "interval": w.interval}
        profile = {
            "num_rows": w.bars,
            "first_bar": w.first_ts.isoformat(),
            "last_bar": w.last_ts.isoformat(),
            "sha256": w.sha256,
        }
        dataset = Dataset(
            name=f"{w.symbol}:{w.interval}",
            digest=w.sha256[:DIGEST_CHARS],
            source_type="kronos-bars",
            source=json.dumps(source),
            schema=DATASET_SCHEMA,
            profile=json.dumps(profile),
        )
        inputs.append(DatasetInput(dataset, [InputTag("mlflow.data.context", "forecast")]))
    return inputs


def describe(run: RunPlan, summary: RunSummary, windows: list[ForecastWindow], device: str) -> str:
    """The run's description in markdown: what ran with which weights and data, with links."""
    pair = run.pinned
    lines = [
        f"Daily forecast `{run.run_id}`: {summary.symbols_ok} symbol(s) forecast, {summary.symbols_failed} failed "
        f"({summary.status}).",
        "",
        f"- model {version_link(pair.model_name, pair.model_version)} (sha256 `{pair.model_sha256[:12]}`), "
        f"tokenizer {version_link(pair.tokenizer_name, pair.tokenizer_version)}"
        + (f", via @{pair.alias}" if pair.alias else ""),
        f"- seed {run.seed}, {run.params.sample_count} sample paths, lookback {run.params.lookback}, "
        f"pred_len {run.params.pred_len}, on {device} in float32",
    ]
    if pair.warning:
        lines.append(f"- **{pair.warning}**")
    intervals = sorted({w.interval for w in windows})
    for interval in intervals:
        sha = run.calibrations.get(interval)
        lines.append(
            f"- {interval}: calibrated quantiles and P(up) from calibration `{sha[:16]}`"
            if sha
            else f"- {interval}: **raw** quantiles only: this version has no calibration at {interval} "
            "(the rollout DAG or `kronos-flow calibrate` fits one)"
        )
    if windows:
        lines += [
            "",
            "| symbol | first bar | last bar (origin) | bars | window sha256 |",
            "| --- | --- | --- | --- | --- |",
        ]
        for w in windows[:DESCRIBED_WINDOWS]:
            lines.append(
                f"| {w.symbol}:{w.interval} | {w.first_ts:%Y-%m-%d %H:%M} | {w.last_ts:%Y-%m-%d %H:%M} | {w.bars} | "
                f"`{w.sha256[:16]}` |"
            )
        if len(windows) > DESCRIBED_WINDOWS:
            lines.append(f"\n{len(windows) - DESCRIBED_WINDOWS} more in Datasets.")
    lines.append("\nReproduce: `kronos-flow replay " + run.run_id + "`")
    return "\n".join(lines)


def provenance(run: RunPlan):
    from .charts import Provenance

    when = pd.Timestamp(run.origin).tz_convert("UTC")
    pair = run.pinned
    return Provenance(f"run {when:%Y-%m-%d %H:%M} UTC", f"{pair.model_name} v{pair.model_version}", pair.warning)


def fan_inputs(run: RunPlan, windows: list[ForecastWindow]):
    """Chart inputs for ``windows``' symbols: close history up to each origin and the close forecast."""
    from .charts import FanInput

    engine = runtime.engine()
    frame = _forecast_frame(run, [w.symbol for w in windows], "close")
    fans = []
    for w in windows:
        rows = frame[frame["symbol"] == w.symbol]
        if rows.empty:
            continue
        stored = instrument(engine, w.symbol, w.interval)
        history = read_bars(engine, w.symbol, w.interval, end=w.last_ts, limit=HISTORY_SHOWN)
        timezone = stored.timezone if stored is not None else "UTC"
        fans.append(FanInput(w.symbol, w.interval, timezone, history, rows))
    return fans


def write_charts(run: RunPlan, windows: list[ForecastWindow], folder: Path) -> None:
    """``fan_chart.png`` (the first symbols) and ``charts/<symbol>_<interval>.png`` for up to CHARTED_SYMBOLS."""
    from .charts import fan_chart, overview

    fans = fan_inputs(run, windows[:CHARTED_SYMBOLS])
    if not fans:
        return
    about = provenance(run)
    overview(fans[:OVERVIEW_SYMBOLS], about, folder / "fan_chart.png", total=len(windows))
    (folder / "charts").mkdir()
    for fan in fans:
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in fan.symbol)
        fan_chart(fan, about, folder / "charts" / f"{safe}_{fan.interval}.png")


def run_params(run: RunPlan, summary: RunSummary, device: str) -> dict:
    """The MLflow params of a forecast run: its resolved parameters (the precision it decoded in among them),
    logical date, weights, number of symbols, device, stream version and calibrations."""
    return {
        **run.params.to_dict(),
        "logical_date": run.origin,
        **run.pinned.audit_fields(),
        "symbols": summary.symbols_ok + summary.symbols_failed,
        "device": device,
        "stream_version": STREAM_VERSION,
        **{f"calibration_{interval}": sha for interval, sha in run.calibrations.items()},
    }


def log_run(run: RunPlan, summary: RunSummary) -> str:
    """One MLflow run per forecast run (earlier attempts of the same run are deleted) -> its run id."""
    runtime.relax_gc()
    settings = runtime.settings()
    engine = runtime.engine()
    mlflow = client(settings)
    experiment = ensure_experiment(mlflow, settings.mlflow_experiment, settings.mlflow_artifact_root)
    pair: PinnedPair = run.pinned
    windows = run_windows(engine, run.run_id)
    device = ",".join(summary.devices) or settings.device
    params = run_params(run, summary, device)
    metrics = {
        "symbols_ok": summary.symbols_ok,
        "symbols_failed": summary.symbols_failed,
        "failed_share": summary.failed_share,
        "forecast_rows": summary.forecast_rows,
        "forecast_seconds": summary.forecast_seconds,
        "bars_per_second": summary.bars_per_second,
    }
    tags = {
        "run_id": run.run_id,
        "dag_id": run.dag_id,
        "dag_run_id": run.dag_run_id,
        "model": f"{pair.model_name}/{pair.model_version}",
        "tokenizer": f"{pair.tokenizer_name}/{pair.tokenizer_version}",
        "model_alias": pair.alias,
        "trained_model": str(pair.trained).lower(),
        "status": summary.status,
        "mlflow.note.content": describe(run, summary, windows, device),
    }
    name = run_name(run, summary.symbols_ok + summary.symbols_failed)
    run_id = start_run(mlflow, experiment, name, tags, replaces={"run_id": run.run_id})
    try:
        models = [LoggedModelInput(i) for i in (pair.model_logged_id, pair.tokenizer_logged_id) if i]
        stored = get_run(engine, run.run_id)
        datasets = dataset_inputs(windows, settings.db_url, stored.data_window_hash if stored else None)
        for start in range(0, max(len(datasets), 1), DATASET_BATCH):
            mlflow.log_inputs(run_id, datasets=datasets[start : start + DATASET_BATCH], models=models)
            models = []
        if pair.model_logged_id:
            # Metrics logged against the logged model list this run on its page (reached from the version's).
            now = int(time.time() * 1000)
            linked = [
                Metric(k, float(v), now, 0, model_id=pair.model_logged_id)
                for k, v in metrics.items()
                if isinstance(v, (int, float)) and v == v
            ]
            mlflow.log_batch(run_id, metrics=linked)
            metrics = {}
        with tempfile.TemporaryDirectory() as folder, ThreadPoolExecutor(1) as pool:
            out = Path(folder)
            # The forecasts file is mostly the database's and Arrow's work, the charts Python's: written at once,
            # they take about the longer one's time on two cores instead of the sum.
            forecasts = pool.submit(write_forecasts, run, out, len(windows))
            pd.DataFrame(item_failures(engine, run.run_id), columns=["symbol", "stage", "reason"]).to_csv(
                out / "failures.csv", index=False
            )
            if len(windows) > PER_SYMBOL_DATASETS:
                pd.DataFrame(
                    [(w.symbol, w.interval, w.first_ts, w.last_ts, w.bars, w.sha256) for w in windows],
                    columns=["symbol", "interval", "first_bar", "last_bar", "bars", "sha256"],
                ).to_csv(out / "forecast_windows.csv", index=False)
            write_charts(run, windows, out)
            forecasts.result()
            finish_run(mlflow, run_id, params, metrics, out, failed=summary.status == "failed")
    except Exception:
        mlflow.set_terminated(run_id, "FAILED")
        raise
    update_run(engine, run.run_id, mlflow_run_id=run_id)
    return run_id
