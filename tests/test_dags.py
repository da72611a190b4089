"""The DAGs through Airflow itself (dag.test on SQLite): daily forecast, re-run, bad symbol, rollout, evaluation."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from sqlalchemy import func, select

from conftest import SAMPLE_DATA

pytestmark = pytest.mark.slow
DAGS = Path(__file__).resolve().parents[1] / "dags"
DATE = "2024-08-28T17:30:00-04:00"
# The bundled GOOG bars end in 2013: runs on 2024 dates forecast it only when told that stale data is fine.
STALE_OK = {"max_staleness": 10**6}


def test_dag_files_parse_fast_without_heavy_imports():
    code = f"""
import json, sys, time
from airflow.dag_processing.dagbag import DagBag
started = time.perf_counter()
for path in sorted(__import__('pathlib').Path({str(DAGS)!r}).glob('*.py')):
    bag = DagBag(dag_folder=str(path))
    assert list(bag.dags) == [path.stem] and not bag.import_errors, (path, bag.import_errors)
elapsed = time.perf_counter() - started
print(json.dumps({{"seconds": elapsed, "heavy": sorted(m for m in ("torch", "mlflow", "pandas", "kronos_tasks.storage")
                                                       if m in sys.modules)}}))
"""
    # Airflow's own import is not the DAG files' work: import it first, then time the files.
    out = subprocess.run(
        [sys.executable, "-c", "import airflow.sdk\n" + code],
        capture_output=True,
        text=True,
        env={**os.environ, "AIRFLOW__CORE__LOAD_EXAMPLES": "False"},
        check=True,
    )
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["heavy"] == [], f"DAG files import {result['heavy']} at parse time"
    assert result["seconds"] < 30, "past Airflow's default dagbag_import_timeout"


def test_run_dag_exits_with_its_code_after_the_exit_handlers_and_with_its_output_flushed():
    # stdout into a pipe is block-buffered: without the flush the text written last would be lost.
    code = """
import atexit, sys
from kronos_tasks.pipeline.run_dag import exit_now
atexit.register(lambda: sys.stdout.write("handler ran"))
sys.stdout.write("run done; ")
sys.stderr.write("to stderr; ")
exit_now(3)
raise AssertionError("exit_now returned")
"""
    buffered = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=buffered)
    assert (out.returncode, out.stdout, out.stderr) == (3, "run done; handler ran", "to stderr; ")


def test_run_dag_collects_young_garbage_less_often_before_it_loads_airflow():
    code = """
import gc, sys
from kronos_tasks.pipeline import run_dag
from kronos_tasks.pipeline.runtime import GC_YOUNG_THRESHOLD, relax_gc
before = gc.get_threshold()
loaded = []
run_dag.load_dag = lambda dag_id: loaded.append(gc.get_threshold()) or sys.exit(0)
try:
    run_dag.main(["any_dag", "2024-08-28T17:30:00-04:00"])
except SystemExit:
    pass
gc.set_threshold(GC_YOUNG_THRESHOLD * 2, 3, 4)
relax_gc()  # never lowers a higher threshold
print(before, loaded[0][0] == GC_YOUNG_THRESHOLD, loaded[0][1:] == before[1:], gc.get_threshold())
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split("\n")[-2] == "(700, 10, 10) True True (100000, 3, 4)"


def test_daily_schedule_none_leaves_only_triggered_runs():
    code = """
from kronos_tasks.pipeline.run_dag import load_dag
print(type(load_dag("kronos_daily_forecast").timetable).__name__)
"""
    env = {**os.environ, "AIRFLOW__CORE__LOAD_EXAMPLES": "False"}
    names = [
        subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={**env, **extra}, check=True)
        .stdout.strip()
        .splitlines()[-1]
        for extra in ({"KRONOS_SCHEDULE": "none"}, {"KRONOS_SCHEDULE": "0 6 * * 1-5"})
    ]
    assert names == ["NullTimetable", "CronTriggerTimetable"]


