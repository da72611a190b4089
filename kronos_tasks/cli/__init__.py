"""The ``kronos-flow`` command line: one subcommand per task, each with a description and examples."""

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


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Descriptions and examples as written; every option's default appended to its help (when it has one)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if "default" in text or not action.option_strings or default in (None, False, argparse.SUPPRESS):
            return text
        return f"{text} (default: {default})"


DESCRIPTION = """Run the Kronos financial foundation model in production: ingest bars, register models, forecast,
backtest, fine-tune, replay and audit. State lives under KRONOS_HOME (default ~/.kronos-flow) unless
KRONOS_DB_URL, MLFLOW_TRACKING_URI or Airflow's own settings say otherwise."""

EPILOG = """first steps:
  kronos-flow demo                   the daily forecast DAG once, on the bundled sample data
  kronos-flow runs                   what it stored: versions, parameters, seed, data hashes
  kronos-flow replay RUN_ID          re-run a stored forecast from its record and compare
  kronos-flow ui                     the MLflow and Airflow UIs on 127.0.0.1 (Ctrl+C stops both)
`kronos-flow COMMAND --help` describes each command with examples."""


def _command(subcommands, name: str, summary: str, about: str, examples: str, func) -> argparse.ArgumentParser:
    """A subcommand with a one-line ``summary`` (in the command list), a description and examples."""
    parser = subcommands.add_parser(
        name,
        help=summary,
        description=f"{summary[0].upper()}{summary[1:]}.\n\n{about}".rstrip(),
        epilog="examples:\n" + "\n".join(f"  {line}" for line in examples.strip().splitlines()),
        formatter_class=HelpFormatter,
    )
    parser.set_defaults(func=func)
    return parser


