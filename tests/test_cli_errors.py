"""Every kronos-flow subcommand answers bad input with one `error:` line and no traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import free_port

CLI = str(Path(sys.executable).with_name("kronos-flow"))
PORT = free_port()

CASES = {
    "init": (["init"], {"KRONOS_DB_URL": "nosuchdriver://x/y"}),
    "db": (["db", "upgrade"], {"KRONOS_DB_URL": "postgresql+psycopg://u:secret-pw@127.0.0.1:1/none"}),
    "db downgrade": (["db", "downgrade", "no-such-revision"], {}),
    "ingest": (["ingest", "/no/such/file.csv"], {}),
    "fetch": (["fetch", "NOT-IN-WATCHLIST"], {}),
    "fetch --since": (
        ["fetch", "X", "--source", "yfinance", "--exchange", "XNYS", "--interval", "1d", "--since", "soon"],
        {},
    ),
    "random-pair": (["random-pair", "/proc/forbidden/pair"], {}),
    "register": (["register", "--tokenizer", "/no/tok", "--model", "/no/model"], {}),
    "models": (["models"], {"MLFLOW_TRACKING_URI": f"http://user:secret-pw@127.0.0.1:{PORT}"}),
    "promote": (["promote", "999"], {}),
    "rollback": (["rollback", "--alias", "nobody"], {}),
    "runs": (["runs", "--limit", "-1"], {}),
    "replay": (["replay", "no-such-run"], {}),
    "forecast": (["forecast", "/no/bars.csv", "--out", "/tmp/x.csv", "--exchange", "XNYS"], {}),
    "forecast --out": (["forecast", "IN", "--out", "IN", "--exchange", "XNYS"], {}),
    "demo": (["demo", "--date", "not-a-date"], {}),
    "backtest": (["backtest", "--symbols", "NOPE"], {}),
}


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_is_one_error_line_without_a_traceback(name, tmp_path):
    args, extra = CASES[name]
    bars = tmp_path / "bars_1d.csv"
    bars.write_text("date,open,high,low,close\n2024-01-02,1,1,1,1\n")
    args = [str(bars) if a == "IN" else a for a in args]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KRONOS_", "MLFLOW_"))}
    env.update({"KRONOS_HOME": str(tmp_path / "home"), "KRONOS_DEVICE": "cpu", **extra})
    result = subprocess.run([CLI, *args], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode != 0, result.stdout
    assert "Traceback" not in result.stderr, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") or ": error: " in last, result.stderr  # ours, or argparse's usage error
    assert "secret-pw" not in result.stderr + result.stdout
    assert bars.read_text().startswith("date,open")  # --out never overwrote an input
    if name == "forecast --out":
        assert "is the input file" in last