@pytest.fixture(scope="module")
def airflow_setup(tmp_path_factory):
    """A migrated Airflow home and a kronos-flow home with an untrained tiny pair at @champion."""
    from kronos_tasks.model.presets import write_random_pair
    from kronos_tasks.pipeline.airflow_env import airflow_environment, ensure_pool, migrate_metadata
    from kronos_tasks.registry import Registry
    from kronos_tasks.settings import Settings
    from kronos_tasks.storage import make_engine, upgrade

    root = tmp_path_factory.mktemp("airflow-dags")
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("KRONOS_", "MLFLOW_", "AIRFLOW"))}
    environ.update({"KRONOS_HOME": str(root / "home"), "KRONOS_DEVICE": "cpu", "AIRFLOW_HOME": str(root / "airflow")})
    settings = Settings.from_env(environ)
    upgrade(make_engine(settings.db_url))
    registry = Registry(settings)
    registry.register(*write_random_pair(root / "pair1", "tiny", seed=1), alias="champion", trained=False)
    registry.register(*write_random_pair(root / "pair2", "tiny", seed=2), trained=False)
    os.environ.update({"KRONOS_HOME": environ["KRONOS_HOME"]})
    env = airflow_environment(settings)
    env.update(environ)
    migrate_metadata(env)
    ensure_pool(env, settings.gpu_pool, 1)
    return settings, env, registry


def run_dag(env, dag_id, date=DATE, conf=None):
    from kronos_tasks.pipeline.airflow_env import test_dag

    return test_dag(dag_id, date, env, conf=conf, timeout=600).returncode


def engine_of(settings):
    from kronos_tasks.storage import make_engine

    return make_engine(settings.db_url)


