"""Daily Kronos forecast over a watchlist.

plan (validate the parameters, pin the model alias once, fix the seed, store the watchlist in
``forecast_shards`` shards) -> ingest new bars (mapped over the shards) -> forecast (mapped over the
ingested shards, on the GPU queue and pool) -> persist in one transaction -> log to MLflow -> finish
(fails past the allowed share of failed symbols). Tasks pass ids and counts; the entries, failures,
windows and forecasts are in the database. Task bodies live in ``kronos_tasks.pipeline.daily``; this
file is wiring.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from airflow.sdk import CronTriggerTimetable, Param, Variable, dag, get_current_context, task

from kronos_tasks.forecasting.params import ForecastParams
from kronos_tasks.pipeline.payloads import BatchResult, IngestSummary, RunPlan, RunSummary
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
        "forecast_shards": Param(
            SETTINGS.forecast_shards,
            type=["null", "integer"],
            minimum=1,
            description="ingest and forecast tasks of the run, each for a slice of the watchlist (empty: "
            "KRONOS_FORECAST_SHARDS, else the forecast pool's slots, at least 2)",
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
    @task(multiple_outputs=False)
    def plan() -> RunPlan:
        from airflow.configuration import conf
        from airflow.sdk.exceptions import AirflowFailException

        from kronos_tasks.errors import ParamsError
        from kronos_tasks.pipeline import daily

        context = get_current_context()
        given = context["params"]
        params = {name: given[name] for name in ForecastParams.param_specs()}
        moment = context.get("logical_date") or context["dag_run"].run_after
        watchlist = given["watchlist"] or Variable.get("kronos_watchlist", default=None)
        try:
            return daily.plan(
                params,
                moment,
                context["dag"].dag_id,
                context["run_id"],
                given["max_failed_share"],
                given["max_staleness"],
                watchlist,
                given["forecast_shards"],
                conf.getint("core", "max_map_length"),
            )
        except ParamsError as exc:  # the same parameters fail the same way: no retries
            raise AirflowFailException(str(exc)) from exc

    @task(multiple_outputs=False)
    def shards(run: RunPlan) -> list[int]:
        from kronos_tasks.pipeline import daily

        return daily.shard_indices(run)

    @task(multiple_outputs=False)
    def ingest(run: RunPlan, shard: int) -> IngestSummary:
        from kronos_tasks.pipeline import daily

        return daily.ingest(run, shard)

    @task(multiple_outputs=False, **FORECAST_TASK)
    def forecast(run: RunPlan, ingested: IngestSummary) -> BatchResult:
        from kronos_tasks.pipeline import daily

        return daily.forecast(run, ingested.shard)

    @task(multiple_outputs=False)
    def persist(run: RunPlan, results: list[BatchResult]) -> RunSummary:
        from kronos_tasks.pipeline import daily

        # A slice reads every mapped result in one request (iterating probes past the end and logs an error).
        return daily.persist(run, list(results[:]))

    @task
    def log_to_mlflow(run: RunPlan, summary: RunSummary) -> str:
        from kronos_tasks.pipeline import tracking

        return tracking.log_run(run, summary)

    @task(retries=0, multiple_outputs=False)  # the verdict on stored results: retrying cannot change it
    def finish(summary: RunSummary) -> RunSummary:
        from kronos_tasks.pipeline import daily

        return daily.finish(summary)

    run = plan()
    results = forecast.partial(run=run).expand(ingested=ingest.partial(run=run).expand(shard=shards(run)))
    summary = persist(run, results)
    log_to_mlflow(run, summary) >> finish(summary)


kronos_daily_forecast()
