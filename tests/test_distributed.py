"""A real distributed run: Airflow on PostgreSQL with the CeleryExecutor on Redis, scheduler, DAG processor,
API server and two Celery workers (queues default and gpu), an MLflow server on PostgreSQL, the daily DAG
triggered through Airflow's REST API, and a GPU worker killed while it forecasts.

Everything is started as processes by the test on free ports and stopped by process id at the end
(``celery_stack``).
"""

from __future__ import annotations

import time

import pytest
from celery_stack import REDIS, celery_stack, redis_available, wait_for

pytestmark = pytest.mark.slow

DAG_ID = "kronos_daily_forecast"


@pytest.fixture
def stack(tmp_path, postgres_admin_url):
    reason = redis_available()
    if reason:
        pytest.skip(f"no Redis server at {REDIS[0]}:{REDIS[1]} ({reason})")
    from kronos_tasks.model.presets import write_random_pair

    pair = write_random_pair(tmp_path / "pair", "Kronos-small", seed=3)
    workers = {"worker-default": ("default", None), "worker-gpu": ("gpu", None)}
    with celery_stack(tmp_path, postgres_admin_url, pair, workers) as stack:
        yield stack


def test_daily_dag_through_celery_workers_survives_a_killed_gpu_worker(stack):
    from sqlalchemy import create_engine, func, select

    from kronos_tasks.storage.models import Forecast, ForecastRun, StagedForecastChunk

    api = stack.api
    wait_for("the DAG to be parsed", lambda: api.ok("GET", f"/api/v2/dags/{DAG_ID}"), 240, stack, 2)
    api.call("PATCH", f"/api/v2/dags/{DAG_ID}", {"is_paused": False})
    # The bundled GOOG bars end in 2013: this 2024 run forecasts them only when told that stale data is fine.
    conf = {"pred_len": 96, "sample_count": 64, "lookback": 384, "max_staleness": 10**6}
    run = api.call("POST", f"/api/v2/dags/{DAG_ID}/dagRuns", {"logical_date": "2024-08-28T21:30:00Z", "conf": conf})
    run_id = run["dag_run_id"]
    path = f"/api/v2/dags/{DAG_ID}/dagRuns/{run_id}"

    def forecast_instances():
        result = api.ok("GET", f"{path}/taskInstances?limit=100")
        return [ti for ti in (result or {}).get("task_instances", []) if ti["task_id"] == "forecast"]

    # Kill the GPU worker while it forecasts; a replacement worker on the gpu queue takes the retry.
    running = wait_for(
        "the forecast task to run",
        lambda: [t for t in forecast_instances() if t["state"] == "running"],
        600,
        stack,
        0.5,
    )
    assert running[0]["queue"] == "gpu"
    time.sleep(3)
    stack.kill("worker-gpu")
    stack.worker("worker-gpu-2", "gpu")

    final = wait_for(
        "the DAG run to finish",
        lambda: (lambda r: r if r and r["state"] in ("success", "failed") else None)(api.ok("GET", path)),
        900,
        stack,
        2,
    )
    assert final["state"] == "success", "\n".join(stack.log(n, 2500) for n in ("scheduler", "worker-gpu-2"))

    forecasts = forecast_instances()
    assert forecasts and all(t["state"] == "success" and t["queue"] == "gpu" for t in forecasts)
    assert forecasts[0]["try_number"] >= 2 and forecasts[0]["hostname"]
    others = api.call("GET", f"{path}/taskInstances?limit=100")["task_instances"]
    persist = next(t for t in others if t["task_id"] == "persist")
    assert persist["queue"] == "default"
    # The workers' own records: the killed GPU worker took the first try, its replacement the last one,
    # and the CPU worker ran persist but never a forecast.
    attempt = "task_id=forecast/map_index=0/attempt={}.log"
    assert attempt.format(1) in stack.log("worker-gpu", None)
    assert attempt.format(forecasts[0]["try_number"]) in stack.log("worker-gpu-2", None)
    assert "task_id=forecast/" not in stack.log("worker-default", None)
    assert "task_id=persist/" in stack.log("worker-default", None)
    # Rows neither lost nor doubled: 2 symbols x 6 features x 96 steps, nothing left in staging.
    engine = create_engine(stack.urls["forecasts"])
    with engine.connect() as connection:
        stored = connection.execute(
            select(ForecastRun.run_id, ForecastRun.status, ForecastRun.mlflow_run_id, ForecastRun.extra)
        ).one()
        count = connection.execute(select(func.count()).where(Forecast.run_id == stored.run_id)).scalar_one()
        staged = connection.execute(select(func.count()).select_from(StagedForecastChunk)).scalar_one()
    engine.dispose()
    assert stored.status == "success" and count == 2 * 6 * 96 and staged == 0
    assert stored.extra["hosts"], "the forecast recorded the host it ran on"
    assert stored.extra["dag_run_id"] == run_id
    from mlflow import MlflowClient

    mlflow_run = MlflowClient(stack.env["MLFLOW_TRACKING_URI"]).get_run(stored.mlflow_run_id)
    assert mlflow_run.data.params["model_version"] == "1" and mlflow_run.data.metrics["symbols_ok"] == 2
