"""The kronos-flow command, run as users run it: separate processes sharing one KRONOS_HOME."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from conftest import SAMPLE_DATA

CLI = str(Path(sys.executable).with_name("kronos-flow"))


@pytest.fixture
def home(tmp_path):
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("KRONOS_", "MLFLOW_"))}
    environ.update({"KRONOS_HOME": str(tmp_path / "home"), "KRONOS_DEVICE": "cpu"})
    return environ


def cli(env, *args, ok=True):
    result = subprocess.run([CLI, *map(str, args)], env=env, capture_output=True, text=True, timeout=600)
    if ok:
        assert result.returncode == 0, f"kronos-flow {' '.join(map(str, args))}:\n{result.stdout}\n{result.stderr}"
    return result


def test_register_promote_resolve_in_another_process_and_roll_back(home, tmp_path):
    cli(home, "init")
    cli(home, "random-pair", tmp_path / "one", "--seed", "1")
    out = cli(
        home, "register", "--tokenizer", tmp_path / "one/tokenizer", "--model", tmp_path / "one/model", "--untrained"
    ).stdout
    assert "registered kronos-model version 1 with kronos-tokenizer version 1" in out
    assert "@champion" in cli(home, "promote", "1").stdout
    # Another process resolves @champion to the pinned pair, loads it and forecasts.
    code = (
        "from kronos_tasks.forecasting.engine import pinned_predictor\n"
        "from kronos_tasks.pipeline import runtime\n"
        "pair = runtime.registry().resolve('champion')\n"
        "model = pinned_predictor(pair, 'cpu', 1).model\n"
        "print(pair.model_version, pair.tokenizer_version, pair.model_sha256, model.config.n_layers)\n"
    )
    resolved = subprocess.run([sys.executable, "-c", code], env=home, capture_output=True, text=True, check=True)
    version, tokenizer_version, sha, layers = resolved.stdout.split()
    assert (version, tokenizer_version, layers) == ("1", "1", "2") and len(sha) == 64
    forecast = tmp_path / "forecast.csv"
    made = cli(
        home,
        "forecast",
        SAMPLE_DATA / "a_share_5min.csv",
        "--out",
        forecast,
        "--exchange",
        "XSHG",
        "--pred-len",
        "12",
        "--sample-count",
        "4",
        "--model",
        "champion",
    )
    assert "kronos-model v1, seed " in made.stdout and "4 sample paths" in made.stdout
    assert "WARNING: UNTRAINED model" in made.stderr
    import json

    record = json.loads(Path(f"{forecast}.json").read_text())
    assert record["weights"]["model_version"] == "1" and record["weights"]["model_sha256"] == sha
    assert record["params"]["pred_len"] == 12 and record["warning"].startswith("UNTRAINED")
    assert record["windows"]["a_share"]["last_ts"].startswith("2024-08-29")
    frame = pd.read_csv(forecast)
    assert len(frame) == 12 and {"close", "close_q0.1", "close_q0.9", "target_local"} <= set(frame.columns)
    assert frame["target_local"].iloc[0] == "2024-08-29 13:05:00"  # after the lunch break

    cli(home, "random-pair", tmp_path / "two", "--seed", "2")
    cli(
        home,
        "register",
        "--tokenizer",
        tmp_path / "two/tokenizer",
        "--model",
        tmp_path / "two/model",
        "--alias",
        "champion",
        "--reason",
        "second try",
    )
    assert "-> 1 (rolled back)" in cli(home, "rollback", "--reason", "bad").stdout
    listing = cli(home, "models").stdout
    assert "@champion" in listing.splitlines()[1] and "UNTRAINED" in listing
    assert "promote 1 -> 2 by" in listing and "rollback 2 -> 1 by" in listing and "second try" in listing


def test_registry_errors_are_one_clear_line(home, tmp_path):
    result = cli(home, "promote", "3", ok=False)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1].startswith("error: kronos-model has no version 3")
    assert "Traceback" not in result.stderr
    result = cli(home, "register", "--tokenizer", tmp_path / "nope", "--model", tmp_path / "nope", ok=False)
    assert result.returncode == 1 and "does not exist" in result.stderr


def test_bad_sampling_options_are_one_clear_line(home, tmp_path):
    csv = SAMPLE_DATA / "a_share_5min.csv"
    base = ("forecast", csv, "--out", tmp_path / "f.csv", "--exchange", "XSHG")
    result = cli(home, *base, "--quantiles", "0.1,half", ok=False)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        "error: --quantiles must be comma-separated numbers such as 0.1,0.5,0.9, got '0.1,half'."
    )
    result = cli(home, *base, "--top-p", "1.5", ok=False)
    assert result.returncode == 1 and "top_p" in result.stderr.strip().splitlines()[-1]
    result = cli(home, *base, "--dtype", "half", ok=False)
    assert result.stderr.strip().splitlines()[-1] == (
        "error: dtype must be one of ('float32', 'bfloat16', 'float16'), got 'half'."
    )
    assert not (tmp_path / "f.csv").exists()


def test_ingest_prints_the_report_and_is_idempotent(home, tmp_path):
    bad = pd.read_csv(SAMPLE_DATA / "a_share_5min.csv").iloc[:60]
    bad.loc[5, "high"] = 1.0  # row 6: high below open/close
    bad.to_csv(tmp_path / "BAD_5min.csv", index=False)
    out = cli(home, "ingest", SAMPLE_DATA / "a_share_5min.csv", tmp_path / "BAD_5min.csv", "--exchange", "XSHG").stdout
    assert "high_below_open_close: 1" in out and "BAD row 6" in out and "wrote 2500 bar(s) for a_share" in out
    assert "wrote 59 bar(s) for BAD" in out
    again = cli(home, "ingest", SAMPLE_DATA / "GOOG_1d.csv", "--exchange", "XNYS").stdout
    assert "amount = volume x mean" in again
    code = "from kronos_tasks.pipeline import runtime; from kronos_tasks.storage import bar_count; print(bar_count(runtime.engine()))"
    count = subprocess.run([sys.executable, "-c", code], env=home, capture_output=True, text=True, check=True).stdout
    cli(home, "ingest", SAMPLE_DATA / "GOOG_1d.csv", "--exchange", "XNYS")
    assert (
        subprocess.run([sys.executable, "-c", code], env=home, capture_output=True, text=True, check=True).stdout
        == count
    )


def test_backtest_over_a_hundred_origins_for_a_model_and_the_baseline(home, tmp_path):
    cli(home, "ingest", SAMPLE_DATA / "a_share_5min.csv", "--exchange", "XSHG")
    cli(home, "random-pair", tmp_path / "pair")
    cli(
        home,
        "register",
        "--tokenizer",
        tmp_path / "pair/tokenizer",
        "--model",
        tmp_path / "pair/model",
        "--alias",
        "champion",
        "--untrained",
    )
    common = ["--symbols", "a_share", "--origins", "100", "--stride", "5", "--pred-len", "6", "--lookback", "96"]
    model = cli(home, "backtest", *common, "--sample-count", "8", "--out", tmp_path / "bt.csv").stdout
    assert model.startswith("100 origins, 600 points")
    assert "kronos-model/1 (untrained)" in model and "skill vs persistence" in model and "Brier" in model
    assert "persistence" in model and "seasonal" in model and "reliability of P(close up)" in model
    rows = pd.read_csv(tmp_path / "bt.csv")
    assert rows["origin_ts"].nunique() == 100 and {"mean", "p_up", "crps", "persistence"} <= set(rows.columns)
    baseline = cli(home, "backtest", *common, "--baseline").stdout
    assert "100 origins" in baseline and "persistence" in baseline and "kronos-model" not in baseline


def test_forecast_names_the_rows_it_drops(home, tmp_path):
    cli(home, "random-pair", tmp_path / "pair", "--seed", "3")
    bars = pd.read_csv(SAMPLE_DATA / "a_share_5min.csv").iloc[:300]
    bars.loc[40, "close"] = -1.0  # row 41
    bars.loc[99, "volume"] = float("nan")  # row 100
    bars.to_csv(tmp_path / "X_5min.csv", index=False)
    result = cli(
        home,
        "forecast",
        tmp_path / "X_5min.csv",
        "--out",
        tmp_path / "f.csv",
        "--exchange",
        "XSHG",
        "--checkpoints",
        tmp_path / "pair/tokenizer",
        tmp_path / "pair/model",
        "--pred-len",
        "2",
        "--sample-count",
        "1",
    )
    dropped = [line for line in result.stderr.splitlines() if line.startswith("dropped")]
    assert {line.split()[3] for line in dropped} == {"41", "100"}
    assert any("row 41" in line and "[non_positive_price]" in line for line in dropped)
    assert any("row 100" in line and "[non_finite]" in line for line in dropped)
    assert len(pd.read_csv(tmp_path / "f.csv")) == 2


@pytest.mark.slow
def test_fetch_backfills_from_since_then_resumes_and_names_what_failed(home, tmp_path):
    tests = Path(__file__).resolve().parent
    env = {
        **home,
        "PYTHONPATH": os.pathsep.join([str(tests / "replay_site"), str(tests)]),
        "KRONOS_REPLAY_CACHE": str(tmp_path / "yfinance-cache"),
    }
    cli(env, "init")
    watchlist = tmp_path / "watchlist.yaml"
    watchlist.write_text(
        "symbols:\n"
        "  - {symbol: BTC-USDT, exchange: 24/7, interval: 1h, source: 'ccxt:binance', ticker: BTC/USDT}\n"
        "  - {symbol: SAMPLE, exchange: XSHG, interval: 5min}\n"
    )
    env["KRONOS_WATCHLIST"] = str(watchlist)
    out = cli(env, "fetch", "BTC-USDT", "--since", "2024-08-20", "--until", "2024-08-28T04:00Z").stdout
    assert "wrote 196 bar(s) for BTC-USDT" in out  # 2024-08-20 00:00 .. 2024-08-28 03:00, hourly
    out = cli(env, "fetch", "BTC-USDT:1h", "--until", "2024-08-29T04:00Z").stdout
    assert "wrote 34 bar(s) for BTC-USDT" in out  # 10 bars of overlap upserted + 24 new
    out = cli(
        env,
        "fetch",
        "GOOG-YF",
        "--source",
        "yfinance",
        "--exchange",
        "XNYS",
        "--interval",
        "1d",
        "--ticker",
        "GOOG",
        "--since",
        "2024-08-01",
        "--until",
        "2024-08-29",
    ).stdout
    assert "wrote 20 bar(s) for GOOG-YF" in out
    refused = cli(env, "fetch", "SAMPLE", ok=False)
    assert refused.returncode == 1 and "reads its bars from files; use `kronos-flow ingest FILE`" in refused.stderr
    failed = cli(
        env,
        "fetch",
        "NOPE",
        "--source",
        "ccxt:binance",
        "--exchange",
        "24/7",
        "--interval",
        "1h",
        "--ticker",
        "NOPE/USDT",
        "--since",
        "2024-08-20",
        "--until",
        "2024-08-21",
        ok=False,
    )
    assert failed.returncode == 1 and "FAILED NOPE" in failed.stdout and "does not have market symbol" in failed.stdout


@pytest.mark.slow
def test_demo_is_quiet_prints_working_commands_and_its_run_replays_exactly(home, tmp_path):
    import shlex
    import sqlite3

    result = cli(home, "demo", "--date", "2024-08-28")
    lines = result.stdout.splitlines()
    assert "DEMONSTRATION pair" in result.stdout and "not a published Kronos checkpoint" in result.stdout
    assert "symbol(s) forecast, 0 failed" in result.stdout
    # One screen: progress per step and task and a summary; Airflow's log is in the file it names.
    assert len(lines) <= 25 and not any("[info" in line or "[error" in line for line in lines), result.stdout
    for task in ("plan", "ingest[0]", "forecast[0]", "persist", "log_to_mlflow", "finish"):
        assert any(line.strip().startswith(f"{task} ") and line.endswith(" s") for line in lines), task
    log = Path(home["KRONOS_HOME"]) / "logs" / "demo-2024-08-28.log"
    assert "[DAG TEST] end task task_id=finish" in log.read_text()
    assert "[error" not in log.read_text()  # nothing error-level on a successful run
    # The run's start is when it started, not its logical date (dag.test records the latter).
    with sqlite3.connect(Path(home["KRONOS_HOME"]) / "airflow" / "airflow.db") as airflow_db:
        (started,) = airflow_db.execute("SELECT start_date FROM dag_run").fetchone()
    assert started.startswith(str(pd.Timestamp.now("UTC").year))
    models = cli(home, "models").stdout
    assert "UNTRAINED" not in models
    again = cli(home, "demo", "--date", "2024-08-28")  # idempotent: the same version, the run replaced
    assert "model: kronos-model v1 (@champion) (demonstration model" in again.stdout

    # The replay command works as printed, from a fresh shell, and reproduces the run bit for bit.
    command = next(line for line in again.stdout.splitlines() if " replay " in line).split("replay   ", 1)[1]
    bare = {k: v for k, v in home.items() if k not in ("KRONOS_HOME", "PATH")} | {"PATH": "/usr/bin:/bin"}
    replayed = subprocess.run(["bash", "-c", command], env=bare, capture_output=True, text=True, timeout=600)
    assert replayed.returncode == 0 and "2 of 2 symbol(s) reproduce the stored forecast exactly" in replayed.stdout
    run_id = shlex.split(command)[-1]

    # A bar changed inside GOOG's window is reported as a data change, not as a model difference.
    with sqlite3.connect(Path(home["KRONOS_HOME"]) / "kronos.db") as forecasts_db:
        forecasts_db.execute(
            "UPDATE bars SET close = close * 1.01 WHERE symbol = 'GOOG' AND ts = "
            "(SELECT last_ts FROM forecast_windows WHERE symbol = 'GOOG')"
        )
    changed = cli(home, "replay", run_id, ok=False)
    assert changed.returncode == 1, changed.stdout + changed.stderr
    assert "GOOG:1d       data changed: the stored bars from 2012-" in changed.stdout
    assert "not the model" in changed.stdout and "a_share:5min  exact" in changed.stdout

    # Another model's replay differs, and says it is the weights.
    cli(home, "random-pair", tmp_path / "other", "--seed", "5")
    cli(home, "register", "--tokenizer", tmp_path / "other/tokenizer", "--model", tmp_path / "other/model")
    other = cli(home, "replay", run_id, "--model", "2", ok=False)
    assert other.returncode == 1 and "OTHER weights" in other.stdout
    assert (
        "a_share:5min  differs: 720 values" in other.stdout
        and "other weights: recorded kronos-model v1" in other.stdout
    )
