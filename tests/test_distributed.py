"""A real distributed run: Airflow on PostgreSQL with the CeleryExecutor on Redis, scheduler, DAG processor,
API server and two Celery workers (queues default and gpu), an MLflow server on PostgreSQL, the daily DAG
triggered through Airflow's REST API, and a GPU worker killed while it forecasts.

Everything is started as processes by the test on free ports and stopped by process id at the end.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from conftest import create_postgres_database, free_port

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent
DAGS = Path(__file__).resolve().parents[1] / "dags"
DAG_ID = "kronos_daily_forecast"
REDIS = ("127.0.0.1", 6379)


def redis_available() -> str | None:
    import socket

    try:
        with socket.create_connection(REDIS, timeout=2):
            return None
    except OSError as exc:
        return str(exc)


class Stack:
    """The processes of the test, each in its own session so that its whole tree can be signalled."""

    def __init__(self, root: Path, env: dict[str, str]):
        self.root, self.env, self.processes = root, env, {}

    def start(self, name: str, args: list[str], **env: str) -> subprocess.Popen:
        log = open(self.root / f"{name}.log", "w")
        process = subprocess.Popen(
            args, env={**self.env, **env}, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        self.processes[name] = process
        return process

    def worker(self, name: str, queue: str) -> subprocess.Popen:
        """A Celery worker consuming ``queue``, named ``name@host``, with its own free log-server port."""
        return self.start(
            name,
            [str(BIN / "airflow"), "celery", "worker", "--queues", queue, "--celery-hostname", f"{name}@%h"],
            AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT=str(free_port()),
        )

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        process = self.processes.pop(name)
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            pass
        process.wait(timeout=60)

    def stop_all(self) -> None:
        for name in list(self.processes):
            process = self.processes[name]
            try:
                os.killpg(process.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        deadline = time.time() + 30
        for process in list(self.processes.values()):
            try:
                process.wait(timeout=max(1, deadline - time.time()))
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
        self.processes.clear()

    def log(self, name: str, tail: int | None = 3000) -> str:
        path = self.root / f"{name}.log"
        text = path.read_text() if path.exists() else ""
        return text[-tail:] if tail else text

    def run(self, args: list[str]) -> None:
        subprocess.run(args, env=self.env, check=True, capture_output=True, text=True, timeout=600)


def wait_for(what: str, check, timeout: float, stack: Stack, interval: float = 1.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        result = check()
        if result:
            return result
        time.sleep(interval)
    logs = "\n".join(f"--- {name}\n{stack.log(name, 1500)}" for name in stack.processes)
    raise AssertionError(f"timed out waiting for {what}\n{logs}")


class Api:
    def __init__(self, base: str, user: str, password: str):
        self.base, self.user, self.password, self.token = base, user, password, None

    def call(self, method: str, path: str, body: dict | None = None):
        if self.token is None:
            request = urllib.request.Request(
                f"{self.base}/auth/token",
                method="POST",
                data=json.dumps({"username": self.user, "password": self.password}).encode(),
                headers={"Content-Type": "application/json"},
            )
            with urllib.request.urlopen(request, timeout=30) as response:
                self.token = json.loads(response.read())["access_token"]
        request = urllib.request.Request(
            f"{self.base}{path}",
            method=method,
            data=None if body is None else json.dumps(body).encode(),
            headers={"Authorization": f"Bearer {self.token}", "Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read() or b"null")

    def ok(self, method: str, path: str):
        try:
            return self.call(method, path)
        except (urllib.error.URLError, OSError):
            return None


@pytest.fixture
def stack(tmp_path, postgres_admin_url):
    reason = redis_available()
    if reason:
        pytest.skip(f"no Redis server at {REDIS[0]}:{REDIS[1]} ({reason})")
    from cryptography.fernet import Fernet

    from kronos_tasks.model.presets import write_random_pair

    drops = []
    urls = {}
    for role in ("airflow", "forecasts", "mlflow"):
        url, drop = create_postgres_database(postgres_admin_url)
        urls[role], drops = url, drops + [drop]
    redis_db = 1 + os.getpid() % 15
    password = secrets.token_urlsafe(16)
    (tmp_path / "passwords.json").write_text(json.dumps({"kronos": password}))
    api_port, mlflow_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KRONOS_", "MLFLOW_", "AIRFLOW"))}
    env.update(
        {
            "AIRFLOW_HOME": str(tmp_path / "airflow"),
            "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": urls["airflow"].replace("+psycopg:", "+psycopg2:"),
            "AIRFLOW__CELERY__BROKER_URL": f"redis://{REDIS[0]}:{REDIS[1]}/{redis_db}",
            "AIRFLOW__CELERY__RESULT_BACKEND": "db+" + urls["airflow"].replace("postgresql+psycopg:", "postgresql:"),
            "AIRFLOW__CORE__FERNET_KEY": Fernet.generate_key().decode(),
            "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_urlsafe(32),
            "AIRFLOW__API__SECRET_KEY": secrets.token_urlsafe(32),
            "AIRFLOW__API__PORT": str(api_port),
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{api_port}/execution/",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "kronos:admin",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(tmp_path / "passwords.json"),
            "AIRFLOW__CORE__DAGS_FOLDER": str(DAGS),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
            "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
            "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT": "20",
            "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT_DETECTION_INTERVAL": "3",
            "AIRFLOW__CELERY__WORKER_CONCURRENCY": "1",
            "KRONOS_HOME": str(tmp_path / "kronos"),
            "KRONOS_DB_URL": urls["forecasts"],
            "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{mlflow_port}",
            "KRONOS_DEVICE": "cpu",
            "KRONOS_FORECAST_RETRY_DELAY": "3",
            "KRONOS_SCHEDULE": "none",  # no scheduled daily run during the test: only the one it triggers
            "MLFLOW_LOGGING_LEVEL": "WARNING",
        }
    )
    stack = Stack(tmp_path, env)
    import redis

    redis.Redis(host=REDIS[0], port=REDIS[1], db=redis_db).flushdb()
    # A SIGTERM to pytest (a CI timeout) becomes KeyboardInterrupt, so the finally below still stops the stack.
    previous_handler = signal.signal(signal.SIGTERM, _interrupt)
    try:
        stack.start(
            "mlflow",
            [
                str(BIN / "mlflow"),
                "server",
                "--host",
                "127.0.0.1",
                "--port",
                str(mlflow_port),
                "--backend-store-uri",
                urls["mlflow"],
                "--artifacts-destination",
                str(tmp_path / "mlartifacts"),
                "--workers",
                "1",
            ],
            MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false",  # GenAI job runners: eight processes kronos-flow never uses
        )
        stack.run([str(BIN / "airflow"), "db", "migrate"])
        stack.run([str(BIN / "airflow"), "pools", "set", "gpu", "2", "forecast tasks"])
        wait_for("the MLflow server", lambda: _healthy(f"http://127.0.0.1:{mlflow_port}/health"), 120, stack)
        stack.run([str(BIN / "kronos-flow"), "init"])
        pair = write_random_pair(tmp_path / "pair", "Kronos-small", seed=3)
        stack.run(
            [
                str(BIN / "kronos-flow"),
                "register",
                "--tokenizer",
                str(pair[0]),
                "--model",
                str(pair[1]),
                "--alias",
                "champion",
                "--untrained",
            ]
        )
        stack.start("api-server", [str(BIN / "airflow"), "api-server", "--host", "127.0.0.1", "--port", str(api_port)])
        stack.start("scheduler", [str(BIN / "airflow"), "scheduler"])
        stack.start("dag-processor", [str(BIN / "airflow"), "dag-processor"])
        stack.worker("worker-default", "default")
        stack.worker("worker-gpu", "gpu")
        stack.api = Api(f"http://127.0.0.1:{api_port}", "kronos", password)
        stack.urls = urls
        yield stack
    finally:
        stack.stop_all()
        redis.Redis(host=REDIS[0], port=REDIS[1], db=redis_db).flushdb()
        for drop in drops:
            drop()
        signal.signal(signal.SIGTERM, previous_handler)


def _interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=3) as response:
            return response.status == 200
    except OSError:
        return False


def test_daily_dag_through_celery_workers_survives_a_killed_gpu_worker(stack):
    from sqlalchemy import create_engine, func, select

    from kronos_tasks.storage.models import Forecast, ForecastRun, StagedForecast

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
        staged = connection.execute(select(func.count()).select_from(StagedForecast)).scalar_one()
    engine.dispose()
    assert stored.status == "success" and count == 2 * 6 * 96 and staged == 0
    assert stored.extra["hosts"], "the forecast recorded the host it ran on"
    assert stored.extra["dag_run_id"] == run_id
    from mlflow import MlflowClient

    mlflow_run = MlflowClient(stack.env["MLFLOW_TRACKING_URI"]).get_run(stored.mlflow_run_id)
    assert mlflow_run.data.params["model_version"] == "1" and mlflow_run.data.metrics["symbols_ok"] == 2