def _validation_rules() -> str:
    from kronos_tasks.data.rules import DEFAULT_POLICIES, POLICIES, RULES

    lines = [f"validation rules (policy by default): policies are {', '.join(POLICIES)}"]
    lines += [f"  {rule:<22} {text} ({DEFAULT_POLICIES[rule]})" for rule, text in RULES.items()]
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kronos-flow", description=DESCRIPTION, epilog=EPILOG, formatter_class=HelpFormatter
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress")
    subcommands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    _command(
        subcommands,
        "init",
        "create KRONOS_HOME, migrate the forecasts database and open the MLflow store",
        "Safe to run again: migrations that already ran are skipped.",
        "kronos-flow init",
        commands.cmd_init,
    )
    db = _command(
        subcommands,
        "db",
        "forecasts database migrations (Alembic)",
        "upgrade to a revision (default: the newest), downgrade to one (base: empty), or show the current one.\n"
        "A downgrade first lists the tables and rows it would drop and changes nothing without --yes.",
        "kronos-flow db current\nkronos-flow db upgrade\nkronos-flow db downgrade 0001 --yes",
        commands.cmd_db,
    )
    db.add_argument("action", choices=["upgrade", "downgrade", "current"])
    db.add_argument("revision", nargs="?", help="target revision (upgrade: head, downgrade: required)")
    db.add_argument("--yes", action="store_true", help="downgrade: do it (without --yes it only says what it drops)")

    ingest = _command(
        subcommands,
        "ingest",
        "ingest CSV/Parquet files or folders of bars into the bars table",
        "One file per symbol (symbol and interval from the name, e.g. GOOG_1d.csv) or files with a symbol\n"
        "column. Every bar is validated; a rule's policy drops the bar, rejects the symbol or only warns.\n"
        "Re-ingesting the same bars changes nothing.\n\n" + _validation_rules(),
        "kronos-flow ingest GOOG_1d.csv --exchange XNYS\n"
        "kronos-flow ingest data/ --exchange XSHG --policy off_grid=reject_bar",
        commands.cmd_ingest,
    )
    ingest.add_argument("paths", nargs="+", help="files or folders")
    ingest.add_argument("--symbol", help="symbol of a single file (default: from its name or a symbol column)")
    ingest.add_argument("--interval", help="bar interval, e.g. 5min, 1h, 1d (default: from the name or the data)")
    zone = ingest.add_mutually_exclusive_group()
    zone.add_argument(
        "--exchange", help="exchange_calendars code (XNYS, XSHG, ...) or 24/7 (default: the symbol's stored one)"
    )
    zone.add_argument("--timezone", help="timezone of naive timestamps when no exchange is given")
    ingest.add_argument(
        "--policy", action="append", metavar="RULE=POLICY", help="policy of a validation rule (repeatable)"
    )

    fetch = _command(
        subcommands,
        "fetch",
        "fetch bars from market-data vendors (yfinance, ccxt, akshare) into the bars table",
        "Watchlist symbols use their entry's source; any other symbol needs --source, --exchange and\n"
        "--interval. Without --since a symbol resumes just before its newest stored bar (new symbols start\n"
        "2,048 bars back). Only bars closed by --until are stored.\n\n" + _validation_rules(),
        "kronos-flow fetch GOOG:1d\n"
        "kronos-flow fetch BTCUSDT --source ccxt:binance --exchange 24/7 --interval 1h --since 2024-01-01",
        commands.cmd_fetch,
    )
    fetch.add_argument("symbols", nargs="+", help="symbol[:interval] of the watchlist, or any symbol with --source")
    fetch.add_argument("--since", help="fetch from this date or time (default: resume after the stored bars)")
    fetch.add_argument("--until", help="fetch bars closed by this time (default: now)")
    fetch.add_argument("--source", help="yfinance, akshare or ccxt:<exchange> for symbols not in the watchlist")
    fetch.add_argument("--exchange", help="with --source: exchange_calendars code or 24/7")
    fetch.add_argument("--interval", help="with --source: bar interval, e.g. 1d, 1h, 5min")
    fetch.add_argument("--ticker", help="with --source and one symbol: the vendor's name for it")
    fetch.add_argument(
        "--policy", action="append", metavar="RULE=POLICY", help="policy of a validation rule (repeatable)"
    )

    tune = _command(
        subcommands,
        "finetune",
        "fine-tune a tokenizer/model pair on stored bars",
        "Trains on windows from the bars table, split by time (the latest --val-share of each symbol is held\n"
        "back), with curves in the MLflow experiment kronos-finetune; backtests the base and the result on\n"
        "the held-back tail against persistence; --register adds new registry versions with their lineage.\n"
        "Re-running with the same --out resumes from the last checkpoint.",
        "kronos-flow finetune --base champion --symbols GOOG:1d --minutes 30 --register --alias challenger\n"
        "kronos-flow finetune --preset tiny --minutes 3 --register\n"
        "kronos-flow finetune --base champion --processes 4 --bf16 --register   # four GPUs",
        commands.cmd_finetune,
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
        "--train-tokenizer", action="store_true", help="train the tokenizer first (else frozen; always with --preset)"
    )
    tune.add_argument("--minutes", type=float, help="wall-clock budget of the whole run (default: none)")
    defaults = TrainConfig()  # every training default lives there (unset options take them)
    for flag, kind, text in (
        ("--epochs", int, "the most passes over the training windows"),
        ("--lookback", int, "history bars of each training window"),
        ("--pred-len", int, "bars predicted after each window's history"),
        ("--batch-size", int, "windows per batch (all processes together)"),
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
        help=f"peak learning rate of the predictor (default: {defaults.predictor_lr:g}, {FROM_SCRATCH_LR:g} from --preset)",
    )
    tune.add_argument(
        "--tokenizer-lr",
        type=float,
        help=f"peak learning rate of the tokenizer (default: {defaults.tokenizer_lr:g}, {FROM_SCRATCH_LR:g} from --preset)",
    )
    tune.add_argument(
        "--s2-condition",
        choices=["target", "sampled"],
        help="condition the s2 loss on the true next s1, or on a sampled one as upstream's script (default: target)",
    )
    tune.add_argument("--bf16", action="store_true", help="bf16 autocast on CUDA")
    tune.add_argument(
        "--processes",
        type=int,
        default=1,
        help="data-parallel training processes on this machine, one per GPU (torchrun; gloo on the CPU)",
    )
    tune.add_argument(
        "--out",
        help="folder for checkpoints and the pair (default: KRONOS_HOME/finetune/<time>); an existing one resumes",
    )
    tune.add_argument("--backtest-origins", type=int, default=20, help="origins per symbol in the tail (0: none)")
    tune.add_argument("--register", action="store_true", help="register the pair as new versions")
    tune.add_argument("--alias", help="with --register: point this alias (e.g. challenger) at it")

    pair = _command(
        subcommands,
        "random-pair",
        "write an UNTRAINED, randomly initialised tokenizer and model",
        "For trying the machinery: the pair forecasts noise. Registered, it is tagged untrained only with\n"
        "`kronos-flow register --untrained`.",
        "kronos-flow random-pair ckpt --preset Kronos-small",
        commands.cmd_random_pair,
    )
    pair.add_argument("folder", help="writes FOLDER/tokenizer and FOLDER/model")
    pair.add_argument("--preset", default="tiny", choices=["tiny", "Kronos-mini", "Kronos-small", "Kronos-base"])
    pair.add_argument("--seed", type=int, default=0, help="seed of the random weights")

    register = _command(
        subcommands,
        "register",
        "register a tokenizer and a model folder in the MLflow registry",
        "Each folder (config.json + model.safetensors, the Hugging Face layout) is checked, logged as an\n"
        "MLflow logged model and registered as a version with its SHA-256; an identical tokenizer is reused.",
        "kronos-flow register --tokenizer ckpt/tokenizer --model ckpt/model --alias champion\n"
        "kronos-flow register --tokenizer tok --model mini --max-context 2048",
        commands.cmd_register,
    )
    register.add_argument("--tokenizer", required=True, help="folder with config.json + model.safetensors")
    register.add_argument("--model", required=True, help="folder with config.json + model.safetensors")
    register.add_argument("--alias", help="point this alias (e.g. champion) at the new model version")
    register.add_argument("--max-context", type=int, default=512, help="the model's context (Kronos-mini: 2048)")
    register.add_argument("--untrained", action="store_true", help="tag the versions as untrained (random weights)")
    register.add_argument("--description", help="shown on the version's page")
    register.add_argument("--reason", default="registered", help="recorded with the alias move")

    _command(
        subcommands,
        "models",
        "list registered versions, their aliases and each alias's latest moves",
        "",
        "kronos-flow models",
        commands.cmd_models,
    )
    promote = _command(
        subcommands,
        "promote",
        "point an alias at a model version",
        "The move is recorded (who, when, from which version, why); `kronos-flow rollback` undoes it.",
        "kronos-flow promote 3 --reason 'beats the champion on the 2024 backtest'",
        commands.cmd_promote,
    )
    promote.add_argument("version", help="model version number")
    promote.add_argument("--alias", default="champion")
    promote.add_argument("--reason", default="promoted from the command line", help="recorded with the move")
    rollback = _command(
        subcommands,
        "rollback",
        "move an alias back to the version it pointed at before its last move",
        "",
        "kronos-flow rollback --reason 'forecasts drifted'",
        commands.cmd_rollback,
    )
    rollback.add_argument("--alias", default="champion")
    rollback.add_argument("--reason", default="rolled back from the command line", help="recorded with the move")

    runs = _command(
        subcommands,
        "runs",
        "list past forecast runs with their versions, parameters, seeds and data hashes",
        "Newest first, with the symbols each run could not forecast and why.",
        "kronos-flow runs --limit 3\nkronos-flow runs --limit 0 --json > runs.json",
        commands.cmd_runs,
    )
    runs.add_argument("--limit", type=int, default=10, help="the newest N runs (0: all)")
    runs.add_argument("--json", action="store_true", help="one JSON document with every column")

    replay = _command(
        subcommands,
        "replay",
        "re-run a stored forecast from its record and compare it with what was stored",
        "Reads each symbol's data window by its recorded hash, fetches the recorded versions (checksums\n"
        "verified), uses every recorded sampling parameter and the seed, and reports per symbol: exact, or\n"
        "by how much it differs and why (the data window changed, other weights, another device).\n"
        "Exit status 0 when every symbol reproduces exactly, 1 otherwise.",
        "kronos-flow replay 'kronos_daily_forecast@2024-08-28T21:30:00+00:00'\n"
        "kronos-flow replay RUN_ID --model 4      # what version 4 would have forecast",
        commands.cmd_replay,
    )
    replay.add_argument("run_id", help="a run id from `kronos-flow runs`")
    replay.add_argument("--model", help="replay with this registered version or alias instead of the recorded one")
    replay.add_argument("--device", help="torch device (default: KRONOS_DEVICE)")

    forecast = _command(
        subcommands,
        "forecast",
        "forecast one file of bars into a CSV (no Airflow, no database)",
        "Writes OUT (one row per symbol and future bar: the mean of each feature and its quantiles) and\n"
        "OUT.json: what made it (input hash, model version and checksums, every parameter, seed, device).",
        "kronos-flow forecast GOOG_1d.csv --exchange XNYS --out goog.csv\n"
        "kronos-flow forecast bars.csv --exchange 24/7 --out f.csv --checkpoints ckpt/tokenizer ckpt/model "
        "--pred-len 48",
        commands.cmd_forecast,
    )
    forecast.add_argument("csv", help="CSV or Parquet file of bars")
    forecast.add_argument("--out", required=True, help="CSV to write")
    forecast.add_argument(
        "--checkpoints", nargs=2, metavar=("TOKENIZER_DIR", "MODEL_DIR"), help="local folders instead of the registry"
    )
    forecast.add_argument("--max-context", type=int, default=512, help="with --checkpoints")
    forecast.add_argument("--exchange", required=True, help="exchange_calendars code or 24/7 (future bar times)")
    forecast.add_argument("--interval", help="default: from the file name or the data")
    forecast.add_argument("--device", help="torch device (default: KRONOS_DEVICE)")
    add_forecast_options(forecast)

    demo = _command(
        subcommands,
        "demo",
        "run the daily forecast DAG once on the bundled sample data",
        "Embedded defaults: SQLite, a local MLflow store, the CPU. Registers the bundled demonstration pair\n"
        "when no model holds the alias. Airflow's own log goes to a file under KRONOS_HOME/logs.",
        "kronos-flow demo\nkronos-flow demo --date 2024-08-27",
        commands.cmd_demo,
    )
    demo.add_argument("--date", default="2024-08-28", help="logical date of the run, YYYY-MM-DD")

    ui = _command(
        subcommands,
        "ui",
        "start the MLflow and Airflow UIs on 127.0.0.1 (Ctrl+C stops both)",
        "MLflow on the local store, Airflow standalone with its example DAGs off and this project's DAGs;\n"
        "prints the addresses and where Airflow's generated admin password is.",
        "kronos-flow ui\nkronos-flow ui --mlflow-port 5001 --airflow-port 8081",
        commands.cmd_ui,
    )
    ui.add_argument("--mlflow-port", type=int, default=5000)
    ui.add_argument("--airflow-port", type=int, default=8080)
    ui.add_argument("--no-airflow", action="store_true", help="start the MLflow UI only")

    backtest = _command(
        subcommands,
        "backtest",
        "walk-forward backtest over past origins from the bars table",
        "Scores the model's forecasts (MAE, skill versus persistence, direction, pinball, coverage, Brier)\n"
        "at up to --origins origins per symbol, each seeing only the bars before it.",
        "kronos-flow backtest --symbols GOOG:1d --origins 100\nkronos-flow backtest --baseline",
        commands.cmd_backtest,
    )
    backtest.add_argument("--symbols", nargs="+", help="symbol[:interval] (default: the watchlist)")
    backtest.add_argument("--baseline", action="store_true", help="score the persistence baseline only")
    backtest.add_argument("--origins", type=int, default=100, help="origins per symbol")
    backtest.add_argument("--stride", type=int, default=1, help="bars between origins")
    backtest.add_argument("--end", help="last origin, ISO time (default: the latest bar minus pred_len)")
    backtest.add_argument("--out", help="write the per-origin results to this CSV")
    backtest.add_argument(
        "--calibrated",
        action="store_true",
        help="also fit a calibration on the first half of the origins and score raw, calibrated and "
        "historical-volatility bands on the second",
    )
    add_forecast_options(backtest)

    calibrate = _command(
        subcommands,
        "calibrate",
        "fit and store a model version's calibration from a walk-forward backtest",
        "Backtests the version over the latest --origins origins per symbol, scores a walk-forward holdout (fit on\n"
        "the first half, evaluated on the second: raw, calibrated and historical-volatility bands), then stores\n"
        "the calibration fitted on all origins, per interval: the daily forecasts of that version apply it.\n"
        "The rollout DAG does the same for every candidate.",
        "kronos-flow calibrate --model 3 --origins 200",
        commands.cmd_calibrate,
    )
    calibrate.add_argument("--symbols", nargs="+", help="symbol[:interval] (default: the watchlist)")
    calibrate.add_argument("--origins", type=int, default=200, help="origins per symbol")
    calibrate.add_argument("--stride", type=int, default=1, help="bars between origins")
    add_forecast_options(calibrate)
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
