"""The daily DAG at scale: N synthetic symbols through Airflow's test runner on PostgreSQL.

    python bench/daily_scale.py --symbols 100 1000 10000 [--preset tiny|Kronos-small] [--json FILE]
    python bench/daily_scale.py --celery --symbols 1000 [--json FILE]

For each N: a fresh KRONOS_HOME, a PostgreSQL database for the forecasts, a random pair of the preset
registered at @champion, N files of 600 daily bars (bench/synthetic.py) and a watchlist naming them. Two
runs of `kronos_daily_forecast` (the DAG's defaults: lookback 488, pred_len 24, 16 samples, quantiles
0.1/0.5/0.9): day 1 loads every file, day 2 runs after one bar was appended to each (the steady state of a
daily schedule). Per run: wall time of the DAG run, each task's time (from dag.test's log), the model's
time inside the forecast tasks (the run's forecast_seconds), peak RSS of the run's process, and XCom: the
values stored and what the tasks read (each task's inputs, from the stored values). The model-only time:
every symbol's window read and decoded through `predict_windows` in this process with the run's
parameters, seed and threads, timed twice around day 2 (day 1's windows just before it, day 2's just
after: the same number of windows of the same shapes) so that a host whose speed drifts during the run
moves both; the share is their mean over day 2's wall time. The model's own time inside day 2 (its
forecast tasks' `forecast_seconds`) over the same wall time is recorded beside it.

With ``--celery`` the two days run through the loopback CeleryExecutor deployment of
tests/celery_stack.py instead (scheduler, DAG processor, API server, Redis broker, MLflow server, all on
PostgreSQL) with two Celery workers, each pinned to one core and serving both queues, triggered through
Airflow's REST API; the run's wall time is the DAG run's (Airflow's start to end), peak RSS the largest
task process seen (sampled every 0.2 s).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT / "tests"))  # celery_stack, for --celery

import synthetic  # noqa: E402

DAY_1, DAY_2 = "2024-08-27", "2024-08-28"
ADMIN_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"  # this machine's server (trust auth)
BARS = 600
DAG = "kronos_daily_forecast"
TASK_LINE = re.compile(r"^(\S+) .*\[DAG TEST\] (starting|end task) task_id=(\S+) map_index=(-?\d+)")


def postgres_database(name: str) -> str:
    from sqlalchemy import create_engine, text

    admin = create_engine(ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'DROP DATABASE IF EXISTS "{name}"'))
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    return f"{ADMIN_URL.rsplit('/', 1)[0]}/{name}"


def task_seconds(log: str) -> dict[str, float]:
    """Seconds per task (mapped tasks summed over their map indexes) from dag.test's log."""
    started, spent = {}, defaultdict(float)
    for line in log.splitlines():
        match = TASK_LINE.match(line)
        if not match:
            continue
        at = datetime.fromisoformat(match.group(1).replace("Z", "+00:00"))
        key = (match.group(3), match.group(4))
        if match.group(2) == "starting":
            started[key] = at
        elif key in started:
            spent[match.group(3)] += (at - started.pop(key)).total_seconds()
    return dict(spent)


def xcom_traffic(rows: list[tuple[str, int, int]]) -> dict[str, int]:
    """Bytes of XCom stored by the run (``rows``: task id, map index, size), and read by its tasks (each
    task's inputs: plan and shard list by every mapped task, one ingest summary per forecast task, every
    forecast result by persist, the summary by log and finish)."""
    stored = defaultdict(list)
    for task, _, size in rows:
        stored[task].append(size or 0)
    total = sum(sum(v) for v in stored.values())
    shards = len(stored.get("forecast", []))
    plan = sum(stored.get("plan", [0]))
    read = (
        plan * (1 + 2 * shards + 2)  # shards, every ingest and forecast task, persist, log
        + sum(stored.get("shards", [0]))
        + sum(stored.get("ingest", []))
        + sum(stored.get("forecast", []))
        + 2 * sum(stored.get("persist", [0]))
    )
    return {"rows": len(rows), "written_bytes": total, "read_bytes": read, "per_symbol_rows": 0}


def stored_xcom(airflow_db: Path) -> list[tuple[str, int, int]]:
    with sqlite3.connect(airflow_db) as db:
        return db.execute("SELECT task_id, map_index, length(value) FROM xcom").fetchall()


# Runs the DAG run in a child and prints the largest resident set of it and its children (ru_maxrss, KB).
PEAK_WRAPPER = (
    "import resource, subprocess, sys\n"
    "code = subprocess.run(sys.argv[1:]).returncode\n"
    "print(f'PEAK_RSS_KB={resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}', flush=True)\n"
    "sys.exit(code)\n"
)


