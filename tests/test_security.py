"""Hostile input: watchlist paths outside the data folder, credentials in URLs, destructive database commands."""

from __future__ import annotations

import http.server
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from conftest import free_port
from kronos_tasks.data.schema import DataError
from kronos_tasks.data.watchlist import WatchItem
from kronos_tasks.pipeline.ingest import source_file
from kronos_tasks.settings import redact, split_userinfo

CLI = str(Path(sys.executable).with_name("kronos-flow"))
SECRET_LINE = "127.0.0.1:5432:*:postgres:hunter2-secret"


@pytest.fixture
def folders(tmp_path):
    data, outside = tmp_path / "data", tmp_path / "private"
    data.mkdir()
    outside.mkdir()
    (outside / ".pgpass").write_text(SECRET_LINE + "\n")
    (data / "GOOD_1d.csv").write_text("date,open,high,low,close\n2024-01-02,1,1,1,1\n")
    (data / "link_1d.csv").symlink_to(outside / ".pgpass")
    return data, outside


@pytest.mark.parametrize(
    "entry",
    [
        {"file": "../private/.pgpass"},
        {"file": "PLACEHOLDER_ABSOLUTE"},
        {"file": "link_1d.csv"},
        {"symbol": "../private/.pgpass", "file": None},
    ],
)
def test_watchlist_files_must_resolve_inside_the_data_folder(folders, entry):
    data, outside = folders
    entry = dict(entry)
    if entry.get("file") == "PLACEHOLDER_ABSOLUTE":
        entry["file"] = str(outside / ".pgpass")
    item = WatchItem(entry.get("symbol", "X"), "XNYS", "1d", entry["file"], "America/New_York")
    with pytest.raises(DataError, match="outside the data folder") as caught:
        source_file(item, data)
    assert "hunter2" not in str(caught.value)
    assert source_file(WatchItem("GOOD", "XNYS", "1d", None, "America/New_York"), data) == data / "GOOD_1d.csv"


def test_a_file_that_is_not_bars_is_never_quoted(tmp_path):
    from kronos_tasks.pipeline.ingest import ingest_file
    from kronos_tasks.storage import make_engine, upgrade

    engine = make_engine(f"sqlite:///{tmp_path / 'k.db'}")
    upgrade(engine)
    (tmp_path / "creds.csv").write_text(SECRET_LINE + "\nanother:line\n")
    result = ingest_file(engine, tmp_path / "creds.csv", symbol="X", exchange="XNYS")
    assert "no time column" in result.failed["X"] and "hunter2" not in result.failed["X"]
    (tmp_path / "named.csv").write_text("when,close\n2024-01-02,1\n")
    assert "Columns found: ['when', 'close']" in ingest_file(engine, tmp_path / "named.csv", symbol="Y").failed["Y"]


@pytest.mark.parametrize(
    "url, bare, user, password",
    [
        ("http://alice:p@ss/w#rd?x@mlflow.internal:5000", "http://mlflow.internal:5000", "alice", "p@ss/w#rd?x"),
        ("https://bob:s%40fe@host/path", "https://host/path", "bob", "s@fe"),
        ("postgresql+psycopg://kronos@db:5432/kronos", "postgresql+psycopg://db:5432/kronos", "kronos", None),
        ("http://127.0.0.1:5000", "http://127.0.0.1:5000", None, None),
    ],
)
def test_credentials_are_split_off_and_redacted_whatever_the_url_form(url, bare, user, password):
    assert split_userinfo(url) == (bare, user, password)
    shown = redact(url)
    assert bare.split("://", 1)[1].split("/")[0] in shown
    if password:
        assert password not in shown and "p@ss" not in shown and "s%40fe" not in shown and ":***@" in shown


def test_the_reachability_check_sends_credentials_as_a_header_not_to_dns():
    from kronos_tasks.registry.mlflow_setup import RegistryError, check_reachable

    seen = []

    class Health(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            seen.append((self.path, self.headers.get("Authorization")))
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"OK")

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Health)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        check_reachable(f"http://alice:p@ss/w#rd@127.0.0.1:{server.server_port}")
    finally:
        server.shutdown()
    assert seen == [("/health", "Basic YWxpY2U6cEBzcy93I3Jk")]  # base64 of alice:p@ss/w#rd
    with pytest.raises(RegistryError) as caught:
        check_reachable(f"http://alice:p@ss/w#rd@127.0.0.1:{free_port()}", timeout=2)
    message = str(caught.value)
    assert "p@ss" not in message and "w#rd" not in message and "alice:***@127.0.0.1" in message
    assert "refused" in message.lower()  # a connection to the host, not a failed DNS lookup of "alice:p@ss..."


