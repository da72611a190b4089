"""The ``kronos-flow`` command. All state lives under KRONOS_HOME unless KRONOS_DB_URL, MLFLOW_TRACKING_URI or
Airflow's own settings say otherwise."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys

from kronos_tasks.settings import SettingsError, load, redact

log = logging.getLogger("kronos_tasks.cli")


def _known_errors() -> tuple[type[BaseException], ...]:
    from kronos_tasks.data import DataError
    from kronos_tasks.inference import InputError
    from kronos_tasks.model import CheckpointError, ConfigError
    from kronos_tasks.pipeline.params import ParamsError
    from kronos_tasks.registry import RegistryError
    from kronos_tasks.storage import DatabaseError

    return (
        DataError,
        InputError,
        CheckpointError,
        ConfigError,
        ParamsError,
        RegistryError,
        DatabaseError,
        SettingsError,
    )


# -- commands -------------------------------------------------------------------------------------------------


def cmd_init(args) -> int:
    """Create the home folder and migrate the forecasts database and the MLflow store."""
    from kronos_tasks.registry import client
    from kronos_tasks.storage import current_revision, make_engine, upgrade

    settings = load()
    settings.home.mkdir(parents=True, exist_ok=True)
    engine = make_engine(settings.db_url)
    upgrade(engine)
    client(settings).search_experiments(max_results=1)  # creates and migrates MLflow's own store
    print(f"home:              {settings.home}")
    print(f"forecasts db:      {redact(settings.db_url)} (revision {current_revision(engine)})")
    print(f"MLflow tracking:   {redact(settings.mlflow_tracking_uri)}")
    print(f"MLflow artifacts:  {redact(settings.mlflow_artifact_root)}")
    return 0


def cmd_db(args) -> int:
    from kronos_tasks.storage import current_revision, downgrade, make_engine, upgrade

    engine = make_engine(load().db_url)
    if args.action == "upgrade":
        upgrade(engine, args.revision or "head")
    elif args.action == "downgrade":
        if not args.revision:
            print("error: downgrade needs a revision (for example base)", file=sys.stderr)
            return 2
        downgrade(engine, args.revision)
    print(f"revision: {current_revision(engine)}")
    return 0


def _engine():
    from kronos_tasks.storage import make_engine, upgrade

    engine = make_engine(load().db_url)
    upgrade(engine)
    return engine


def cmd_ingest(args) -> int:
    from kronos_tasks.pipeline.ingest import ingest_paths

    policies = dict(item.split("=", 1) for item in args.policy or [])
    result = ingest_paths(
        _engine(),
        args.paths,
        symbol=args.symbol,
        interval=args.interval,
        exchange=args.exchange,
        timezone=args.timezone,
        policies=policies,
    )
    print(result.render())
    return 1 if result.failed and not result.written else 0


def cmd_random_pair(args) -> int:
    from kronos_tasks.model.presets import write_random_pair

    tokenizer, model = write_random_pair(args.folder, args.preset, args.seed)
    print(f"wrote an UNTRAINED, randomly initialised {args.preset} pair (it forecasts noise):")
    print(f"  tokenizer: {tokenizer}\n  model:     {model}")
    return 0


def cmd_register(args) -> int:
    from kronos_tasks.registry import Registry

    pair = Registry(load()).register(
        args.tokenizer,
        args.model,
        alias=args.alias,
        max_context=args.max_context,
        trained=not args.untrained,
        description=args.description or "",
        reason=args.reason,
    )
    print(
        f"registered {pair.model_name} version {pair.model_version} with {pair.tokenizer_name} version "
        f"{pair.tokenizer_version}" + (f", alias @{pair.alias}" if pair.alias else "")
    )
    print(f"  model sha256 {pair.model_sha256}\n  tokenizer sha256 {pair.tokenizer_sha256}")
    return 0


def cmd_models(args) -> int:
    from kronos_tasks.registry import Registry

    registry = Registry(load())
    rows = registry.versions()
    if not rows:
        print("no versions registered; see `kronos-flow register --help`.")
        return 0
    print(f"{'name':<20} {'version':>7}  {'aliases':<16} {'created':<26} {'sha256':<12} details")
    for row in rows:
        tags = row["tags"]
        details = f"d_model={tags.get('d_model')} params={tags.get('parameters')}"
        if "tokenizer_version" in tags:
            details += (
                f" tokenizer={tags['tokenizer_name']}/{tags['tokenizer_version']} max_context={tags.get('max_context')}"
            )
        if tags.get("trained") == "false":
            details += " UNTRAINED"
        print(
            f"{row['name']:<20} {row['version']:>7}  {','.join('@' + a for a in row['aliases']):<16} "
            f"{row['created']:<26} {tags.get('sha256', '')[:12]:<12} {details}"
        )
    for alias in sorted({a for row in rows for a in row["aliases"]} | {registry.settings.model_alias}):
        for move in registry.history(alias)[-5:]:
            print(
                f"  @{alias}: {move.at} {move.action} {move.from_version or '-'} -> {move.to_version} by {move.by}: "
                f"{move.reason}"
            )
    return 0


def cmd_promote(args) -> int:
    from kronos_tasks.registry import Registry

    move = Registry(load()).promote(args.version, args.alias, reason=args.reason)
    print(f"@{args.alias}: {move.from_version or '-'} -> {move.to_version}")
    return 0


def cmd_rollback(args) -> int:
    from kronos_tasks.registry import Registry

    move = Registry(load()).rollback(args.alias, reason=args.reason)
    print(f"@{args.alias}: {move.from_version} -> {move.to_version} (rolled back)")
    return 0


def cmd_runs(args) -> int:
    from kronos_tasks.storage import list_runs

    runs = list_runs(_engine(), limit=args.limit)
    if args.json:
        print(
            json.dumps([{c.name: getattr(r, c.name) for c in r.__table__.columns} for r in runs], default=str, indent=2)
        )
        return 0
    if not runs:
        print("no forecast runs yet; try `kronos-flow demo`.")
        return 0
    for r in runs:
        print(
            f"{r.run_id}\n  status {r.status}, {r.symbols_ok} ok / {r.symbols_failed} failed, started "
            f"{r.started_at:%Y-%m-%d %H:%M:%S}Z on {r.device}\n"
            f"  model {r.model_name}/{r.model_version} (sha256 {r.model_sha256[:12]}), tokenizer "
            f"{r.tokenizer_name}/{r.tokenizer_version}, alias {r.model_alias}\n"
            f"  lookback {r.lookback}, pred_len {r.pred_len}, T {r.temperature}, top_k {r.top_k}, top_p {r.top_p}, "
            f"samples {r.sample_count}, quantiles {r.quantiles}, seed {r.seed}\n"
            f"  data window sha256 {r.data_window_hash}, MLflow run {r.mlflow_run_id}"
        )
    return 0


def cmd_forecast(args) -> int:
    from kronos_tasks.pipeline.single import forecast_csv

    out = forecast_csv(args)
    print(f"wrote {out}")
    return 0


def cmd_demo(args) -> int:
    from kronos_tasks.pipeline.demo import run_demo

    return run_demo(args.date)


def cmd_backtest(args) -> int:
    from kronos_tasks.evaluation.backtest import backtest_command

    return backtest_command(args)


# -- parser ---------------------------------------------------------------------------------------------------


def _sampling_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--pred-len", type=int, default=24)
    parser.add_argument("--lookback", type=int, help="default: max_context - pred_len")
    parser.add_argument("--T", type=float, default=1.0, help="temperature")
    parser.add_argument("--top-k", type=int, default=0)
    parser.add_argument("--top-p", type=float, default=0.9)
    parser.add_argument("--sample-count", type=int, default=16)
    parser.add_argument("--quantiles", default="0.1,0.5,0.9")
    parser.add_argument("--seed", type=int, default=0)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kronos-flow", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress")
    commands = parser.add_subparsers(dest="command", required=True)

    commands.add_parser("init", help="create KRONOS_HOME, migrate the forecasts DB and the MLflow store").set_defaults(
        func=cmd_init
    )
    db = commands.add_parser("db", help="forecasts database migrations")
    db.add_argument("action", choices=["upgrade", "downgrade", "current"])
    db.add_argument("revision", nargs="?")
    db.set_defaults(func=cmd_db)

    ingest = commands.add_parser("ingest", help="ingest CSV/Parquet files or folders of bars")
    ingest.add_argument("paths", nargs="+")
    ingest.add_argument("--symbol", help="symbol of a single file (default: from its name or a symbol column)")
    ingest.add_argument("--interval", help="bar interval, e.g. 5min, 1h, 1d (default: from the name or the data)")
    zone = ingest.add_mutually_exclusive_group()
    zone.add_argument("--exchange", help="exchange_calendars code (XNYS, XSHG, ...) or 24/7")
    zone.add_argument("--timezone", help="timezone of naive timestamps when no exchange is given")
    ingest.add_argument(
        "--policy",
        action="append",
        metavar="RULE=POLICY",
        help="reject_bar, reject_symbol or warn for a validation rule (repeatable)",
    )
    ingest.set_defaults(func=cmd_ingest)

    pair = commands.add_parser("random-pair", help="write an UNTRAINED random tokenizer and model (tests, demos)")
    pair.add_argument("folder")
    pair.add_argument("--preset", default="tiny", choices=["tiny", "Kronos-mini", "Kronos-small", "Kronos-base"])
    pair.add_argument("--seed", type=int, default=0)
    pair.set_defaults(func=cmd_random_pair)

    register = commands.add_parser("register", help="register a tokenizer and a model folder in MLflow")
    register.add_argument("--tokenizer", required=True, help="folder with config.json + model.safetensors")
    register.add_argument("--model", required=True, help="folder with config.json + model.safetensors")
    register.add_argument("--alias", help="point this alias (e.g. champion) at the new model version")
    register.add_argument("--max-context", type=int, default=512, help="the model's context (Kronos-mini: 2048)")
    register.add_argument("--untrained", action="store_true", help="tag the versions as untrained")
    register.add_argument("--description")
    register.add_argument("--reason", default="registered")
    register.set_defaults(func=cmd_register)

    commands.add_parser("models", help="registered versions, aliases and alias history").set_defaults(func=cmd_models)
    promote = commands.add_parser("promote", help="point an alias at a model version")
    promote.add_argument("version")
    promote.add_argument("--alias", default="champion")
    promote.add_argument("--reason", default="promoted from the command line")
    promote.set_defaults(func=cmd_promote)
    rollback = commands.add_parser("rollback", help="move an alias back to its previous version")
    rollback.add_argument("--alias", default="champion")
    rollback.add_argument("--reason", default="rolled back from the command line")
    rollback.set_defaults(func=cmd_rollback)

    runs = commands.add_parser("runs", help="past forecast runs with versions and parameters")
    runs.add_argument("--limit", type=int, default=10)
    runs.add_argument("--json", action="store_true")
    runs.set_defaults(func=cmd_runs)

    forecast = commands.add_parser("forecast", help="forecast one CSV of bars into a CSV (no Airflow)")
    forecast.add_argument("csv")
    forecast.add_argument("--out", required=True)
    source = forecast.add_mutually_exclusive_group()
    source.add_argument("--model", help="registry reference: alias or version (default: the configured alias)")
    source.add_argument(
        "--checkpoints", nargs=2, metavar=("TOKENIZER_DIR", "MODEL_DIR"), help="local folders instead of the registry"
    )
    forecast.add_argument("--max-context", type=int, default=512, help="with --checkpoints")
    forecast.add_argument("--exchange", required=True, help="exchange_calendars code or 24/7 (future bar times)")
    forecast.add_argument("--interval", help="default: from the file name or the data")
    forecast.add_argument("--device", help="default: KRONOS_DEVICE")
    _sampling_arguments(forecast)
    forecast.set_defaults(func=cmd_forecast)

    demo = commands.add_parser("demo", help="run the daily DAG once on the sample data (embedded defaults)")
    demo.add_argument("--date", default="2024-08-28", help="logical date of the run, YYYY-MM-DD")
    demo.set_defaults(func=cmd_demo)

    backtest = commands.add_parser("backtest", help="walk-forward backtest over past origins from the bars table")
    backtest.add_argument("--symbols", nargs="+", help="symbol[:interval] (default: the watchlist)")
    backtest.add_argument("--model", help="alias or version (default: the configured alias)")
    backtest.add_argument("--baseline", action="store_true", help="score the persistence baseline only")
    backtest.add_argument("--origins", type=int, default=100)
    backtest.add_argument("--stride", type=int, default=1, help="bars between origins")
    backtest.add_argument("--end", help="last origin, ISO time (default: the latest bar minus pred_len)")
    backtest.add_argument("--out", help="write the per-origin results to this CSV")
    _sampling_arguments(backtest)
    backtest.set_defaults(func=cmd_backtest)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not args.verbose:
        os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")  # MLflow's own INFO lines otherwise
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        return args.func(args)
    except _known_errors() as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