def test_daily_dag_end_to_end_and_a_rerun_replaces_its_rows(airflow_setup):
    import json

    from kronos_tasks.storage import get_run, run_windows
    from kronos_tasks.storage.models import Forecast, SymbolFailure

    settings, env, registry = airflow_setup
    assert run_dag(env, "kronos_daily_forecast", conf=STALE_OK) == 0
    engine = engine_of(settings)
    run_id = "kronos_daily_forecast@2024-08-28T21:30:00+00:00"
    run = get_run(engine, run_id)
    assert (run.status, run.symbols_ok, run.symbols_failed) == ("success", 2, 0)
    assert (run.model_version, run.tokenizer_version, run.model_alias) == ("1", "1", "champion")
    assert len(run.data_window_hash) == 64 and run.lookback == 512 - 24 and run.mlflow_run_id
    with engine.connect() as connection:
        rows = pd.DataFrame(connection.execute(select(Forecast).where(Forecast.run_id == run_id)).mappings().all())
    assert len(rows) == 2 * 6 * 24
    # The a_share targets are the next 24 bars of the exchange's calendar: the morning of 2024-08-29.
    a_share = pd.read_csv(SAMPLE_DATA / "a_share_5min.csv", parse_dates=["timestamps"])
    expected = a_share["timestamps"][a_share["timestamps"] > "2024-08-28 15:00"].iloc[:24]
    targets = rows[(rows["symbol"] == "a_share") & (rows["feature"] == "close")].sort_values("step")["target_ts"]
    assert list(pd.DatetimeIndex(targets).tz_convert("Asia/Shanghai").tz_localize(None)) == list(expected)
    mlflow_run = registry.client.get_run(run.mlflow_run_id)
    assert mlflow_run.data.params["model_version"] == "1" and mlflow_run.data.params["seed"] == str(run.seed)
    assert mlflow_run.data.metrics["symbols_ok"] == 2
    artifacts = {a.path for a in registry.client.list_artifacts(run.mlflow_run_id)}
    assert {"forecasts.csv", "failures.csv", "fan_chart.png", "charts"} <= artifacts
    charts = {a.path for a in registry.client.list_artifacts(run.mlflow_run_id, "charts")}
    assert charts == {"charts/GOOG_1d.png", "charts/a_share_5min.png"}
    # MLflow-native: a name that tells runs apart, resolved parameters, each symbol's data window as a
    # dataset whose digest is the stored window hash, the versions' logged models as inputs and the
    # metrics logged against the model's, which lists this run on the page the version links to.
    assert mlflow_run.info.run_name == "2024-08-28 21:30 UTC · kronos-model v1 · 2 symbols · UNTRAINED"
    assert mlflow_run.data.params["lookback"] == "488" and mlflow_run.data.params["device"] == "cpu"
    windows = {w.symbol: w for w in run_windows(engine, run_id)}
    assert set(windows) == {"GOOG", "a_share"} and windows["GOOG"].bars == 488
    assert windows["GOOG"].last_ts == pd.Timestamp("2013-03-01 05:00", tz="UTC")
    datasets = {d.dataset.name: d.dataset for d in mlflow_run.inputs.dataset_inputs}
    assert {k: v.digest for k, v in datasets.items()} == {
        f"{w.symbol}:{w.interval}": w.sha256[:32] for w in windows.values()
    }
    assert json.loads(datasets["GOOG:1d"].profile)["last_bar"].startswith("2013-03-01")
    pinned = registry.resolve("kronos-model/1")
    assert {m.model_id for m in mlflow_run.inputs.model_inputs} == {pinned.model_logged_id, pinned.tokenizer_logged_id}
    linked = registry.client.get_logged_model(pinned.model_logged_id).metrics
    assert {(m.key, m.run_id) for m in linked} >= {("symbols_ok", run.mlflow_run_id)}
    registered = registry.client.get_model_version("kronos-model", "1").source
    assert registered == f"models:/{pinned.model_logged_id}"
    description = mlflow_run.data.tags["mlflow.note.content"]
    assert "[kronos-model v1](#/models/kronos-model/versions/1)" in description and "UNTRAINED" in description
    assert windows["GOOG"].sha256[:16] in description
    # No calibration yet: raw quantiles only, said so; the historical-volatility band beside every close row.
    close = rows[rows["feature"] == "close"]
    assert run.calibrations == {} and rows["calibrated_quantiles"].isna().all()
    assert close["baseline_quantiles"].map(lambda d: set(d) == {"0.1", "0.5", "0.9"}).all()
    assert rows[rows["feature"] != "close"]["baseline_quantiles"].isna().all()
    assert "**raw** quantiles only" in description

    # The version gets a calibration (as the rollout fits one); the same logical date again: same seed, same
    # rows (replaced, not duplicated), now with calibrated bands, one live MLflow run.
    cli = str(Path(sys.executable).with_name("kronos-flow"))
    fitted = subprocess.run(
        [cli, "calibrate", "--model", "1", "--origins", "30", "--sample-count", "4"],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert fitted.returncode == 0, fitted.stderr
    assert "calibrated" in fitted.stdout and "stored calibration" in fitted.stdout
    before = rows.set_index(["symbol", "feature", "step"])["mean"].sort_index()
    assert run_dag(env, "kronos_daily_forecast", conf=STALE_OK) == 0
    again = get_run(engine, run_id)
    assert again.seed == run.seed and again.mlflow_run_id != run.mlflow_run_id
    with engine.connect() as connection:
        after = pd.DataFrame(connection.execute(select(Forecast).where(Forecast.run_id == run_id)).mappings().all())
        assert connection.execute(select(func.count()).select_from(SymbolFailure)).scalar_one() == 0
    assert len(after) == len(rows)
    pd.testing.assert_series_equal(after.set_index(["symbol", "feature", "step"])["mean"].sort_index(), before)
    assert registry.client.get_run(run.mlflow_run_id).info.lifecycle_stage == "deleted"
    assert set(again.calibrations) == {"1d", "5min"}
    calibrated = after[after["feature"] == "close"]
    assert calibrated["calibrated_quantiles"].map(lambda d: set(d) == {"0.1", "0.5", "0.9"}).all()
    assert calibrated["calibrated_prob_above_last"].between(0, 1).all()
    ordered = calibrated["calibrated_quantiles"].map(lambda d: d["0.1"] <= d["0.5"] <= d["0.9"])
    assert ordered.all() and not calibrated["calibrated_quantiles"].equals(calibrated["quantiles"])
    version = registry.client.get_model_version("kronos-model", "1")
    assert version.tags["kronos.calibration.1d"] == again.calibrations["1d"]


def test_one_bad_symbol_does_not_take_the_others_down(airflow_setup, tmp_path):
    from kronos_tasks.storage import get_run
    from kronos_tasks.storage.models import SymbolFailure

    settings, env, _ = airflow_setup
    watchlist = [
        {"symbol": "a_share", "exchange": "XSHG", "interval": "5min", "file": "a_share_5min.csv"},
        {"symbol": "GOOG", "exchange": "XNYS", "interval": "1d", "file": "GOOG_1d.csv"},
        {"symbol": "MISSING", "exchange": "XNYS", "interval": "1d"},
    ]
    date = "2024-08-27T17:30:00-04:00"
    conf = {"watchlist": watchlist, "max_failed_share": 0.5, "pred_len": 8, **STALE_OK}
    assert run_dag(env, "kronos_daily_forecast", date, conf) == 0
    engine = engine_of(settings)
    run = get_run(engine, "kronos_daily_forecast@2024-08-27T21:30:00+00:00")
    assert (run.status, run.symbols_ok, run.symbols_failed) == ("partial", 2, 1)
    with engine.connect() as connection:
        failure = connection.execute(select(SymbolFailure).where(SymbolFailure.run_id == run.run_id)).mappings().one()
    assert (
        failure["symbol"] == "MISSING"
        and failure["stage"] == "ingest"
        and "no file MISSING_1d.csv" in failure["reason"]
    )
    # Past the allowed share the run fails, after its rows were stored.
    assert run_dag(env, "kronos_daily_forecast", date, {**conf, "max_failed_share": 0.2}) == 1
    assert get_run(engine, run.run_id).symbols_ok == 2


def test_a_stale_symbol_is_skipped_with_both_times_and_the_others_are_forecast(airflow_setup, tmp_path):
    from kronos_tasks.storage import get_run
    from kronos_tasks.storage.models import SymbolFailure

    settings, env, registry = airflow_setup
    date = "2024-08-26T17:30:00-04:00"
    assert run_dag(env, "kronos_daily_forecast", date, {"max_failed_share": 0.5, "pred_len": 8}) == 0
    engine = engine_of(settings)
    run = get_run(engine, "kronos_daily_forecast@2024-08-26T21:30:00+00:00")
    assert (run.status, run.symbols_ok, run.symbols_failed) == ("partial", 1, 1)
    with engine.connect() as connection:
        failure = connection.execute(select(SymbolFailure).where(SymbolFailure.run_id == run.run_id)).mappings().one()
    assert failure["symbol"] == "GOOG" and failure["stage"] == "stale"
    assert "newest bar is 2013-03-01" in failure["reason"] and "bars up to 2024-08-26" in failure["reason"]
    assert "max_staleness 2" in failure["reason"]
    # kronos-flow runs and the MLflow run show it too.
    shown = subprocess.run(
        [str(Path(sys.executable).with_name("kronos-flow")), "runs", "--limit", "3"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert f"failed GOOG (stale): {failure['reason']}" in shown
    logged = registry.client.download_artifacts(run.mlflow_run_id, "failures.csv", str(tmp_path))
    assert pd.read_csv(logged).set_index("symbol").loc["GOOG", "stage"] == "stale"
    # Counted against max_failed_share like any other failure.
    assert run_dag(env, "kronos_daily_forecast", date, {"max_failed_share": 0.2, "pred_len": 8}) == 1


def test_a_date_the_data_covers_runs_for_real_even_long_before_today(airflow_setup):
    """2013-03-04 (GOOG's bars end on Friday 2013-03-01): task instances run and the forecast is stored."""
    from kronos_tasks.storage import get_run

    settings, env, _ = airflow_setup
    watchlist = [{"symbol": "GOOG", "exchange": "XNYS", "interval": "1d", "file": "GOOG_1d.csv"}]
    conf = {"watchlist": watchlist, "pred_len": 4}
    assert run_dag(env, "kronos_daily_forecast", "2013-03-04T06:00:00-05:00", conf) == 0
    run = get_run(engine_of(settings), "kronos_daily_forecast@2013-03-04T11:00:00+00:00")
    assert run is not None and (run.status, run.symbols_ok, run.symbols_failed) == ("success", 1, 0)


def test_rollout_refuses_a_candidate_that_loses_to_persistence_then_promotes_and_rolls_back(airflow_setup):
    from kronos_tasks.pipeline.ingest import ingest_paths
    from kronos_tasks.storage.models import ModelDecision

    settings, env, registry = airflow_setup
    for name, exchange in (("a_share_5min.csv", "XSHG"), ("GOOG_1d.csv", "XNYS")):  # its own bars: runs alone too
        ingest_paths(engine_of(settings), [SAMPLE_DATA / name], exchange=exchange)
    assert registry.holder("champion") == "1"
    backtest = {"origins": 8, "forecast": {"pred_len": 6, "sample_count": 8}}
    assert run_dag(env, "kronos_model_rollout", DATE, {"candidate": "2", **backtest}) == 0
    assert registry.holder("champion") == "1"  # refused: an untrained model loses to persistence
    engine = engine_of(settings)
    with engine.connect() as connection:
        decisions = connection.execute(select(ModelDecision).order_by(ModelDecision.id)).mappings().all()
    refused = decisions[-1]
    assert refused["action"] == "refuse" and refused["candidate_version"] == "2"
    assert "loses to carrying the last close forward" in refused["reason"]
    assert refused["metrics"]["candidate_skill"] < 0 and "champion_skill" in refused["metrics"]
    assert registry.client.get_run(refused["mlflow_run_id"]).data.params["action"] == "refuse"
    # The honesty checks: the CRPS against both baselines and the calibrated coverage, with their numbers.
    assert {"crps_model", "crps_histvol", "crps_persistence"} <= set(refused["metrics"])
    assert "does not beat the historical-volatility band" in refused["reason"] or (
        refused["metrics"]["crps_model"] < refused["metrics"]["crps_histvol"]
    )
    from kronos_tasks.storage import latest_calibration

    assert latest_calibration(engine, "kronos-model", "2", "1d") is not None  # fitted for the candidate

    assert run_dag(env, "kronos_model_rollout", DATE, {"candidate": "2", **backtest, "force": True}) == 0
    assert registry.holder("champion") == "2"
    assert run_dag(env, "kronos_model_rollout", DATE, {"rollback": True}) == 0
    assert registry.holder("champion") == "1"
    with engine.connect() as connection:
        actions = connection.execute(select(ModelDecision.action).order_by(ModelDecision.id)).scalars().all()
    assert actions[-3:] == ["refuse", "force_promote", "rollback"]


def test_evaluation_dag_scores_a_past_run(airflow_setup):
    from kronos_tasks.storage.models import ForecastScore

    settings, env, registry = airflow_setup
    assert run_dag(env, "kronos_daily_forecast", conf=STALE_OK) == 0  # the 2024-08-28 run: targets arrived on the 29th
    assert run_dag(env, "kronos_forecast_evaluation", "2024-08-30T07:00:00-04:00", {"lookback_days": 10}) == 0
    engine = engine_of(settings)
    run_id = "kronos_daily_forecast@2024-08-28T21:30:00+00:00"
    with engine.connect() as connection:
        scores = pd.DataFrame(
            connection.execute(select(ForecastScore).where(ForecastScore.run_id == run_id)).mappings().all()
        )
    overall = scores[(scores["symbol"] == "*") & (scores["method"] == "model")].set_index("metric")
    assert overall.loc["mae", "count"] == 24  # the 24 a_share bars of the 29th (GOOG's data ends in 2013)
    assert {"mae", "mape", "skill", "direction_accuracy", "pinball", "coverage_0.1_0.9", "brier"} <= set(overall.index)
    per_step = scores[(scores["symbol"] == "a_share") & (scores["horizon"] == 3) & (scores["metric"] == "mae")]
    assert set(per_step["method"]) == {"model", "persistence"} and (per_step["count"] == 1).all()
    experiment = registry.client.get_experiment_by_name("kronos-forecast-evaluation")
    runs = registry.client.search_runs([experiment.experiment_id], "tags.`kronos.model` = 'kronos-model/1'")
    with engine.connect() as connection:
        pooled = connection.execute(
            select(func.sum(ForecastScore.count)).where(
                ForecastScore.symbol == "*",
                ForecastScore.method == "model",
                ForecastScore.metric == "mae",
                ForecastScore.model_version == "1",
            )
        ).scalar_one()
    assert runs and runs[0].data.metrics["points"] == pooled >= 24  # every due run of version 1, pooled
    listed = {a.path for a in registry.client.list_artifacts(runs[0].info.run_id)}
    assert {"reliability.png", "horizons.png", "horizons.json"} <= listed
    horizons = json.loads(
        Path(registry.client.download_artifacts(runs[0].info.run_id, "horizons.json", str(settings.home))).read_text()
    )
    assert [h["step"] for h in horizons] == list(range(1, 25)) and horizons[0]["nominal"] == pytest.approx(0.8)


MIXED_WATCHLIST = [
    {"symbol": "GOOG", "exchange": "XNYS", "interval": "1d", "file": "GOOG_1d.csv"},  # ends 2013: stale
    {"symbol": "GOOG-YF", "exchange": "XNYS", "interval": "1d", "source": "yfinance", "ticker": "GOOG"},
    {"symbol": "BTC-USDT", "exchange": "24/7", "interval": "1h", "source": "ccxt:binance", "ticker": "BTC/USDT"},
    {"symbol": "600000", "exchange": "XSHG", "interval": "5min", "source": "akshare"},
]


def test_a_mixed_watchlist_fetches_from_each_vendor_and_the_next_run_only_new_bars(airflow_setup, tmp_path):
    """files + yfinance + ccxt:binance + akshare on recorded replies (tests/replay.py in the DAG's process)."""
    from kronos_tasks.storage import get_run, read_bars
    from kronos_tasks.storage.models import SymbolFailure

    settings, env, _ = airflow_setup
    tests = Path(__file__).resolve().parent
    log = tmp_path / "requests.jsonl"
    env = {
        **env,
        "PYTHONPATH": os.pathsep.join([str(tests / "replay_site"), str(tests), env.get("PYTHONPATH", "")]),
        "KRONOS_REPLAY_CACHE": str(tmp_path / "yfinance-cache"),
        "KRONOS_REPLAY_LOG": str(log),
    }
    conf = {"watchlist": MIXED_WATCHLIST, "max_failed_share": 0.3, "pred_len": 8}
    engine = engine_of(settings)

    def bars(symbol, interval):
        return read_bars(engine, symbol, interval, limit=10**6)

    assert run_dag(env, "kronos_daily_forecast", "2024-08-28T04:00:00+00:00", conf) == 0
    run = get_run(engine, "kronos_daily_forecast@2024-08-28T04:00:00+00:00")
    assert (run.status, run.symbols_ok, run.symbols_failed) == ("partial", 3, 1)
    with engine.connect() as connection:
        failures = connection.execute(select(SymbolFailure).where(SymbolFailure.run_id == run.run_id)).mappings().all()
    assert [(f["symbol"], f["stage"]) for f in failures] == [("GOOG", "stale")]
    # Only closed bars: the US session of 08-27, Binance's candle opened at 03:00, Shanghai's 11:30 bar.
    first = {"GOOG-YF": bars("GOOG-YF", "1d"), "BTC-USDT": bars("BTC-USDT", "1h"), "600000": bars("600000", "5min")}
    assert first["GOOG-YF"]["ts"].iloc[-1] == pd.Timestamp("2024-08-27 04:00", tz="UTC")
    assert first["BTC-USDT"]["ts"].iloc[-1] == pd.Timestamp("2024-08-28 03:00", tz="UTC")
    assert first["600000"]["ts"].iloc[-1] == pd.Timestamp("2024-08-28 03:30", tz="UTC")
    requested = [json.loads(line) for line in log.read_text().splitlines()]
    assert {r["vendor"] for r in requested} == {"yfinance", "ccxt:binance", "akshare"}

    log.unlink()
    assert run_dag(env, "kronos_daily_forecast", "2024-08-29T04:00:00+00:00", conf) == 0
    second = get_run(engine, "kronos_daily_forecast@2024-08-29T04:00:00+00:00")
    assert (second.status, second.symbols_ok) == ("partial", 3)
    requested = [json.loads(line) for line in log.read_text().splitlines()]
    # Each vendor was asked from OVERLAP_BARS before the last stored bar, not for the whole history again.
    yahoo = [r for r in requested if r["vendor"] == "yfinance" and "period1" in r["params"]]
    assert pd.Timestamp(int(yahoo[0]["params"]["period1"]), unit="s", tz="UTC") == first["GOOG-YF"]["ts"].iloc[-10]
    klines = [r for r in requested if r["url"].endswith("/klines")]
    assert int(klines[0]["params"]["startTime"]) == first["BTC-USDT"]["ts"].iloc[-10].value // 10**6
    after = {"GOOG-YF": bars("GOOG-YF", "1d"), "BTC-USDT": bars("BTC-USDT", "1h"), "600000": bars("600000", "5min")}
    assert len(after["GOOG-YF"]) == len(first["GOOG-YF"]) + 1
    assert len(after["BTC-USDT"]) == len(first["BTC-USDT"]) + 24
    assert len(after["600000"]) == len(first["600000"]) + 48
    assert all(frame["ts"].is_unique for frame in after.values())


def test_finetune_dag_registers_a_version_with_curves_and_hands_it_to_the_rollout_gate(airflow_setup):
    from kronos_tasks.pipeline.ingest import ingest_paths
    from kronos_tasks.storage.models import ModelDecision

    settings, env, registry = airflow_setup
    engine = engine_of(settings)
    ingest_paths(engine, [SAMPLE_DATA / "a_share_5min.csv"], exchange="XSHG")
    conf = {
        "symbols": ["a_share:5min"],
        "base": None,
        "preset": "tiny",
        "epochs": 1,
        "minutes": None,
        "lookback": 48,
        "pred_len": 4,
        "eval_every": 20,
        "backtest_origins": 5,
        "alias": "challenger",
    }
    assert run_dag(env, "kronos_finetune", "2024-08-30T00:00:00+00:00", conf) == 0
    pinned = registry.resolve("challenger")
    version = registry.client.get_model_version("kronos-model", pinned.model_version)
    training_run = version.tags["kronos.lineage.training_run"]
    assert version.tags["kronos.lineage.base"] == "random:tiny seed 0"
    assert len(registry.client.get_metric_history(training_run, "predictor_val_loss")) >= 2
    triggered = subprocess.run(
        [str(Path(sys.executable).with_name("airflow")), "dags", "list-runs", "kronos_model_rollout", "-o", "json"],
        env=env,
        capture_output=True,
        text=True,
    )
    assert "kronos_model_rollout" in triggered.stdout and "manual__" in triggered.stdout, (
        triggered.stdout + triggered.stderr
    )
    # The triggered rollout run, as the scheduler would execute it: the gate decides and records it.
    gate = {
        "candidate": pinned.model_version,
        "origins": 5,
        "forecast": {"pred_len": 4, "sample_count": 4},
        "watchlist": [{"symbol": "a_share", "exchange": "XSHG", "interval": "5min"}],
    }
    run_dag(env, "kronos_model_rollout", "2024-08-30T01:00:00+00:00", gate)
    with engine.connect() as connection:
        decisions = (
            connection.execute(select(ModelDecision).where(ModelDecision.candidate_version == pinned.model_version))
            .mappings()
            .all()
        )
    assert decisions and decisions[-1]["action"] in ("promote", "refuse")


def test_a_2000_symbol_watchlist_runs_with_bounded_xcom_and_no_per_symbol_values(airflow_setup, tmp_path):
    """Tasks pass ids and counts: XCom holds a handful of small values however long the watchlist is."""
    import sqlite3

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
    import synthetic

    from kronos_tasks.storage import get_run

    settings, env, _ = airflow_setup
    watchlist = synthetic.write_universe(tmp_path / "data", 2000, 40, "2024-08-29")
    big = {**env, "KRONOS_DATA_DIR": str(tmp_path / "data"), "KRONOS_WATCHLIST": str(watchlist)}
    conf = {"pred_len": 2, "sample_count": 1, "lookback": 32, "min_history": 16, "forecast_shards": 4}
    assert run_dag(big, "kronos_daily_forecast", "2024-08-29T17:30:00-04:00", conf) == 0
    run = get_run(engine_of(settings), "kronos_daily_forecast@2024-08-29T21:30:00+00:00")
    assert (run.status, run.symbols_ok, run.extra["shards"]) == ("success", 2000, 4)
    with sqlite3.connect(Path(env["AIRFLOW_HOME"]) / "airflow.db") as db:
        (dag_run,) = db.execute(
            "SELECT id FROM dag_run WHERE dag_id = 'kronos_daily_forecast' ORDER BY id DESC LIMIT 1"
        ).fetchone()
        values = db.execute("SELECT task_id, value FROM xcom WHERE dag_run_id = ?", (dag_run,)).fetchall()
    tasks = sorted({task for task, _ in values})
    assert tasks == ["finish", "forecast", "ingest", "log_to_mlflow", "persist", "plan", "shards"]
    assert len(values) == 5 + 2 * 4  # one value per task, one per mapped task
    sizes = [len(value if isinstance(value, bytes) else str(value).encode()) for _, value in values]
    assert sum(sizes) < 32_000
    assert not any("S01999" in str(value) for _, value in values)  # no symbol list travels through XCom