def run_day(env: dict, day: str, log_path: Path) -> dict:
    logical = f"{day}T17:30:00-04:00"
    command = [sys.executable, "-c", PEAK_WRAPPER, sys.executable, "-m", "kronos_tasks.pipeline.run_dag", DAG, logical]
    started = time.perf_counter()
    with log_path.open("w") as log:
        child = subprocess.run(command, env=env, stdout=log, stderr=subprocess.STDOUT)
    wall = time.perf_counter() - started
    text = log_path.read_text()
    peak = int(re.findall(r"PEAK_RSS_KB=(\d+)", text)[-1]) / 1024
    return {
        "day": day,
        "ok": child.returncode == 0,
        "wall_seconds": round(wall, 2),
        "tasks": {k: round(v, 2) for k, v in task_seconds(text).items()},
        "peak_rss_mb": round(peak, 1),
        "error_lines": sum("[error" in line for line in text.splitlines()),
        "longest_log_line": max((len(line) for line in text.splitlines()), default=0),
    }


def model_only(env: dict, run_id: str) -> dict:
    """The same windows decoded in this process: read every window, then time predict_windows alone."""
    os.environ.update({k: v for k, v in env.items() if k.startswith(("KRONOS_", "MLFLOW_"))})
    from kronos_tasks.forecasting.engine import pinned_predictor
    from kronos_tasks.forecasting.params import ForecastParams
    from kronos_tasks.forecasting.windows import Window, predict_windows
    from kronos_tasks.pipeline import runtime
    from kronos_tasks.storage import get_run, run_windows

    runtime.engine_for.cache_clear()
    runtime.relax_gc()  # as the forecast tasks run
    engine = runtime.engine()
    run = get_run(engine, run_id)
    params = ForecastParams.from_dict(run.extra["params"])
    threads = runtime.prepare_decoding()  # as the forecast task does
    pair = runtime.registry().resolve(f"{run.model_name}/{run.model_version}")
    predictor = pinned_predictor(pair, "cpu", params.batch_size, params.dtype)
    from kronos_tasks.data.watchlist import WatchItem
    from kronos_tasks.storage import window_arrays

    stored = run_windows(engine, run_id)
    items = [WatchItem(w.symbol, "XNYS", w.interval, None, "America/New_York") for w in stored]
    history = window_arrays(engine, items, max(w.last_ts for w in stored), params.lookback)
    import pandas as pd

    future = pd.date_range(stored[0].last_ts, periods=params.pred_len + 1, freq="D")[1:]
    windows = [Window(item, times, values, future, "") for item, times, values in history]
    started = time.perf_counter()
    predicted, failed = predict_windows(predictor, windows, params, run.seed)
    seconds = time.perf_counter() - started
    return {"symbols": len(predicted), "failed": len(failed), "seconds": round(seconds, 2), "threads": threads}


def run_id_of(day: str) -> str:
    """The forecast run id of ``day``'s DAG run (its logical time is the day's 17:30 in New York)."""
    return f"{DAG}@{datetime.fromisoformat(day + 'T21:30:00+00:00').astimezone(timezone.utc).isoformat()}"


def stored_run(db_url: str, day: str) -> tuple[str, dict]:
    """The forecast run of ``day``'s DAG run -> (its run id, what the benchmark records of it)."""
    from kronos_tasks.storage import get_run, make_engine

    run_id = run_id_of(day)
    stored = get_run(make_engine(db_url), run_id)
    if stored is None:  # the run failed before persisting: recorded as such, the same keys
        keys = ("model_seconds_in_run", "read_seconds_in_run", "threads", "shards")
        return run_id, {"status": None, "symbols_ok": 0, **dict.fromkeys(keys)}
    return run_id, {
        "status": stored.status,
        "symbols_ok": stored.symbols_ok,
        "model_seconds_in_run": round(stored.timings["forecast_seconds"], 2),
        "read_seconds_in_run": round(stored.timings.get("read_seconds", 0), 2),
        "threads": (stored.extra or {}).get("threads"),
        "shards": (stored.extra or {}).get("shards"),
    }


