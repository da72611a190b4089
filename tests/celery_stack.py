"""A loopback Airflow deployment with the CeleryExecutor, started as processes: Airflow on PostgreSQL with Redis
as the broker, scheduler, DAG processor, API server and Celery workers, and an MLflow server on PostgreSQL,
on free ports. Used by tests/test_distributed.py and bench/daily_scale.py (``--celery``).
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
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from conftest import create_postgres_database, free_port

BIN = Path(sys.executable).parent
DAGS = Path(__file__).resolve().parents[1] / "dags"
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

    def worker(self, name: str, queues: str, cpus: str | None = None) -> subprocess.Popen:
        """A Celery worker consuming ``queues`` (comma-separated), named ``name@host``, with its own free
        log-server port; with ``cpus`` (``taskset`` list) it and its tasks run on those cores only."""
        pinned = ["taskset", "-c", cpus] if cpus else []
        return self.start(
            name,
            [*pinned, str(BIN / "airflow"), "celery", "worker", "--queues", queues, "--celery-hostname", f"{name}@%h"],
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


@contextmanager
def celery_stack(
    root: Path, admin_url: str, pair: tuple[Path, Path], workers: dict[str, tuple[str, str | None]], **settings: str
) -> Iterator[Stack]:
    """The deployment in ``root``, with three fresh databases on ``admin_url``'s server and a Redis database
    flushed before and after; ``pair`` (tokenizer and model folders) registered as the untrained champion;
    ``workers`` maps each worker's name to its queues and cores (None: all). ``settings`` add to or replace
    the environment of every process. Every process is stopped and the databases dropped on exit."""
    from cryptography.fernet import Fernet

    drops = []
    urls = {}
    for role in ("airflow", "forecasts", "mlflow"):
        url, drop = create_postgres_database(admin_url)
        urls[role], drops = url, drops + [drop]
    redis_db = 1 + os.getpid() % 15
    password = secrets.token_urlsafe(16)
    (root / "passwords.json").write_text(json.dumps({"kronos": password}))
    api_port, mlflow_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KRONOS_", "MLFLOW_", "AIRFLOW"))}
    env.update(
        {
            "AIRFLOW_HOME": str(root / "airflow"),
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
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(root / "passwords.json"),
            "AIRFLOW__CORE__DAGS_FOLDER": str(DAGS),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
            "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
            "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT": "20",
            "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT_DETECTION_INTERVAL": "3",
            "AIRFLOW__CELERY__WORKER_CONCURRENCY": "1",
            "KRONOS_HOME": str(root / "kronos"),
            "KRONOS_DB_URL": urls["forecasts"],
            "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{mlflow_port}",
            "KRONOS_DEVICE": "cpu",
            "KRONOS_FORECAST_RETRY_DELAY": "3",
            "KRONOS_SCHEDULE": "none",  # no scheduled daily run during the test: only the one it triggers
            "MLFLOW_LOGGING_LEVEL": "WARNING",
            **settings,
        }
    )
    stack = Stack(root, env)
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
                str(root / "mlartifacts"),
                "--workers",
                "1",
            ],
            MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false",  # GenAI job runners: eight processes kronos-flow never uses
        )
        stack.run([str(BIN / "airflow"), "db", "migrate"])
        stack.run([str(BIN / "airflow"), "pools", "set", "gpu", "2", "forecast tasks"])
        wait_for("the MLflow server", lambda: _healthy(f"http://127.0.0.1:{mlflow_port}/health"), 120, stack)
        stack.run([str(BIN / "kronos-flow"), "init"])
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
        for name, (queues, cpus) in workers.items():
            stack.worker(name, queues, cpus)
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
