"""``kronos-flow demo``: a fresh machine to a finished daily forecast on the embedded defaults.

SQLite for Airflow, the forecasts and MLflow, a local artifact folder, the CPU. If no model holds the
configured alias, the demo registers its bundled demonstration pair (``sample_data/demo_pair``: a tiny
model trained by ``kronos-flow finetune`` on the two sample series, with its lineage) and says plainly
that it is not a published Kronos checkpoint.
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

from kronos_tasks.errors import ParamsError
from kronos_tasks.settings import load

from .airflow_env import airflow_environment, ensure_pool, migrate_metadata, test_dag

DAG_ID = "kronos_daily_forecast"
DEMO_PAIR = Path(__file__).resolve().parents[1] / "sample_data" / "demo_pair"
DEMO_MAX_CONTEXT = 144  # the windows it was trained on: 120 bars of history and 24 ahead
DEMO_NOTE = "demonstration model: tiny, trained on the two sample series only"
DEMO_DESCRIPTION = (
    "DEMONSTRATION pair bundled with kronos-flow: a tiny model trained by `kronos-flow finetune` on the two "
    "sample series (see sample_data/demo_pair/README.md); not a published Kronos checkpoint"
)


def schedule_time(cron: str) -> tuple[int, int]:
    """(hour, minute) of a cron line whose first two fields are plain numbers, else (0, 0)."""
    fields = cron.split()
    if len(fields) >= 2 and fields[0].isdigit() and fields[1].isdigit():
        return int(fields[1]), int(fields[0])
    return 0, 0


def sample_lag(settings, at: datetime) -> tuple[int, list[str]]:
    """How far the watchlist's files lag the demo date: the most bars any symbol is behind its calendar, and a
    line per symbol that lags more than a scheduled run would allow."""
    import pandas as pd

    from kronos_tasks.data import Interval, read_series
    from kronos_tasks.data.freshness import bars_behind, default_max_staleness
    from kronos_tasks.data.watchlist import load_watchlist

    from .ingest import source_file

    moment, worst, lines = pd.Timestamp(at).tz_convert("UTC"), 0, []
    for item in load_watchlist(settings.watchlist):
        if item.source != "files":
            continue
        interval = Interval.parse(item.interval)
        series = read_series(source_file(item, settings.data_dir), item.timezone, item.symbol, interval)
        history = series[0].bars["ts"].dropna().sort_values()
        history = history[history <= moment]
        if history.empty:
            continue
        behind = bars_behind(history.reset_index(drop=True), moment, interval, item.exchange)
        worst = max(worst, behind)
        if behind > default_max_staleness(interval):
            lines.append(
                f"{item.symbol}'s newest bar is {history.iloc[-1]:%Y-%m-%d %H:%M} UTC, {behind} {interval} bar(s) behind"
            )
    return worst, lines


def _command_prefix(settings) -> str:
    """How to call kronos-flow from a fresh shell: the full path, with KRONOS_HOME when it is not the default."""
    import os
    import shlex
    import sys

    executable = shlex.quote(str(Path(sys.executable).with_name("kronos-flow")))
    home = os.environ.get("KRONOS_HOME")
    return f"KRONOS_HOME={shlex.quote(home)} {executable}" if home else executable


def run_demo(date: str) -> int:
    """The daily forecast DAG once on the sample data: a progress line per step and per task, a summary, and
    commands that work as printed; Airflow's own log goes to a file."""
    from kronos_tasks.registry import Registry
    from kronos_tasks.storage import list_runs, make_engine, run_windows, upgrade

    settings = load()
    try:
        day = datetime.strptime(date, "%Y-%m-%d")
    except ValueError:
        raise ParamsError(f"--date must be a date such as 2024-08-28, got {date!r}.") from None
    hour, minute = schedule_time(settings.schedule)
    logical = day.replace(hour=hour, minute=minute, tzinfo=ZoneInfo(settings.timezone))

    def say(line: str) -> None:
        print(line, flush=True)

    say(f"[1/4] home {settings.home}: forecasts database and MLflow store")
    settings.home.mkdir(parents=True, exist_ok=True)
    engine = make_engine(settings.db_url)
    upgrade(engine)
    registry = Registry(settings)

    if registry.holder(settings.model_alias) is None:
        pair = registry.register(
            DEMO_PAIR / "tokenizer",
            DEMO_PAIR / "model",
            alias=settings.model_alias,
            max_context=DEMO_MAX_CONTEXT,
            trained=True,
            description=DEMO_DESCRIPTION,
            reason="demo: no model registered",
            note=DEMO_NOTE,
            lineage=json.loads((DEMO_PAIR / "lineage.json").read_text()),
        )
        say(
            f"[2/4] model: no model was registered, so the bundled DEMONSTRATION pair is now {pair.model_name} "
            f"v{pair.model_version} (@{settings.model_alias}):\n"
            "      a tiny model trained in minutes on the two sample series, not a published Kronos checkpoint"
        )
    else:
        pair = registry.resolve(settings.model_alias)
        warning = f" ({pair.warning})" if pair.warning else ""
        say(f"[2/4] model: {pair.model_name} v{pair.model_version} (@{settings.model_alias}){warning}")

    env = airflow_environment(settings)
    migrate_metadata(env)
    ensure_pool(env, settings.gpu_pool, settings.gpu_pool_slots)
    say(f"[3/4] Airflow metadata in {env['AIRFLOW_HOME']}, pool {settings.gpu_pool!r}")

    conf = {}
    lag, stale = sample_lag(settings, logical)
    if stale:
        conf["max_staleness"] = lag
        say(
            f"      NOTE: the sample data ends before the demo date, so this run allows max_staleness={lag}\n"
            "      (a scheduled run keeps the default and skips stale symbols)"
        )
    log_path = settings.home / "logs" / f"demo-{logical:%Y-%m-%d}.log"
    say(f"[4/4] {DAG_ID} for {logical.isoformat()} (Airflow's log: {log_path})")
    result = test_dag(
        DAG_ID, logical.isoformat(), env, conf=conf, log_path=log_path, progress=lambda t: say(f"      {t}")
    )
    runs = list_runs(engine, limit=1)
    if result.returncode != 0 or not runs:
        say(f"the demo run failed; {log_path} has Airflow's log (search for ERROR).")
        return 1
    run = runs[0]
    cli = _command_prefix(settings)
    windows = run_windows(engine, run.run_id)
    say(
        f"\nDone: {run.status}, {run.symbols_ok} symbol(s) forecast, {run.symbols_failed} failed, with "
        f"{run.model_name} v{run.model_version}, seed {run.seed}"
    )
    say(f"  runs     {cli} runs --limit 1")
    say(f"  replay   {cli} replay '{run.run_id}'")
    if windows and run.mlflow_run_id:
        say(f"  charts   in MLflow run {run.mlflow_run_id}: fan_chart.png, charts/<symbol>_<interval>.png")
    say(f"  UIs      {cli} ui   (MLflow http://127.0.0.1:5000, Airflow http://127.0.0.1:8080; Ctrl+C stops them)")
    return 0
