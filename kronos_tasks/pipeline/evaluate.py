"""Task functions of the forecast evaluation: find runs with arrived targets, score them, log per model version."""

from __future__ import annotations

import tempfile
from datetime import datetime
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from kronos_tasks.evaluation import scoring  # noqa: E402
from kronos_tasks.registry.mlflow_setup import client, ensure_experiment  # noqa: E402
from kronos_tasks.registry.runs import record_run  # noqa: E402

from . import runtime  # noqa: E402

EXPERIMENT = "kronos-forecast-evaluation"


def due(now: datetime | str, lookback_days: int) -> list[str]:
    return scoring.due_runs(runtime.engine(), runtime.utc(now), lookback_days)


def score(run_ids: list[str]) -> dict[str, Any]:
    return scoring.score_runs(runtime.engine(), run_ids)


def reliability_plot(table: list[dict], title: str, path: Path) -> None:
    figure, axis = plt.subplots(figsize=(4.5, 4.5))
    axis.plot([0, 1], [0, 1], color="grey", lw=1, ls="--", label="perfectly calibrated")
    used = [b for b in table if b["count"]]
    axis.plot([b["mean_forecast"] for b in used], [b["observed"] for b in used], marker="o", label="forecasts")
    for b in used:
        axis.annotate(
            str(b["count"]), (b["mean_forecast"], b["observed"]), fontsize=7, xytext=(3, 3), textcoords="offset points"
        )
    axis.set_xlabel("forecast P(close up)")
    axis.set_ylabel("observed frequency")
    axis.set_title(title, fontsize=9, parse_math=False)  # names are text, never mathtext
    axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=90)
    plt.close(figure)


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
        with tempfile.TemporaryDirectory() as folder:
            reliability_plot(
                scores["reliability"], f"{version}: P(close up) calibration", Path(folder) / "reliability.png"
            )
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
