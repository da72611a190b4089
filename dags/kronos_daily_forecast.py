"""Daily Kronos forecast over a watchlist.

plan (validate the parameters, pin the model alias once, fix the seed) and split the watchlist into shards ->
ingest new bars (mapped over shards) -> forecast (mapped over the ingested shards, on the GPU queue and
pool) -> persist in one transaction -> log to MLflow -> finish (fails past the allowed share of failed
symbols). Task bodies live in ``kronos_tasks.pipeline.daily``;
this file is wiring.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from airflow.sdk import CronTriggerTimetable, Param, Variable, dag, get_current_context, task

from kronos_tasks.forecasting.params import ForecastParams
from kronos_tasks.pipeline.payloads import BatchResult, IngestedBatch, RunPlan, RunSummary, Shard
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
HERE = {"model": SETTINGS.model_alias, "batch_size": SETTINGS.batch_size}


@dag(
    dag_id="kronos_daily_forecast",
    schedule=CronTriggerTimetable(SETTINGS.schedule, timezone=SETTINGS.timezone) if SETTINGS.schedule else None,
    start_date=datetime(1970, 1, 1, tzinfo=timezone.utc),  # any date bars exist for runs for real
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
        **{name: Param(**spec) for name, spec in ForecastParams.param_specs(HERE).items()},
        "symbols_per_task": Param(
            SETTINGS.symbols_per_task,
            type="integer",
            minimum=1,
            description="watchlist symbols per ingest and forecast task",
        ),
        "max_staleness": Param(
            None,
            type=["null", "integer"],
            minimum=0,
            description="bars a symbol's newest bar may lag its exchange calendar before it is skipped as stale "
            "(empty: 2 sessions of daily bars, 8 hours of intraday bars)",
        ),
        "max_failed_share": Param(
            SETTINGS.max_failed_share,
            type="number",
            minimum=0,
            maximum=1,
            description="share of failed symbols above which the run fails",
        ),
    },
)
def kronos_daily_forecast():
    @task
    def plan() -> RunPlan:
        from kronos_tasks.pipeline import daily

        context = get_current_context()
        params = {name: context["params"][name] for name in ForecastParams.param_specs()}
        moment = context.get("logical_date") or context["dag_run"].run_after
        share, staleness = context["params"]["max_failed_share"], context["params"]["max_staleness"]
        return daily.plan(params, moment, context["dag"].dag_id, context["run_id"], share, staleness)

    @task
    def split_watchlist() -> list[Shard]:
        from kronos_tasks.pipeline import daily

        params = get_current_context()["params"]
        watchlist = params["watchlist"] or Variable.get("kronos_watchlist", default=None)
        return daily.split_watchlist(watchlist, params["symbols_per_task"])

    @task
    def ingest(run: RunPlan, shard: Shard) -> IngestedBatch:
        from kronos_tasks.pipeline import daily

        return daily.ingest(run, shard)

    @task(**FORECAST_TASK)
    def forecast(run: RunPlan, ingested: IngestedBatch) -> BatchResult:
        from kronos_tasks.pipeline import daily

        return daily.forecast(run, ingested)

    @task
    def persist(run: RunPlan, shards: list[Shard], results: list[BatchResult]) -> RunSummary:
        from kronos_tasks.pipeline import daily

        # A slice reads every mapped result in one request (iterating probes past the end and logs an error).
        return daily.persist(run, list(shards), list(results[:]))

    @task
    def log_to_mlflow(run: RunPlan, summary: RunSummary) -> str:
        from kronos_tasks.pipeline import tracking

        return tracking.log_run(run, summary)

    @task(retries=0)  # the verdict on stored results: retrying cannot change it
    def finish(summary: RunSummary) -> RunSummary:
        from kronos_tasks.pipeline import daily

        return daily.finish(summary)

    run, shards = plan(), split_watchlist()
    results = forecast.partial(run=run).expand(ingested=ingest.partial(run=run).expand(shard=shards))
    summary = persist(run, shards, results)
    log_to_mlflow(run, summary) >> finish(summary)


kronos_daily_forecast()