def test_db_downgrade_says_what_it_drops_and_needs_yes(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KRONOS_", "MLFLOW_"))}
    env.update({"KRONOS_HOME": str(tmp_path / "home"), "KRONOS_DEVICE": "cpu"})
    subprocess.run([CLI, "db", "upgrade"], env=env, check=True, capture_output=True)
    asked = subprocess.run([CLI, "db", "downgrade", "base"], env=env, capture_output=True, text=True)
    assert asked.returncode == 1 and "drop table bars (0 rows)" in asked.stdout
    assert asked.stderr.strip().splitlines()[-1].startswith("error: nothing was changed; re-run with --yes")
    current = subprocess.run([CLI, "db", "current"], env=env, capture_output=True, text=True, check=True)
    assert "revision: 0005" in current.stdout
    done = subprocess.run([CLI, "db", "downgrade", "base", "--yes"], env=env, capture_output=True, text=True)
    assert done.returncode == 0 and "revision: None" in done.stdout


@pytest.mark.slow
def test_mlflow_with_the_compose_auth_flags_refuses_anonymous_writes_and_accepts_a_user_from_a_public_name(tmp_path):
    """The compose file's own `mlflow server` command and auth settings, on loopback with local stores."""
    import base64
    import json
    import signal
    import time
    import urllib.error
    import urllib.request

    import yaml

    docker = Path(__file__).resolve().parents[1] / "docker"
    service = yaml.safe_load((docker / "compose.yaml").read_text())["services"]["mlflow"]
    port, public = free_port(), "mlflow.example.test"
    flags = {
        "--host": "127.0.0.1",
        "--port": str(port),
        "--artifacts-destination": str(tmp_path / "artifacts"),
        "--backend-store-uri": f"sqlite:///{tmp_path / 'mlflow.db'}",
    }
    command = [str(Path(sys.executable).with_name("mlflow"))]
    for argument in service["command"][1:]:
        name, _, value = argument.partition("=")
        if name in flags:
            argument = f"{name}={flags[name]}"
        elif name == "--allowed-hosts":
            argument = argument.replace("${MLFLOW_PUBLIC_HOST:-localhost}", public).replace(
                "${KRONOS_MLFLOW_PORT:-5000}", str(port)
            )
        command.append(argument)
    ini = (
        (docker / "mlflow-auth.ini")
        .read_text()
        .replace("sqlite:////var/lib/mlflow-auth/users.db", f"sqlite:///{tmp_path / 'users.db'}")
    )
    (tmp_path / "auth.ini").write_text(ini)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env.update({k: str(v) for k, v in service["environment"].items() if not str(v).startswith("${")})
    env.update(
        {
            "MLFLOW_AUTH_CONFIG_PATH": str(tmp_path / "auth.ini"),
            "MLFLOW_AUTH_ADMIN_USERNAME": "admin",
            "MLFLOW_AUTH_ADMIN_PASSWORD": "a-long-admin-secret",
            "MLFLOW_FLASK_SERVER_SECRET_KEY": "k" * 32,
        }
    )
    log = open(tmp_path / "server.log", "w")
    process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    def call(host, user=None, name="m1"):
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/api/2.0/mlflow/registered-models/create",
            data=json.dumps({"name": name}).encode(),
            method="POST",
            headers={"Host": host, "Content-Type": "application/json"},
        )
        if user:
            request.add_header("Authorization", "Basic " + base64.b64encode(user.encode()).decode())
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status
        except urllib.error.HTTPError as exc:
            return exc.code

    try:
        deadline = time.time() + 180
        while True:
            assert process.poll() is None, (tmp_path / "server.log").read_text()[-3000:]
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2):
                    break
            except OSError:
                assert time.time() < deadline, "mlflow server did not start"
                time.sleep(0.5)
        assert call(f"localhost:{port}") == 401  # anonymous, even with a local Host header
        assert call(f"{public}:{port}", "admin:wrong") == 401
        assert call(f"evil.example:{port}", "admin:a-long-admin-secret") == 403  # not an allowed host
        assert call(f"{public}:{port}", "admin:a-long-admin-secret") == 200  # remote name, real user
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=30)
        log.close()


