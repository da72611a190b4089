"""MLflow records of forecast runs: parameters, pinned versions, metrics, the forecasts and a fan chart."""

from __future__ import annotations

import tempfile
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display on workers
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
from sqlalchemy import select  # noqa: E402

from kronos_tasks.forecasting.windows import summary_frame  # noqa: E402
from kronos_tasks.registry.mlflow_setup import client, ensure_experiment  # noqa: E402
from kronos_tasks.registry.runs import record_run  # noqa: E402
from kronos_tasks.storage import read_bars, update_run  # noqa: E402
from kronos_tasks.storage.models import Forecast  # noqa: E402

from . import runtime  # noqa: E402
from .payloads import RunPlan, RunSummary  # noqa: E402

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
        # parse_math=False: a "$" in a symbol name is text, not the start of a formula.
        axis.set_title(f"{symbol} close ({interval_of[symbol]} bars)", parse_math=False)
        axis.legend(loc="upper left", fontsize=8)
    axes[-1, 0].set_xlabel("bars after the forecast origin")
    figure.tight_layout()
    figure.savefig(path, dpi=90)
    plt.close(figure)


def log_run(run: RunPlan, summary: RunSummary) -> str:
    """One MLflow run per forecast run (earlier attempts of the same run are deleted) -> its run id."""
    settings = runtime.settings()
    mlflow = client(settings)
    experiment = ensure_experiment(mlflow, settings.mlflow_experiment, settings.mlflow_artifact_root)
    pair = run.pinned
    params = {
        **run.params.to_dict(),
        "origin": run.origin,
        **pair.audit_fields(),
        "symbols": summary.symbols_ok + summary.symbols_failed,
        "device": ",".join(summary.devices) or settings.device,
    }
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
    }
    frame = _forecast_frame(run.run_id)
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder)
        frame.to_csv(out / "forecasts.csv", index=False)
        failures = pd.DataFrame(
            [{"symbol": s, "stage": f.stage, "reason": f.reason} for s, f in summary.failures.items()],
            columns=["symbol", "stage", "reason"],
        )
        failures.to_csv(out / "failures.csv", index=False)
        if not frame.empty:
            intervals = dict(zip(frame["symbol"], frame["interval"]))
            fan_chart(frame, out / "fan_chart.png", sorted(intervals), intervals)
        run_id = record_run(
            mlflow,
            experiment,
            run.run_id,
            tags=tags,
            params=params,
            metrics=metrics,
            artifacts=out,
            failed=summary.status == "failed",
            replaces={"run_id": run.run_id},
        )
    update_run(runtime.engine(), run.run_id, mlflow_run_id=run_id)
    return run_id
