"""Daily Kronos forecast over a watchlist.

plan -> resolve the model alias once -> ingest new bars (mapped over chunks) -> forecast (mapped over batches,
on the GPU queue and pool) -> persist in one transaction -> log to MLflow -> finish (fails past the allowed
share of failed symbols). Task bodies live in ``kronos_tasks.pipeline.daily``; this file is wiring.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from airflow.sdk import CronTriggerTimetable, Param, Variable, dag, get_current_context, task

from kronos_tasks.settings import gpu_task_arguments, load

SETTINGS = load()  # environment only: no database, network or model work at import time

FORECAST_TASK = {
    **gpu_task_arguments(SETTINGS),
    "retries": 3,
    "retry_delay": timedelta(seconds=SETTINGS.forecast_retry_delay),
    "retry_exponential_backoff": True,
    "max_retry_delay": timedelta(minutes=10),
    "execution_timeout": timedelta(hours=2),
}


@dag(
    dag_id="kronos_daily_forecast",
    schedule=CronTriggerTimetable(SETTINGS.schedule, timezone=SETTINGS.timezone) if SETTINGS.schedule else None,
    start_date=datetime(2024, 1, 1),
    catchup=False,
    max_active_runs=1,
    default_args={"owner": "kronos-flow", "retries": 2, "retry_delay": timedelta(seconds=20)},
    tags=["kronos", "forecast"],
    doc_md=__doc__,
    params={
        "watchlist": Param(
            None,
            type=["null", "array"],
            items={"type": "object"},
            description="entries {symbol, exchange, interval[, file]}; empty: the Variable "
            "kronos_watchlist, else the KRONOS_WATCHLIST file",
        ),
        "pred_len": Param(24, type="integer", minimum=1),
        "lookback": Param(
            None,
            type=["null", "integer"],
            minimum=1,
            description="empty: max_context - pred_len, so the window never slides",
        ),
        "T": Param(1.0, type="number", exclusiveMinimum=0),
        "top_k": Param(0, type="integer", minimum=0),
        "top_p": Param(0.9, type="number", exclusiveMinimum=0, maximum=1),
        "sample_count": Param(16, type="integer", minimum=1),
        "quantiles": Param(
            [0.1, 0.5, 0.9], type="array", items={"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1}
        ),
        "seed": Param(
            None,
            type=["null", "integer"],
            minimum=0,
            description="empty: derived from the DAG and logical date, so a re-run reuses it",
        ),
        "model": Param(SETTINGS.model_alias, type="string", description="alias (champion) or version (3)"),
        "batch_size": Param(SETTINGS.batch_size, type="integer", minimum=1),
        "max_failed_share": Param(SETTINGS.max_failed_share, type="number", minimum=0, maximum=1),
    },
)
def kronos_daily_forecast():
    @task
    def plan() -> dict:
        from kronos_tasks.pipeline import daily

        context = get_current_context()
        params = dict(context["params"])
        watchlist = params.pop("watchlist") or Variable.get("kronos_watchlist", default=None)
        params.pop("max_failed_share")
        moment = context.get("logical_date") or context["dag_run"].run_after
        return daily.plan(params, watchlist, moment, context["dag"].dag_id, context["run_id"])

    @task
    def resolve(run: dict) -> dict:
        from kronos_tasks.pipeline import daily

        return daily.resolve_model(run["params"]["model"])

    @task
    def ingest_chunks(run: dict) -> list:
        return run["ingest_chunks"]

    @task
    def forecast_batches(run: dict) -> list:
        return run["forecast_batches"]

    @task
    def ingest(entries: list) -> dict:
        from kronos_tasks.pipeline import daily

        return daily.ingest_chunk(entries)

    @task(**FORECAST_TASK)
    def forecast(run: dict, pinned: dict, ingested: list, batch: dict) -> dict:
        from kronos_tasks.pipeline import daily

        skip = [symbol for result in ingested for symbol in result["failed"]]
        return daily.forecast_batch(run, pinned, batch, skip)

    @task
    def persist(run: dict, pinned: dict, ingested: list, forecasted: list) -> dict:
        from kronos_tasks.pipeline import daily

        return daily.persist(run, pinned, list(ingested), list(forecasted))

    @task
    def log_to_mlflow(run: dict, pinned: dict, summary: dict) -> str:
        from kronos_tasks.pipeline import tracking

        return tracking.log_run(run, pinned, summary)

    @task(retries=0)  # the verdict on stored results: retrying cannot change it
    def finish(summary: dict, mlflow_run_id: str) -> dict:
        from kronos_tasks.pipeline import daily

        share = get_current_context()["params"]["max_failed_share"]
        return {**daily.finish(summary, share), "mlflow_run_id": mlflow_run_id}

    run = plan()
    pinned = resolve(run)
    ingested = ingest.expand(entries=ingest_chunks(run))
    forecasted = forecast.partial(run=run, pinned=pinned, ingested=ingested).expand(batch=forecast_batches(run))
    summary = persist(run, pinned, ingested, forecasted)
    finish(summary, log_to_mlflow(run, pinned, summary))


dag = kronos_daily_forecast()
