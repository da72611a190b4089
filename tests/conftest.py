"""Shared fixtures: small random Kronos pairs, the sample data, and real services."""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pandas as pd
import pytest
import torch

from kronos_tasks.model.presets import random_model, random_tokenizer

SAMPLE_DATA = Path(__file__).resolve().parents[1] / "kronos_tasks" / "sample_data"
FEATURES = ["open", "high", "low", "close", "volume", "amount"]


def pytest_addoption(parser):
    parser.addoption(
        "--shuffle",
        type=int,
        metavar="SEED",
        help="run the test files in a shuffled order and each file's tests shuffled (the seed is printed)",
    )


def pytest_collection_modifyitems(config, items):
    """With --shuffle SEED: a random order of files, and of tests within each file (module fixtures stay
    set up once per file). Proves no test depends on another having run first."""
    seed = config.getoption("--shuffle")
    if seed is None:
        return
    rng = random.Random(seed)
    by_file: dict[str, list] = {}
    for item in items:
        by_file.setdefault(item.nodeid.split("::")[0], []).append(item)
    files = list(by_file)
    rng.shuffle(files)
    items[:] = [item for name in files for item in rng.sample(by_file[name], len(by_file[name]))]


def pytest_report_header(config):
    seed = config.getoption("--shuffle")
    return None if seed is None else f"shuffled with --shuffle {seed}"


@pytest.fixture(scope="session")
def a_share() -> pd.DataFrame:
    return pd.read_csv(SAMPLE_DATA / "a_share_5min.csv", parse_dates=["timestamps"])


@pytest.fixture(scope="session")
def tiny_pair32():
    return random_tokenizer("tiny", seed=11), random_model("tiny", seed=12)


@pytest.fixture(scope="session")
def tiny_pair64():
    return random_tokenizer("tiny", seed=11).double(), random_model("tiny", seed=12).double()


@pytest.fixture(autouse=True)
def _deterministic_torch():
    torch.manual_seed(0)
    yield


# --- databases ---------------------------------------------------------------------------------------------

POSTGRES_ADMIN_URL = os.environ.get("KRONOS_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")


def _postgres_reachable(url: str) -> str | None:
    """None when a server answers at ``url``, else the reason it does not."""
    from sqlalchemy import create_engine, text

    try:
        engine = create_engine(url, connect_args={"connect_timeout": 3})
        with engine.connect() as connection:
            connection.execute(text("select 1"))
        engine.dispose()
        return None
    except Exception as exc:  # any driver or network error means "not reachable"
        return f"{type(exc).__name__}: {str(exc).splitlines()[0]}"


def _start_local_postgres() -> None:
    """Start the machine's own PostgreSQL cluster if it is installed but stopped (as on our CI machines)."""
    clusters = Path("/etc/postgresql")
    if not clusters.is_dir() or not shutil.which("pg_ctlcluster"):
        return
    for version in sorted(p.name for p in clusters.iterdir()):
        subprocess.run(
            ["pg_ctlcluster", "--skip-systemctl-redirect", version, "main", "start"], capture_output=True, timeout=60
        )


@pytest.fixture(scope="session")
def postgres_admin_url() -> str:
    """URL of a PostgreSQL server for tests: KRONOS_TEST_POSTGRES_URL or 127.0.0.1:5432 (started if stopped)."""
    reason = _postgres_reachable(POSTGRES_ADMIN_URL)
    if reason and "KRONOS_TEST_POSTGRES_URL" not in os.environ:
        _start_local_postgres()
        for _ in range(20):
            reason = _postgres_reachable(POSTGRES_ADMIN_URL)
            if reason is None:
                break
            time.sleep(0.5)
    if reason:
        pytest.skip(
            f"no PostgreSQL server at {POSTGRES_ADMIN_URL} ({reason}); set KRONOS_TEST_POSTGRES_URL to run these"
        )
    return POSTGRES_ADMIN_URL


def create_postgres_database(admin_url: str) -> tuple[str, callable]:
    """A fresh, uniquely named database on the test server -> (its URL, a function that drops it)."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    name = f"kronos_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))

    def drop() -> None:
        with admin.connect() as connection:
            connection.execute(
                text(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :name AND pid <> pg_backend_pid()"
                ),
                {"name": name},
            )
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}"'))
        admin.dispose()

    return make_url(admin_url).set(database=name).render_as_string(hide_password=False), drop


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path):
    """An empty forecasts database URL: SQLite file, then a fresh PostgreSQL database."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'kronos.db'}"
        return
    url, drop = create_postgres_database(request.getfixturevalue("postgres_admin_url"))
    yield url
    drop()


@pytest.fixture
def engine(db_url):
    """A migrated forecasts database on SQLite and on PostgreSQL."""
    from kronos_tasks.storage import make_engine, upgrade

    engine = make_engine(db_url)
    upgrade(engine)
    yield engine
    engine.dispose()


# --- kronos-flow home, MLflow -------------------------------------------------------------------------------


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def kronos_env(tmp_path, monkeypatch):
    """A fresh KRONOS_HOME (SQLite forecasts DB and MLflow store) in the environment; returns its settings."""
    from kronos_tasks.pipeline import runtime
    from kronos_tasks.settings import load

    home = tmp_path / "home"
    monkeypatch.setenv("KRONOS_HOME", str(home))
    for name in (
        "KRONOS_DB_URL",
        "MLFLOW_TRACKING_URI",
        "MLFLOW_REGISTRY_URI",
        "KRONOS_MLFLOW_ARTIFACT_ROOT",
        "KRONOS_MODEL_CACHE",
        "KRONOS_DATA_DIR",
        "KRONOS_WATCHLIST",
        "KRONOS_DEVICE",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("KRONOS_DEVICE", "cpu")
    runtime.engine_for.cache_clear()
    yield load()
    runtime.engine_for.cache_clear()


@pytest.fixture
def tiny_checkpoints(tmp_path):
    """Two different untrained tiny pairs written in the Hugging Face layout."""
    from kronos_tasks.model.presets import write_random_pair

    return [write_random_pair(tmp_path / f"pair{i}", "tiny", seed=10 * i) for i in (1, 2)]


@pytest.fixture
def mlflow_server(tmp_path):
    """A real `mlflow server` on 127.0.0.1 (SQLite backend, proxied artifacts), stopped by pid at the end."""
    import signal
    import urllib.request

    port = free_port()
    log = open(tmp_path / "mlflow-server.log", "w")
    process = subprocess.Popen(
        [
            str(Path(sys.executable).with_name("mlflow")),
            "server",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--backend-store-uri",
            f"sqlite:///{tmp_path / 'server.db'}",
            "--artifacts-destination",
            str(tmp_path / "server-artifacts"),
            "--workers",
            "1",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},  # GenAI job runners we never use
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while time.time() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"mlflow server exited: {(tmp_path / 'mlflow-server.log').read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                if response.status == 200:
                    break
        except OSError:
            time.sleep(0.5)
    else:
        os.killpg(process.pid, signal.SIGTERM)
        raise RuntimeError("mlflow server did not answer within 120 s")
    yield url
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
    log.close()