@pytest.mark.postgres
def test_database_roles_of_the_stack_let_workers_write_rows_but_never_change_the_schema(postgres_admin_url):
    """docker/postgres-roles.sql on the real server, under unique names: owner migrates, worker only reads/writes."""
    import shutil
    import uuid

    import pandas as pd
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import OperationalError, ProgrammingError

    from kronos_tasks.storage import make_engine, read_bars, upgrade, write_bars

    if not shutil.which("psql"):
        pytest.skip("psql (the PostgreSQL client) is not installed")
    admin = make_url(postgres_admin_url)
    tag = uuid.uuid4().hex[:8]
    names = {
        "airflow_role": f"af_{tag}",
        "mlflow_role": f"ml_{tag}",
        "kronos_db": f"kr_{tag}",
        "kronos_owner": f"kr_owner_{tag}",
        "kronos_worker": f"kr_worker_{tag}",
    }
    variables = {
        **names,
        "airflow_password": "a'1",
        "mlflow_password": "m2",
        "kronos_owner_password": "o3",
        "kronos_worker_password": "w4",
    }
    command = [
        "psql",
        "-h",
        admin.host or "127.0.0.1",
        "-p",
        str(admin.port or 5432),
        "-U",
        admin.username or "postgres",
        "-d",
        admin.database or "postgres",
        "-f",
        str(Path(__file__).resolve().parents[1] / "docker/postgres-roles.sql"),
    ]
    for key, value in variables.items():
        command += ["-v", f"{key}={value}"]
    env = {**os.environ, **({"PGPASSWORD": admin.password} if admin.password else {})}

    def url(role, database):
        return admin.set(username=role, password=variables.get(f"{role}_password"), database=database).render_as_string(
            hide_password=False
        )

    root = create_engine(postgres_admin_url, isolation_level="AUTOCOMMIT")
    try:
        subprocess.run(command, env=env, check=True, capture_output=True, text=True)
        owner = make_engine(url(names["kronos_owner"], names["kronos_db"]))
        upgrade(owner)  # migrations: the owner's job
        worker = make_engine(url(names["kronos_worker"], names["kronos_db"]))
        upgrade(worker)  # at head already: a no-op the worker may do
        bars = pd.DataFrame(
            {
                "ts": pd.date_range("2024-01-02", periods=3, freq="D", tz="UTC"),
                "open": 1.0,
                "high": 2.0,
                "low": 0.5,
                "close": 1.5,
                "volume": 10.0,
                "amount": 15.0,
            }
        )
        assert write_bars(worker, "AAA", "1d", bars, "XNYS", "America/New_York", "test") == 3
        assert write_bars(worker, "AAA", "1d", bars.assign(close=1.6), "XNYS", "America/New_York", "test") == 3
        assert read_bars(worker, "AAA", "1d", limit=10)["close"].tolist() == [1.6] * 3
        for statement in (
            "CREATE TABLE sneaky (x int)",
            "DROP TABLE bars",
            "ALTER TABLE bars ADD COLUMN x int",
            "TRUNCATE bars",
        ):
            with pytest.raises(ProgrammingError, match="permission denied|must be owner"):
                with worker.begin() as connection:
                    connection.execute(text(statement))
        for other in (names["airflow_role"], names["mlflow_role"]):
            with pytest.raises(OperationalError, match="permission denied"):
                with create_engine(url(names["kronos_worker"], other)).connect():
                    pass
        owner.dispose()
        worker.dispose()
    finally:
        with root.connect() as connection:
            for database in (names["airflow_role"], names["mlflow_role"], names["kronos_db"]):
                connection.execute(
                    text(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :d AND pid <> pg_backend_pid()"
                    ),
                    {"d": database},
                )
                connection.execute(text(f'DROP DATABASE IF EXISTS "{database}"'))
            for role in (names["airflow_role"], names["mlflow_role"], names["kronos_owner"], names["kronos_worker"]):
                connection.execute(text(f'DROP ROLE IF EXISTS "{role}"'))
        root.dispose()


def test_names_in_plots_are_text_not_mathtext(tmp_path):
    from kronos_tasks.pipeline.charts import reliability_plot

    table = [{"count": 3, "mean_forecast": 0.4, "observed": 0.5}, {"count": 0, "mean_forecast": 0.0, "observed": 0.0}]
    reliability_plot(table, r"kronos-model/1 on $\frac{BTC", tmp_path / "plot.png")  # unbalanced mathtext
    assert (tmp_path / "plot.png").stat().st_size > 0


def test_runs_says_when_a_run_was_not_logged_to_mlflow(kronos_env, capsys):
    import argparse
    from datetime import datetime, timezone

    from kronos_tasks.cli.commands import cmd_runs
    from kronos_tasks.storage import make_engine, persist_run, upgrade
    from test_storage import run_row

    engine = make_engine(kronos_env.db_url)
    upgrade(engine)
    failure = {
        "run_id": "r1",
        "symbol": "GOOG",
        "stage": "stale",
        "reason": "newest bar is old",
        "recorded_at": datetime.now(timezone.utc),
    }
    persist_run(engine, run_row("r1", mlflow_run_id=None), None, [failure])
    assert cmd_runs(argparse.Namespace(limit=5, json=False)) == 0
    shown = capsys.readouterr().out
    assert "MLflow run NOT LOGGED" in shown and "failed GOOG (stale): newest bar is old" in shown
    for n in range(2, 5):
        persist_run(engine, run_row(f"r{n}"), None, [])
    assert cmd_runs(argparse.Namespace(limit=2, json=False)) == 0
    assert capsys.readouterr().out.count("\n  status ") == 2
    assert cmd_runs(argparse.Namespace(limit=0, json=False)) == 0  # 0: all of them
    assert capsys.readouterr().out.count("\n  status ") == 4


def test_init_waits_for_the_home_lock_held_by_another_command(tmp_path):
    import fcntl
    import time

    from kronos_tasks.homelock import LOCK_FILE

    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KRONOS_", "MLFLOW_"))}
    env.update({"KRONOS_HOME": str(home), "KRONOS_DEVICE": "cpu"})
    with open(home / LOCK_FILE, "a+") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        process = subprocess.Popen([CLI, "init"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        time.sleep(8)  # long enough to have migrated, were it not waiting
        assert process.poll() is None and not (home / "kronos.db").exists()
    out, err = process.communicate(timeout=300)  # the lock is released: it goes on
    assert process.returncode == 0, err
    assert "waiting for another kronos-flow command" in err and "forecasts db:" in out
