"""MLflow records of forecast runs: parameters, pinned versions, metrics, the forecasts and a fan chart."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # no display on workers
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
from sqlalchemy import select  # noqa: E402

from kronos_tasks.registry import PinnedPair, client, ensure_experiment  # noqa: E402
from kronos_tasks.storage import read_bars, update_run  # noqa: E402
from kronos_tasks.storage.models import Forecast  # noqa: E402

from . import runtime  # noqa: E402
from .forecasting import summary_frame  # noqa: E402

FAN_CHART_SYMBOLS = 4
HISTORY_SHOWN = 60


def _forecast_frame(run_id: str) -> pd.DataFrame:
    columns = [c for c in Forecast.__table__.columns]
    with runtime.engine().connect() as connection:
        rows = (
            connection.execute(
                select(*columns)
                .where(Forecast.run_id == run_id)
                .order_by(Forecast.symbol, Forecast.feature, Forecast.step)
            )
            .mappings()
            .all()
        )
    return summary_frame([dict(r) for r in rows])


def fan_chart(frame: pd.DataFrame, path: Path, symbols: list[str], interval_of: dict[str, str]) -> None:
    """Close: recent history, forecast mean and the band between the lowest and highest quantile."""
    shown = symbols[:FAN_CHART_SYMBOLS]
    figure, axes = plt.subplots(len(shown), 1, figsize=(9, 2.8 * len(shown)), squeeze=False)
    for axis, symbol in zip(axes[:, 0], shown):
        close = frame[(frame["symbol"] == symbol) & (frame["feature"] == "close")].sort_values("step")
        history = read_bars(
            runtime.engine(), symbol, interval_of[symbol], end=close["origin_ts"].iloc[0], limit=HISTORY_SHOWN
        )
        axis.plot(range(-len(history) + 1, 1), history["close"], color="black", lw=1, label="history")
        q_columns = sorted((c for c in close.columns if c.startswith("q")), key=lambda c: float(c[1:]))
        if len(q_columns) >= 2:
            axis.fill_between(
                close["step"],
                close[q_columns[0]],
                close[q_columns[-1]],
                alpha=0.3,
                label=f"{q_columns[0][1:]}-{q_columns[-1][1:]} quantiles",
            )
        axis.plot(close["step"], close["mean"], color="tab:blue", lw=1.5, label="mean")
        axis.set_title(f"{symbol} close ({interval_of[symbol]} bars)")
        axis.legend(loc="upper left", fontsize=8)
    axes[-1, 0].set_xlabel("bars after the forecast origin")
    figure.tight_layout()
    figure.savefig(path, dpi=90)
    plt.close(figure)


def log_run(run: dict[str, Any], pinned: dict[str, Any], summary: dict[str, Any]) -> str:
    """One MLflow run per forecast run (earlier attempts of the same run are marked deleted) -> its run id."""
    settings = runtime.settings()
    mlflow = client(settings)
    experiment = ensure_experiment(mlflow, settings.mlflow_experiment, settings.mlflow_artifact_root)
    for old in mlflow.search_runs([experiment], f"tags.`kronos.run_id` = '{run['run_id']}'"):
        mlflow.delete_run(old.info.run_id)  # a re-run replaces the earlier record, as in the database
    pair = PinnedPair.from_dict(pinned)
    record = mlflow.create_run(
        experiment,
        run_name=run["run_id"],
        tags={
            "kronos.run_id": run["run_id"],
            "kronos.dag_id": run["dag_id"],
            "kronos.dag_run_id": str(run["dag_run_id"]),
            "kronos.model": f"{pair.model_name}/{pair.model_version}",
            "kronos.tokenizer": f"{pair.tokenizer_name}/{pair.tokenizer_version}",
            "kronos.model_alias": str(pair.alias),
            "kronos.trained_model": str(pair.trained).lower(),
            "kronos.status": summary["status"],
        },
    )
    run_id = record.info.run_id
    params = {
        **{k: v for k, v in run["params"].items()},
        "seed": run["seed"],
        "origin": run["origin"],
        "model_name": pair.model_name,
        "model_version": pair.model_version,
        "model_sha256": pair.model_sha256,
        "tokenizer_name": pair.tokenizer_name,
        "tokenizer_version": pair.tokenizer_version,
        "tokenizer_sha256": pair.tokenizer_sha256,
        "max_context": pair.max_context,
        "symbols": len(run["watchlist"]),
        "device": settings.device,
    }
    for key, value in params.items():
        mlflow.log_param(run_id, key, str(value)[:6000])
    metrics = {
        "symbols_ok": len(summary["symbols_ok"]),
        "symbols_failed": len(summary["symbols_failed"]),
        "failed_share": summary["failed_share"],
        "forecast_rows": summary["forecast_rows"],
        "forecast_seconds": summary["seconds"],
        "bars_per_second": summary["bars_per_second"] or 0.0,
    }
    for key, value in metrics.items():
        mlflow.log_metric(run_id, key, float(value))
    frame = _forecast_frame(run["run_id"])
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder)
        frame.to_csv(out / "forecasts.csv", index=False)
        failures = pd.DataFrame([{"symbol": s, **f} for s, f in summary["symbols_failed"].items()])
        failures.to_csv(out / "failures.csv", index=False)
        if not frame.empty:
            intervals = {item["symbol"]: item["interval"] for item in run["watchlist"]}
            fan_chart(frame, out / "fan_chart.png", sorted(frame["symbol"].unique()), intervals)
        mlflow.log_artifacts(run_id, folder)
    mlflow.set_terminated(run_id, "FINISHED" if summary["status"] != "failed" else "FAILED")
    update_run(runtime.engine(), run["run_id"], mlflow_run_id=run_id)
    return run_id
