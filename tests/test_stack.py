"""The production stack, run for real: docker/compose.yaml brought up by the machine's container engine.

Builds the project's image with its own Dockerfile, starts the compose file's services in dependency
order (waiting for each one's own health check), registers a pair from outside the stack through the
authenticating MLflow server, triggers the daily DAG through Airflow's REST API with the admin from the
generated docker/.env, checks the forecasts in the stack's PostgreSQL and the MLflow run's artifacts, then
restarts the stack and checks that the data survived. Torn down (`down -v`) at the end, also on failure.
`make stack-test` runs this module alone.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest
from celery_stack import Api

import stack as compose_stack

pytestmark = [pytest.mark.stack, pytest.mark.slow]
DAG_ID = "kronos_daily_forecast"
CORE = ["postgres", "redis"]
AIRFLOW = ["airflow-apiserver", "airflow-scheduler", "airflow-dag-processor", "airflow-triggerer", "airflow-worker"]
CLI = str(Path(sys.executable).with_name("kronos-flow"))


def start(running: compose_stack.Stack) -> None:
    """Services in dependency order, each waited for by its own health check (podman-compose does not)."""
    # --no-deps: each step starts only its own services (podman-compose would otherwise recreate the
    # finished airflow-init, which the Airflow containers were created to depend on).
    running.compose("up", "-d", "--no-build", "--no-deps", *CORE)
    running.wait_healthy(CORE, 300)
    running.compose("up", "-d", "--no-build", "--no-deps", "mlflow")
    running.wait_healthy(["mlflow"], 300)
    running.compose("up", "-d", "--no-build", "--no-deps", "airflow-init")
    code = running.wait_exit("airflow-init", 900)
    assert code == 0, running.logs("airflow-init", 200)
    running.compose("up", "-d", "--no-build", "--no-deps", *AIRFLOW)
    running.wait_healthy(AIRFLOW, 600)


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    try:
        engine = compose_stack.engine()
    except compose_stack.StackUnavailable as exc:
        pytest.skip(f"no container engine for the stack test: {exc}")
    stand_ins = compose_stack.base_images(engine)
    if stand_ins:
        compose_stack.say(f"NOTE: using the local stand-ins of docker/local-bases for {stand_ins} (no registry here)")
    compose_stack.project_image(engine)
    root = tmp_path_factory.mktemp("stack")
    values = compose_stack.write_env(root / ".env")
    running = compose_stack.Stack(engine, root / ".env", f"kronos-test-{uuid.uuid4().hex[:6]}")
    started = time.monotonic()
    try:
        start(running)
        compose_stack.say(f"stack healthy in {time.monotonic() - started:.0f} s")
        yield running, values, root
    finally:
        running.down()


def http(method: str, url: str, body: dict | None = None, headers: dict | None = None) -> int:
    request = urllib.request.Request(
        url,
        method=method,
        data=None if body is None else json.dumps(body).encode(),
        headers={"Content-Type": "application/json", **(headers or {})},
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


def basic(user: str, password: str) -> dict:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def test_published_ports_refuse_anonymous_calls_and_accept_the_public_name(stack):
    _, values, _ = stack
    mlflow = f"http://127.0.0.1:{values['KRONOS_MLFLOW_PORT']}"
    create = f"{mlflow}/api/2.0/mlflow/registered-models/create"
    assert http("POST", create, {"name": "anonymous"}) == 401
    admin = basic(values["MLFLOW_ADMIN_USER"], values["MLFLOW_ADMIN_PASSWORD"])
    public = {"Host": f"{values['MLFLOW_PUBLIC_HOST']}:{values['KRONOS_MLFLOW_PORT']}"}
    assert http("POST", create, {"name": "from-a-remote-name"}, {**admin, **public}) == 200
    assert http("POST", create, {"name": "spoofed"}, {**admin, "Host": "evil.example:5000"}) == 403
    airflow = f"http://127.0.0.1:{values['KRONOS_AIRFLOW_PORT']}"
    assert http("GET", f"{airflow}/api/v2/dags") in (401, 403)
    assert http("POST", f"{airflow}/auth/token", {"username": "admin", "password": "wrong"}) in (401, 403)


@pytest.fixture(scope="module")
def forecast_through_the_stack(stack):
    """A pair registered from outside the stack (the CLI against the authenticating MLflow server) and one
    daily run triggered through Airflow's REST API and done by the Celery worker -> the client's env."""
    running, values, root = stack
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KRONOS_", "MLFLOW_"))}
    env.update(
        {
            "KRONOS_HOME": str(root / "client"),
            "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{values['KRONOS_MLFLOW_PORT']}",
            "MLFLOW_TRACKING_USERNAME": values["MLFLOW_ADMIN_USER"],
            "MLFLOW_TRACKING_PASSWORD": values["MLFLOW_ADMIN_PASSWORD"],
        }
    )
    subprocess.run([CLI, "random-pair", root / "pair", "--seed", "5"], env=env, check=True, capture_output=True)
    registered = subprocess.run(
        [
            CLI,
            "register",
            "--tokenizer",
            root / "pair/tokenizer",
            "--model",
            root / "pair/model",
            "--alias",
            "champion",
            "--untrained",
        ],
        env=env,
        capture_output=True,
        text=True,
    )
    assert registered.returncode == 0, registered.stderr

    api = Api(
        f"http://127.0.0.1:{values['KRONOS_AIRFLOW_PORT']}",
        values["AIRFLOW_ADMIN_USER"],
        values["AIRFLOW_ADMIN_PASSWORD"],
    )
    deadline = time.monotonic() + 300
    while api.ok("GET", f"/api/v2/dags/{DAG_ID}") is None:
        assert time.monotonic() < deadline, running.logs("airflow-dag-processor", 80)
        time.sleep(3)
    api.call("PATCH", f"/api/v2/dags/{DAG_ID}", {"is_paused": False})
    conf = {"pred_len": 8, "sample_count": 4, "max_staleness": 10**6}  # the bundled sample ends in 2013 / 2024
    run = api.call("POST", f"/api/v2/dags/{DAG_ID}/dagRuns", {"logical_date": "2024-08-28T21:30:00Z", "conf": conf})
    path = f"/api/v2/dags/{DAG_ID}/dagRuns/{run['dag_run_id']}"
    deadline = time.monotonic() + 900
    while (state := (api.ok("GET", path) or {}).get("state")) not in ("success", "failed"):
        assert time.monotonic() < deadline, "\n".join(
            running.logs(s, 80) for s in ("airflow-scheduler", "airflow-worker")
        )
        time.sleep(5)
    assert state == "success", "\n".join(running.logs(s, 120) for s in ("airflow-scheduler", "airflow-worker"))
    return env


def test_a_pair_registered_from_outside_forecasts_through_the_celery_worker(stack, forecast_through_the_stack):
    _, values, _ = stack
    env = forecast_through_the_stack
    from mlflow import MlflowClient
    from sqlalchemy import create_engine, text

    database = create_engine(
        f"postgresql+psycopg://kronos_worker:{values['KRONOS_WORKER_DB_PASSWORD']}@127.0.0.1:"
        f"{values['KRONOS_POSTGRES_PORT']}/kronos"
    )
    with database.connect() as connection:
        row = connection.execute(
            text("SELECT status, symbols_ok, mlflow_run_id, model_version FROM forecast_runs WHERE run_id = :r"),
            {"r": f"{DAG_ID}@2024-08-28T21:30:00+00:00"},
        ).one()
        count = connection.execute(text("SELECT count(*) FROM forecasts")).scalar_one()
    database.dispose()
    assert (row.status, row.symbols_ok, row.model_version) == ("success", 2, "1") and count == 2 * 6 * 8
    os.environ.update({k: env[k] for k in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")})
    try:
        listed = {a.path for a in MlflowClient(env["MLFLOW_TRACKING_URI"]).list_artifacts(row.mlflow_run_id)}
    finally:
        for key in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
            os.environ.pop(key, None)
    assert {"forecasts.csv", "fan_chart.png"} <= listed  # stored by the server, not in a worker's own folder


def test_the_data_survives_a_restart_of_the_stack(stack, forecast_through_the_stack):
    running, values, _ = stack
    running.compose("down", "--timeout", "20", timeout=600)  # containers go, volumes stay
    start(running)
    from sqlalchemy import create_engine, text

    database = create_engine(
        f"postgresql+psycopg://kronos_worker:{values['KRONOS_WORKER_DB_PASSWORD']}@127.0.0.1:"
        f"{values['KRONOS_POSTGRES_PORT']}/kronos"
    )
    with database.connect() as connection:
        assert connection.execute(text("SELECT count(*) FROM forecast_runs WHERE status = 'success'")).scalar_one() >= 1
    database.dispose()
    mlflow = f"http://127.0.0.1:{values['KRONOS_MLFLOW_PORT']}"
    admin = basic(values["MLFLOW_ADMIN_USER"], values["MLFLOW_ADMIN_PASSWORD"])
    request = urllib.request.Request(f"{mlflow}/api/2.0/mlflow/registered-models/get?name=kronos-model", headers=admin)
    with urllib.request.urlopen(request, timeout=30) as response:
        model = json.loads(response.read())["registered_model"]
    assert any(alias["alias"] == "champion" for alias in model.get("aliases", []))
