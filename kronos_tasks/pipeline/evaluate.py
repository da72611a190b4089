"""Task functions of the forecast evaluation: find runs with arrived targets, score them, log per model version."""

from __future__ import annotations

import json
import tempfile
from datetime import datetime
from pathlib import Path
from typing import Any

from kronos_tasks.evaluation import scoring
from kronos_tasks.registry.mlflow_setup import client, ensure_experiment
from kronos_tasks.registry.runs import record_run

from . import runtime
from .charts import horizon_plot, reliability_plot

EXPERIMENT = "kronos-forecast-evaluation"


def due(now: datetime | str, lookback_days: int) -> list[str]:
    return scoring.due_runs(runtime.engine(), runtime.utc(now), lookback_days)


def score(run_ids: list[str]) -> dict[str, Any]:
    """Score the runs' forecasts whose targets have arrived (``scoring.score_runs``)."""
    runtime.relax_gc()
    return scoring.score_runs(runtime.engine(), run_ids)


def log_versions(run_ids: list[str], evaluation_id: str) -> dict[str, str]:
    """One MLflow run per model version with its pooled scores and reliability plot -> {version: MLflow run id}."""
    settings = runtime.settings()
    if not run_ids:
        return {}
    mlflow = client(settings)
    experiment = ensure_experiment(mlflow, EXPERIMENT, settings.mlflow_artifact_root)
    logged = {}
    for version, scores in scoring.by_version(runtime.engine(), run_ids).items():
        metrics = {"points": scores["points"]}
        for method in ("model", "persistence"):
            metrics.update({f"{method}_{metric}": value for metric, value in scores[method].items()})
        for name, band in scores["bands"].items():
            if band is not None:
                metrics.update({f"{name}_band_{k}": float(v) for k, v in band.items() if k != "nominal"})
        with tempfile.TemporaryDirectory() as folder:
            reliability_plot(
                scores["reliability"], f"{version}: P(close up) calibration", Path(folder) / "reliability.png"
            )
            horizons = scores["horizons"]
            band = f"{horizons[0]['nominal']:.0%}" if horizons else "quantile"
            horizon_plot(horizons, f"{version} over {len(scores['runs'])} run(s)", Path(folder) / "horizons.png", band)
            (Path(folder) / "horizons.json").write_text(json.dumps(horizons, indent=2))
            bands = {"all": scores["bands"], "symbols": scores["symbols"]}
            (Path(folder) / "coverage.json").write_text(json.dumps(bands, indent=2, default=float))
            identity = {"evaluation": evaluation_id, "model": version}
            logged[version] = record_run(
                mlflow,
                experiment,
                f"{version} @ {evaluation_id}",
                tags=identity,
                params={"forecast_runs": ",".join(scores["runs"])},
                metrics=metrics,
                artifacts=Path(folder),
                replaces=identity,
            )
    return logged
