"""Daily scoring of past Kronos forecasts whose target bars have arrived.

due runs -> score them (MAE, MAPE, skill vs persistence, direction accuracy with its interval, pinball loss,
10-90 coverage, Brier score of P(close up); per symbol, horizon and model version) -> one MLflow run per
model version, so versions compare side by side. Task bodies live in ``kronos_tasks.pipeline.evaluate``.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from airflow.sdk import CronTriggerTimetable, Param, dag, get_current_context, task

from kronos_tasks.settings import load

SETTINGS = load()


@dag(
    dag_id="kronos_forecast_evaluation",
    schedule=CronTriggerTimetable("0 7 * * 1-6", timezone=SETTINGS.timezone),
    start_date=datetime(1970, 1, 1, tzinfo=timezone.utc),
    catchup=False,
    max_active_runs=1,
    default_args={"owner": "kronos-flow", "retries": 2, "retry_delay": timedelta(minutes=1)},
    tags=["kronos", "evaluation"],
    doc_md=__doc__,
    params={"lookback_days": Param(30, type="integer", minimum=1, description="score runs of the last N days")},
)
def kronos_forecast_evaluation():
    @task
    def due_runs() -> list:
        from kronos_tasks.pipeline import evaluate

        context = get_current_context()
        moment = context.get("logical_date") or context["dag_run"].run_after
        return evaluate.due(moment, context["params"]["lookback_days"])

    @task
    def score(run_ids: list) -> dict:
        from kronos_tasks.pipeline import evaluate

        return evaluate.score(list(run_ids))

    @task
    def log_to_mlflow(run_ids: list) -> dict:
        from kronos_tasks.pipeline import evaluate

        return evaluate.log_versions(list(run_ids), get_current_context()["run_id"])

    runs = due_runs()
    score(runs) >> log_to_mlflow(runs)


kronos_forecast_evaluation()