def summary(symbols: int, preset: str, days: list[dict], before: dict, after: dict, work: Path, **about) -> dict:
    """One measurement: its days, the model-only times just before and just after the steady-state day
    (``before``: day 1's windows, ``after``: its own) and the model's share of that day."""
    steady = days[-1]
    seconds = round((before["seconds"] + after["seconds"]) / 2, 2)
    in_run = steady["model_seconds_in_run"]
    return {
        "symbols": symbols,
        "preset": preset,
        **about,
        "bars_per_symbol": BARS,
        "days": days,
        "model_only": {
            **after,
            "seconds": seconds,
            "before_seconds": before["seconds"],
            "after_seconds": after["seconds"],
        },
        "model_share_of_run": round(seconds / steady["wall_seconds"], 3),
        "model_share_in_run": round(in_run / steady["wall_seconds"], 3) if in_run else None,
        "per_symbol_seconds": round(steady["wall_seconds"] / symbols, 4),
        "work": str(work),
    }


def measure(symbols: int, preset: str, shards: int | None, threads: str | None = None) -> dict:
    from kronos_tasks.model.presets import write_random_pair
    from kronos_tasks.pipeline.airflow_env import airflow_environment, ensure_pool, migrate_metadata
    from kronos_tasks.registry import Registry
    from kronos_tasks.settings import Settings
    from kronos_tasks.storage import make_engine, upgrade

    work = Path(tempfile.mkdtemp(prefix=f"daily-scale-{symbols}-"))
    data = work / "data"
    watchlist = synthetic.write_universe(data, symbols, BARS, DAY_1)
    db_url = postgres_database(f"kronos_scale_{symbols}_{work.name.rsplit('-', 1)[-1].lower()}")  # one per measurement
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("KRONOS_", "MLFLOW_", "AIRFLOW"))}
    environ.update(
        {
            "KRONOS_HOME": str(work / "home"),
            "KRONOS_DB_URL": db_url,
            "KRONOS_DEVICE": "cpu",
            "KRONOS_DATA_DIR": str(data),
            "KRONOS_WATCHLIST": str(watchlist),
            "AIRFLOW_HOME": str(work / "airflow"),
            "MLFLOW_LOGGING_LEVEL": "WARNING",
        }
    )
    if shards:
        environ["KRONOS_FORECAST_SHARDS"] = str(shards)
    if threads:
        environ["KRONOS_TORCH_THREADS"] = threads
    settings = Settings.from_env(environ)
    upgrade(make_engine(db_url))
    registry = Registry(settings)
    registry.register(*write_random_pair(work / "pair", preset, seed=0), alias="champion", trained=False)
    env = airflow_environment(settings)
    env.update(environ)
    migrate_metadata(env)
    ensure_pool(env, settings.gpu_pool, settings.gpu_pool_slots)
    days, before = [], None
    for day in (DAY_1, DAY_2):
        if day == DAY_2:
            synthetic.append_day(data, symbols, BARS, DAY_1)
            before = model_only(env, run_id_of(DAY_1))
        result = run_day(env, day, work / f"{day}.log")
        run_id, recorded = stored_run(db_url, day)
        result.update(recorded, xcom=xcom_traffic(stored_xcom(work / "airflow" / "airflow.db")))
        days.append(result)
        with sqlite3.connect(work / "airflow" / "airflow.db") as db:
            db.execute("DELETE FROM xcom")  # the next day's traffic on its own
    after = model_only(env, run_id)
    return summary(symbols, preset, days, before, after, work, threads_setting=threads or "auto")


