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
from kronos_tasks.settings import load, redact

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


def run_demo(date: str) -> int:
    from kronos_tasks.registry import Registry
    from kronos_tasks.storage import list_runs, make_engine, upgrade

    settings = load()
    try:
        day = datetime.strptime(date, "%Y-%m-%d")
    except ValueError:
        raise ParamsError(f"--date must be a date such as 2024-08-28, got {date!r}.") from None
    hour, minute = schedule_time(settings.schedule)
    logical = day.replace(hour=hour, minute=minute, tzinfo=ZoneInfo(settings.timezone))

    print(f"[1/4] kronos-flow home {settings.home}: migrating the forecasts database and MLflow store", flush=True)
    settings.home.mkdir(parents=True, exist_ok=True)
    engine = make_engine(settings.db_url)
    upgrade(engine)
    registry = Registry(settings)

    print(f"[2/4] model: resolving {settings.model_name}@{settings.model_alias}", flush=True)
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
        print(
            f"      NOTE: no model was registered, so the demo registered its bundled DEMONSTRATION pair as "
            f"{pair.model_name} version {pair.model_version} (@{settings.model_alias}): a tiny model (about "
            "0.1 M parameters) that `kronos-flow finetune` trained in minutes on the two sample series "
            "(kronos_tasks/sample_data/demo_pair/README.md has the command). It is not a published Kronos "
            "checkpoint; register real weights with `kronos-flow register --tokenizer DIR --model DIR --alias "
            "champion`.",
            flush=True,
        )
    else:
        pair = registry.resolve(settings.model_alias)
        print(
            f"      using {pair.model_name} version {pair.model_version} with {pair.tokenizer_name} version "
            f"{pair.tokenizer_version}{'' if pair.trained else ' (UNTRAINED)'}",
            flush=True,
        )

    env = airflow_environment(settings)
    print(
        f"[3/4] Airflow metadata in {env['AIRFLOW_HOME']}: migrating, creating pool {settings.gpu_pool!r}", flush=True
    )
    migrate_metadata(env)
    ensure_pool(env, settings.gpu_pool, settings.gpu_pool_slots)

    conf = {}
    lag, stale = sample_lag(settings, logical)
    if stale:
        conf["max_staleness"] = lag
        print(
            f"      NOTE: the sample data is older than the demo date: {'; '.join(stale)}. The demo runs with "
            f"max_staleness={lag} so that they are forecast anyway; a scheduled run keeps the default and skips "
            "stale symbols.",
            flush=True,
        )
    print(
        f"[4/4] running {DAG_ID} for {logical.isoformat()} with Airflow's test runner (ingests the sample data "
        f"from {settings.data_dir})",
        flush=True,
    )
    result = test_dag(DAG_ID, logical.isoformat(), env, conf=conf)
    runs = list_runs(engine, limit=1)
    if result.returncode != 0 or not runs:
        print("the demo run failed; the Airflow log above says where.", flush=True)
        return 1
    run = runs[0]
    print(
        f"\nDone: {run.run_id}: {run.status}, {run.symbols_ok} symbol(s) forecast, {run.symbols_failed} failed,\n"
        f"  model {run.model_name}/{run.model_version}, tokenizer {run.tokenizer_name}/{run.tokenizer_version}, "
        f"seed {run.seed}, MLflow run {run.mlflow_run_id}."
    )
    print("\nWhere to look:")
    print(f"  forecasts database  {redact(settings.db_url)}   (kronos-flow runs)")
    print(
        f"  MLflow UI           mlflow ui --backend-store-uri {redact(settings.mlflow_tracking_uri)} --port 5000"
        "   then open http://127.0.0.1:5000"
    )
    print(
        f"  Airflow UI          AIRFLOW_HOME={env['AIRFLOW_HOME']} AIRFLOW__CORE__DAGS_FOLDER="
        f"{env['AIRFLOW__CORE__DAGS_FOLDER']} airflow standalone   then open http://127.0.0.1:8080"
    )
    return 0
