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
    assert "revision: 0001" in current.stdout
    done = subprocess.run([CLI, "db", "downgrade", "base", "--yes"], env=env, capture_output=True, text=True)
    assert done.returncode == 0 and "revision: None" in done.stdout