class PeakRss:
    """The largest resident set of any process under ``pids`` (and their children), sampled in a thread."""

    def __init__(self, pids: list[int], every: float = 0.2):
        import threading

        self.pids, self.every, self.peak_kb, self._stop = pids, every, 0, threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        import psutil

        while not self._stop.wait(self.every):
            for pid in self.pids:
                try:
                    tree = [psutil.Process(pid)]
                    tree += tree[0].children(recursive=True)
                except psutil.Error:
                    continue
                for process in tree:
                    try:
                        self.peak_kb = max(self.peak_kb, process.memory_info().rss // 1024)
                    except psutil.Error:
                        pass

    def stop(self) -> float:
        self._stop.set()
        self._thread.join()
        return round(self.peak_kb / 1024, 1)


def celery_day(stack, day: str, engine_url: str) -> dict:
    """One daily run triggered through the REST API and waited for; its times from Airflow's records."""
    from celery_stack import wait_for
    from sqlalchemy import create_engine, text

    api = stack.api
    path = f"/api/v2/dags/{DAG}/dagRuns"
    run = api.call("POST", path, {"logical_date": f"{day}T21:30:00Z", "conf": {}})
    run_path = f"{path}/{run['dag_run_id']}"
    final = wait_for(
        f"the {day} run",
        lambda: (lambda r: r if r and r["state"] in ("success", "failed") else None)(api.ok("GET", run_path)),
        3600,
        stack,
        1,
    )
    started, ended = (datetime.fromisoformat(final[k].replace("Z", "+00:00")) for k in ("start_date", "end_date"))
    instances = api.call("GET", f"{run_path}/taskInstances?limit=1000")["task_instances"]
    tasks = defaultdict(float)
    for ti in instances:
        tasks[ti["task_id"]] += ti["duration"] or 0.0
    airflow = create_engine(engine_url)
    with airflow.connect() as connection:
        sizes = connection.execute(
            text("SELECT task_id, map_index, octet_length(value::text) FROM xcom WHERE run_id = :run"),
            {"run": run["dag_run_id"]},
        ).all()
    airflow.dispose()
    return {
        "day": day,
        "ok": final["state"] == "success",
        "wall_seconds": round((ended - started).total_seconds(), 2),
        "tasks": {k: round(v, 2) for k, v in tasks.items()},
        "xcom": xcom_traffic([tuple(row) for row in sizes]),
    }


def measure_celery(symbols: int, preset: str) -> dict:
    """Two days of N symbols through the loopback CeleryExecutor deployment with two single-core workers."""
    from celery_stack import celery_stack, wait_for

    from kronos_tasks.model.presets import write_random_pair

    work = Path(tempfile.mkdtemp(prefix=f"daily-celery-{symbols}-"))
    data = work / "data"
    watchlist = synthetic.write_universe(data, symbols, BARS, DAY_1)
    pair = write_random_pair(work / "pair", preset, seed=0)
    workers = {"worker-1": ("default,gpu", "0"), "worker-2": ("default,gpu", "1")}
    settings = {"KRONOS_DATA_DIR": str(data), "KRONOS_WATCHLIST": str(watchlist)}
    with celery_stack(work, ADMIN_URL, pair, workers, **settings) as stack:
        wait_for("the DAG to be parsed", lambda: stack.api.ok("GET", f"/api/v2/dags/{DAG}"), 240, stack, 2)
        stack.api.call("PATCH", f"/api/v2/dags/{DAG}", {"is_paused": False})
        airflow_url = stack.env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"]
        days, before = [], None
        for day in (DAY_1, DAY_2):
            if day == DAY_2:
                synthetic.append_day(data, symbols, BARS, DAY_1)
                before = model_only(stack.env, run_id_of(DAY_1))
            peak = PeakRss([stack.processes[name].pid for name in workers])
            result = celery_day(stack, day, airflow_url)
            result["peak_rss_mb"] = peak.stop()
            run_id, recorded = stored_run(stack.env["KRONOS_DB_URL"], day)
            result.update(recorded)
            days.append(result)
            print(f"celery N={symbols} {day}: {result}", flush=True)
        after = model_only(stack.env, run_id)
    return summary(symbols, preset, days, before, after, work, executor="CeleryExecutor, 2 workers x 1 core")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--symbols", type=int, nargs="+", default=[100, 1000])
    parser.add_argument("--preset", default="tiny", choices=["tiny", "Kronos-small"])
    parser.add_argument("--shards", type=int, help="KRONOS_FORECAST_SHARDS (default: the setting's default)")
    parser.add_argument("--threads", help="KRONOS_TORCH_THREADS (default: auto, the cores a task owns)")
    parser.add_argument("--celery", action="store_true", help="through the CeleryExecutor deployment, 2 workers")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args()
    if args.celery and (args.shards or args.threads):
        parser.error("--shards and --threads set the test runner's run; --celery runs the deployment's defaults")
    results = {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "when": datetime.now().isoformat()},
        "runs": [],
    }
    for n in args.symbols:
        found = measure_celery(n, args.preset) if args.celery else measure(n, args.preset, args.shards, args.threads)
        results["runs"].append(found)
        steady = found["days"][-1]
        print(
            f"N={n} {args.preset}: day 1 {found['days'][0]['wall_seconds']} s, day 2 {steady['wall_seconds']} s "
            f"({found['per_symbol_seconds'] * 1000:.1f} ms/symbol), model-only {found['model_only']['seconds']} s "
            f"(before {found['model_only']['before_seconds']} s, after {found['model_only']['after_seconds']} s; "
            f"{found['model_share_of_run']:.0%} of day 2), model in run {steady['model_seconds_in_run']} s "
            f"({found['model_share_in_run'] or 0:.0%}), "
            f"peak RSS {steady['peak_rss_mb']} MB, XCom {steady['xcom']['written_bytes']} B written / "
            f"{steady['xcom']['read_bytes']} B read in {steady['xcom']['rows']} rows, tasks {steady['tasks']}",
            flush=True,
        )
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
