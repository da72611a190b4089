"""The ``kronos-flow`` command. All state lives under KRONOS_HOME unless KRONOS_DB_URL, MLFLOW_TRACKING_URI or
Airflow's own settings say otherwise."""

from __future__ import annotations

import argparse
import logging
import os
import sys

from kronos_tasks.errors import KronosFlowError
from kronos_tasks.training.config import FROM_SCRATCH_LR, TrainConfig

from . import commands

_OPTION_TYPES = {"integer": int, "number": float, "string": str, "array": str}


def add_forecast_options(parser: argparse.ArgumentParser) -> None:
    """One option per forecast parameter, with the parameter's own default and help (``ForecastParams``)."""
    from kronos_tasks.forecasting.params import ForecastParams

    for name, spec in ForecastParams.param_specs().items():
        kind = next(k for k in ([spec["type"]] if isinstance(spec["type"], str) else spec["type"]) if k != "null")
        default = spec["default"]
        help_text = spec["description"].replace("(empty:", "(not given:")
        if kind == "array":
            help_text += f", comma-separated (default: {','.join(f'{q:g}' for q in default)})"
        elif default is not None:
            help_text += f" (default: {default})"
        flag = "--T" if name == "T" else "--" + name.replace("_", "-")
        parser.add_argument(flag, dest=name, type=_OPTION_TYPES[kind], default=None, help=help_text)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kronos-flow", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress")
    subcommands = parser.add_subparsers(dest="command", required=True)

    subcommands.add_parser(
        "init", help="create KRONOS_HOME, migrate the forecasts DB and the MLflow store"
    ).set_defaults(func=commands.cmd_init)
    db = subcommands.add_parser("db", help="forecasts database migrations")
    db.add_argument("action", choices=["upgrade", "downgrade", "current"])
    db.add_argument("revision", nargs="?")
    db.add_argument(
        "--yes", action="store_true", help="downgrade: do it (without --yes it only says what it would drop)"
    )
    db.set_defaults(func=commands.cmd_db)

    ingest = subcommands.add_parser("ingest", help="ingest CSV/Parquet files or folders of bars")
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
    ingest.set_defaults(func=commands.cmd_ingest)

    fetch = subcommands.add_parser(
        "fetch", help="fetch bars of watchlist symbols from their vendors (yfinance, ccxt, akshare) into the database"
    )
    fetch.add_argument("symbols", nargs="+", help="symbol[:interval] of the watchlist, or any symbol with --source")
    fetch.add_argument("--since", help="fetch from this date or time (default: resume after the stored bars)")
    fetch.add_argument("--until", help="fetch bars closed by this time (default: now)")
    fetch.add_argument("--source", help="yfinance, akshare or ccxt:<exchange> for symbols not in the watchlist")
    fetch.add_argument("--exchange", help="with --source: exchange_calendars code or 24/7")
    fetch.add_argument("--interval", help="with --source: bar interval, e.g. 1d, 1h, 5min")
    fetch.add_argument("--ticker", help="with --source and one symbol: the vendor's name for it")
    fetch.add_argument(
        "--policy", action="append", metavar="RULE=ACTION", help="validation policy, as for ingest (repeatable)"
    )
    fetch.set_defaults(func=commands.cmd_fetch)

    tune = subcommands.add_parser(
        "finetune", help="fine-tune a pair on stored bars (MLflow curves, backtest on the held-back tail, register)"
    )
    tune.add_argument("--symbols", nargs="+", help="symbol[:interval] (default: the watchlist)")
    start = tune.add_mutually_exclusive_group(required=True)
    start.add_argument("--base", help="registered model alias or version to start from (e.g. champion)")
    start.add_argument("--checkpoints", nargs=2, metavar=("TOKENIZER", "MODEL"), help="local folders to start from")
    start.add_argument(
        "--preset",
        choices=["tiny", "Kronos-mini", "Kronos-small", "Kronos-base"],
        help="start from random weights of this size",
    )
    tune.add_argument("--preset-seed", type=int, default=0, help="with --preset: seed of the random weights")
    tune.add_argument("--max-context", type=int, default=512, help="with --checkpoints or --preset")
    tune.add_argument(
        "--train-tokenizer",
        action="store_true",
        help="train the tokenizer first (else it is frozen; always with --preset)",
    )
    tune.add_argument("--minutes", type=float, help="wall-clock budget of the whole run")
    defaults = TrainConfig()  # every training default lives there (unset options take them)
    for flag, kind, text in (
        ("--epochs", int, "the most passes over the training windows"),
        ("--lookback", int, "history bars of each training window"),
        ("--pred-len", int, "bars predicted after each window's history"),
        ("--batch-size", int, "windows per batch"),
        ("--accumulation", int, "batches per optimizer step"),
        ("--eval-every", int, "optimizer steps between validations"),
        ("--patience", int, "validations without improvement before stopping"),
        ("--val-share", float, "share of each symbol's latest bars held back"),
        ("--seed", int, "seed of the batch order and dropout"),
    ):
        default = getattr(defaults, flag[2:].replace("-", "_"))
        tune.add_argument(flag, type=kind, help=f"{text} (default: {default})")
    tune.add_argument(
        "--lr",
        type=float,
        help=f"peak learning rate of the predictor (default: {defaults.predictor_lr:g}, or {FROM_SCRATCH_LR:g} from --preset)",
    )
    tune.add_argument(
        "--tokenizer-lr",
        type=float,
        help=f"peak learning rate of the tokenizer (default: {defaults.tokenizer_lr:g}, or {FROM_SCRATCH_LR:g} from --preset)",
    )
    tune.add_argument(
        "--s2-condition",
        choices=["target", "sampled"],
        help="condition the s2 loss on the true next s1 (default) or, as upstream's script, on a sampled one",
    )
    tune.add_argument("--bf16", action="store_true", help="bf16 autocast on CUDA")
    tune.add_argument(
        "--processes",
        type=int,
        default=1,
        help="data-parallel training processes on this machine, one per GPU (torchrun; gloo on the CPU; default: 1)",
    )
    tune.add_argument(
        "--out",
        help="folder for checkpoints and the pair (default: KRONOS_HOME/finetune/<time>); an existing one resumes",
    )
    tune.add_argument("--backtest-origins", type=int, default=20, help="origins per symbol in the tail (0: none)")
    tune.add_argument("--register", action="store_true", help="register the pair as new versions")
    tune.add_argument("--alias", help="with --register: point this alias (e.g. challenger) at it")
    tune.set_defaults(func=commands.cmd_finetune)

    pair = subcommands.add_parser("random-pair", help="write an UNTRAINED random tokenizer and model (tests, demos)")
    pair.add_argument("folder")
    pair.add_argument("--preset", default="tiny", choices=["tiny", "Kronos-mini", "Kronos-small", "Kronos-base"])
    pair.add_argument("--seed", type=int, default=0)
    pair.set_defaults(func=commands.cmd_random_pair)

    register = subcommands.add_parser("register", help="register a tokenizer and a model folder in MLflow")
    register.add_argument("--tokenizer", required=True, help="folder with config.json + model.safetensors")
    register.add_argument("--model", required=True, help="folder with config.json + model.safetensors")
    register.add_argument("--alias", help="point this alias (e.g. champion) at the new model version")
    register.add_argument("--max-context", type=int, default=512, help="the model's context (Kronos-mini: 2048)")
    register.add_argument("--untrained", action="store_true", help="tag the versions as untrained")
    register.add_argument("--description")
    register.add_argument("--reason", default="registered")
    register.set_defaults(func=commands.cmd_register)

    subcommands.add_parser("models", help="registered versions, aliases and alias history").set_defaults(
        func=commands.cmd_models
    )
    promote = subcommands.add_parser("promote", help="point an alias at a model version")
    promote.add_argument("version")
    promote.add_argument("--alias", default="champion")
    promote.add_argument("--reason", default="promoted from the command line")
    promote.set_defaults(func=commands.cmd_promote)
    rollback = subcommands.add_parser("rollback", help="move an alias back to its previous version")
    rollback.add_argument("--alias", default="champion")
    rollback.add_argument("--reason", default="rolled back from the command line")
    rollback.set_defaults(func=commands.cmd_rollback)

    runs = subcommands.add_parser("runs", help="past forecast runs with versions and parameters")
    runs.add_argument("--limit", type=int, default=10)
    runs.add_argument("--json", action="store_true")
    runs.set_defaults(func=commands.cmd_runs)

    forecast = subcommands.add_parser("forecast", help="forecast one CSV of bars into a CSV (no Airflow)")
    forecast.add_argument("csv")
    forecast.add_argument("--out", required=True)
    forecast.add_argument(
        "--checkpoints", nargs=2, metavar=("TOKENIZER_DIR", "MODEL_DIR"), help="local folders instead of the registry"
    )
    forecast.add_argument("--max-context", type=int, default=512, help="with --checkpoints")
    forecast.add_argument("--exchange", required=True, help="exchange_calendars code or 24/7 (future bar times)")
    forecast.add_argument("--interval", help="default: from the file name or the data")
    forecast.add_argument("--device", help="default: KRONOS_DEVICE")
    add_forecast_options(forecast)
    forecast.set_defaults(func=commands.cmd_forecast)

    demo = subcommands.add_parser("demo", help="run the daily DAG once on the sample data (embedded defaults)")
    demo.add_argument("--date", default="2024-08-28", help="logical date of the run, YYYY-MM-DD")
    demo.set_defaults(func=commands.cmd_demo)

    backtest = subcommands.add_parser("backtest", help="walk-forward backtest over past origins from the bars table")
    backtest.add_argument("--symbols", nargs="+", help="symbol[:interval] (default: the watchlist)")
    backtest.add_argument("--baseline", action="store_true", help="score the persistence baseline only")
    backtest.add_argument("--origins", type=int, default=100)
    backtest.add_argument("--stride", type=int, default=1, help="bars between origins")
    backtest.add_argument("--end", help="last origin, ISO time (default: the latest bar minus pred_len)")
    backtest.add_argument("--out", help="write the per-origin results to this CSV")
    add_forecast_options(backtest)
    backtest.set_defaults(func=commands.cmd_backtest)
    return parser


def one_line(message: str) -> str:
    """``message`` on one line (database drivers' errors span several)."""
    return " ".join(message.split())


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not args.verbose:
        os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")  # MLflow's own INFO lines otherwise
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        return args.func(args)
    except KronosFlowError as exc:
        print(f"error: {one_line(str(exc))}", file=sys.stderr)
        return 1
    except OSError as exc:  # a file or folder that cannot be read or written: its path is in the message
        print(f"error: {one_line(str(exc))}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
