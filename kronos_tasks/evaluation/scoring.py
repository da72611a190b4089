"""Scores of stored forecasts whose target bars have arrived, per symbol, horizon and model version."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

import numpy as np
import pandas as pd
from sqlalchemy import Engine, and_, select

from kronos_tasks.storage import upsert
from kronos_tasks.storage.models import Bar, Forecast, ForecastRun, ForecastScore

from . import metrics

FEATURE = "close"


def arrived_points(engine: Engine, run_ids: list[str]) -> pd.DataFrame:
    """Close forecasts of ``run_ids`` joined with the bars that arrived at their target times."""
    query = (
        select(
            Forecast.run_id,
            Forecast.symbol,
            Forecast.step,
            Forecast.target_ts,
            Forecast.last_value,
            Forecast.mean,
            Forecast.quantiles,
            Forecast.prob_above_last,
            Forecast.calibrated_quantiles,
            Forecast.calibrated_prob_above_last,
            Forecast.baseline_quantiles,
            Bar.close.label("actual"),
            ForecastRun.model_name,
            ForecastRun.model_version,
        )
        .join(Bar, and_(Bar.symbol == Forecast.symbol, Bar.interval == Forecast.interval, Bar.ts == Forecast.target_ts))
        .join(ForecastRun, ForecastRun.run_id == Forecast.run_id)
        .where(Forecast.run_id.in_(run_ids), Forecast.feature == FEATURE)
    )
    with engine.connect() as connection:
        rows = connection.execute(query).mappings().all()
    return pd.DataFrame([dict(r) for r in rows])


def scores_of(points: pd.DataFrame) -> dict[str, dict[str, float]]:
    """Model and persistence scores of a set of points -> {method: {metric: value}}, plus their count."""
    actual, last = points["actual"].to_numpy(float), points["last_value"].to_numpy(float)
    pred = points["mean"].to_numpy(float)
    outcome_up = (actual > last).astype(float)
    levels = sorted(float(q) for q in points["quantiles"].iloc[0])
    quantiles = {q: points["quantiles"].map(lambda d, q=q: d[f"{q:g}"]).to_numpy(float) for q in levels}
    model_mae, persistence_mae = metrics.mae(pred, actual), metrics.mae(last, actual)
    direction = metrics.direction_accuracy(pred, actual, last)
    still = metrics.direction_accuracy(last, actual, last)
    return {
        "model": {
            "mae": model_mae,
            "mape": metrics.mape(pred, actual),
            "skill": metrics.skill(model_mae, persistence_mae),
            "direction_accuracy": direction.value,
            "direction_ci_low": direction.low,
            "direction_ci_high": direction.high,
            "pinball": metrics.pinball(quantiles, actual),
            f"coverage_{levels[0]:g}_{levels[-1]:g}": metrics.coverage(
                quantiles[levels[0]], quantiles[levels[-1]], actual
            ),
            "brier": metrics.brier(points["prob_above_last"].to_numpy(float), outcome_up),
        },
        "persistence": {
            "mae": persistence_mae,
            "mape": metrics.mape(last, actual),
            "direction_accuracy": still.value,
            "brier": metrics.brier(np.full(len(actual), 0.5), outcome_up),
        },
    }


def score_runs(engine: Engine, run_ids: list[str]) -> dict[str, Any]:
    """Score every arrived point of ``run_ids``; store per symbol x horizon, per symbol and per run (upserts)."""
    points = arrived_points(engine, run_ids)
    now = datetime.now(timezone.utc)
    stored = 0
    if points.empty:
        return {"runs": run_ids, "points": 0, "rows": 0}
    with engine.begin() as connection:
        for run_id, of_run in points.groupby("run_id"):
            version = str(of_run["model_version"].iloc[0])
            groups = [(("*", 0), of_run)]
            groups += [((symbol, 0), part) for symbol, part in of_run.groupby("symbol")]
            groups += [((symbol, int(step)), part) for (symbol, step), part in of_run.groupby(["symbol", "step"])]
            rows = []
            for (symbol, horizon), part in groups:
                for method, values in scores_of(part).items():
                    for metric, value in values.items():
                        rows.append(
                            {
                                "run_id": run_id,
                                "symbol": symbol,
                                "feature": FEATURE,
                                "horizon": horizon,
                                "method": method,
                                "metric": metric,
                                "value": None if value is None or not np.isfinite(value) else float(value),
                                "count": int(len(part)),
                                "model_version": version,
                                "evaluated_at": now,
                            }
                        )
            stored += upsert(
                connection,
                ForecastScore.__table__,
                rows,
                ["run_id", "symbol", "feature", "horizon", "method", "metric"],
            )
    return {"runs": sorted(points["run_id"].unique()), "points": int(len(points)), "rows": stored}


def due_runs(engine: Engine, now: datetime, lookback_days: int) -> list[str]:
    """Forecast runs of the last ``lookback_days`` with at least one target bar that has arrived."""
    since = now - timedelta(days=lookback_days)
    query = (
        select(Forecast.run_id)
        .distinct()
        .join(ForecastRun, ForecastRun.run_id == Forecast.run_id)
        .join(Bar, and_(Bar.symbol == Forecast.symbol, Bar.interval == Forecast.interval, Bar.ts == Forecast.target_ts))
        .where(ForecastRun.logical_date >= since, ForecastRun.logical_date <= now)
    )
    with engine.connect() as connection:
        return sorted(connection.execute(query).scalars())


BANDS = {"raw": "quantiles", "calibrated": "calibrated_quantiles", "baseline": "baseline_quantiles"}
DRIFT_TOLERANCE = 0.05  # calibrated coverage further than this from nominal (outside its Wilson interval): drift


def band_coverage(part: pd.DataFrame, column: str) -> dict[str, float] | None:
    """Coverage of the widest central band of a quantile column (with its Wilson interval) and the mean
    pinball loss over its levels; None where the column is empty (no calibration, an older run)."""
    known = part[part[column].map(lambda d: bool(d))]
    if known.empty:
        return None
    levels = sorted(float(q) for q in known[column].iloc[0])
    values = {q: known[column].map(lambda d, q=q: d[f"{q:g}"]).to_numpy(float) for q in levels}
    return {"count": len(known), **metrics.band_scores(values, known["actual"].to_numpy(float))}


def bands_of(part: pd.DataFrame) -> dict[str, dict | None]:
    """Raw, calibrated and baseline band scores of a set of points, and whether the calibrated band drifted."""
    out = {name: band_coverage(part, column) for name, column in BANDS.items()}
    calibrated = out["calibrated"]
    if calibrated is not None:
        off = abs(calibrated["coverage"] - calibrated["nominal"]) > DRIFT_TOLERANCE
        outside = not calibrated["coverage_low"] <= calibrated["nominal"] <= calibrated["coverage_high"]
        calibrated["drift"] = bool(off and outside)
    return out


def by_horizon(points: pd.DataFrame) -> list[dict[str, Any]]:
    """Per forecast step: MAE skill versus persistence and the raw, calibrated and baseline band coverage."""
    rows = []
    for step, part in points.groupby("step"):
        actual = part["actual"].to_numpy(float)
        bands = bands_of(part)
        rows.append(
            {
                "step": int(step),
                "count": int(len(part)),
                "skill": metrics.skill(
                    metrics.mae(part["mean"].to_numpy(float), actual),
                    metrics.mae(part["last_value"].to_numpy(float), actual),
                ),
                "coverage": bands["raw"]["coverage"],
                "nominal": bands["raw"]["nominal"],
                **{f"{name}_coverage": band["coverage"] for name, band in bands.items() if band is not None},
            }
        )
    return rows


def by_version(engine: Engine, run_ids: list[str]) -> dict[str, dict[str, Any]]:
    """Scores pooled per model version over the arrived points of ``run_ids``, with a reliability table and
    skill and band coverage per horizon."""
    points = arrived_points(engine, run_ids)
    out = {}
    for (name, version), part in points.groupby(["model_name", "model_version"]):
        actual, last = part["actual"].to_numpy(float), part["last_value"].to_numpy(float)
        out[f"{name}/{version}"] = {
            **scores_of(part),
            "points": int(len(part)),
            "runs": sorted(part["run_id"].unique()),
            "reliability": metrics.reliability(part["prob_above_last"].to_numpy(float), (actual > last).astype(float)),
            "horizons": by_horizon(part),
            "bands": bands_of(part),
            "symbols": {str(symbol): bands_of(rows) for symbol, rows in part.groupby("symbol")},
        }
    return out
