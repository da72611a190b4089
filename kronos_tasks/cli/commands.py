"""The subcommands of ``kronos-flow``: each takes the parsed arguments, does its work and prints what it did.

Library functions get typed arguments; turning options into them happens here.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from kronos_tasks.errors import ParamsError
from kronos_tasks.homelock import home_lock
from kronos_tasks.settings import load, redact

from . import render


def cmd_init(args) -> int:
    """Create the home folder and migrate the forecasts database and the MLflow store."""
    from kronos_tasks.registry import client
    from kronos_tasks.storage import current_revision, make_engine, upgrade

    settings = load()
    with home_lock(settings.home, "kronos-flow init"):
        engine = make_engine(settings.db_url)
        upgrade(engine)
        client(settings).search_experiments(max_results=1)  # creates and migrates MLflow's own store
    print(f"home:              {settings.home}")
    print(f"forecasts db:      {redact(settings.db_url)} (revision {current_revision(engine)})")
    print(f"MLflow tracking:   {redact(settings.mlflow_tracking_uri)}")
    print(f"MLflow artifacts:  {redact(settings.mlflow_artifact_root or 'the MLflow server artifact store')}")
    return 0


def cmd_db(args) -> int:
    from kronos_tasks.storage import current_revision, downgrade, make_engine, upgrade
    from kronos_tasks.storage.db import downgrade_plan

    settings = load()
    engine = make_engine(settings.db_url)
    if args.action == "upgrade":
        upgrade(engine, args.revision or "head")
    elif args.action == "downgrade":
        if not args.revision:
            raise ParamsError("downgrade needs a revision (for example base, which drops every table).")
        plan = downgrade_plan(engine, args.revision)
        if not plan:
            print(f"nothing to downgrade: the database is at revision {current_revision(engine)}.")
            return 0
        print(f"downgrading {redact(settings.db_url)} to {args.revision} would:")
        print("\n".join(f"  {line}" for line in plan))
        if not args.yes:
            raise ParamsError("nothing was changed; re-run with --yes to do it (stored bars and runs are lost).")
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


def _utc_time(text: str, option: str):
    import pandas as pd

    try:
        stamp = pd.Timestamp(text)
    except ValueError:
        raise ParamsError(
            f"{option} must be a date or ISO time such as 2024-01-31 or 2024-01-31T09:30Z, got {text!r}."
        ) from None
    return stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp.tz_convert("UTC")


def fetch_items(args, watchlist_path: Path):
    """The watchlist entries ``kronos-flow fetch`` names: ``symbol[:interval]`` from the watchlist, or built
    from ``--source``, ``--exchange`` and ``--interval`` for symbols outside it."""
    from kronos_tasks.data.watchlist import WatchItem, load_watchlist

    if args.source:
        if not (args.exchange and args.interval):
            raise ParamsError(
                "--source needs --exchange and --interval too (for example --exchange XNYS --interval 1d)."
            )
        if args.ticker and len(args.symbols) > 1:
            raise ParamsError("--ticker names the vendor's symbol of one symbol; give one symbol with it.")
        return [
            WatchItem.from_dict(
                {
                    "symbol": symbol,
                    "exchange": args.exchange,
                    "interval": args.interval,
                    "source": args.source,
                    "ticker": args.ticker,
                },
                "--source",
            )
            for symbol in args.symbols
        ]
    watchlist = load_watchlist(watchlist_path)
    items = []
    for wanted in args.symbols:
        symbol, _, interval = wanted.partition(":")
        found = [i for i in watchlist if i.symbol == symbol and (not interval or i.interval == interval)]
        if not found:
            raise ParamsError(
                f"{wanted!r} is not in the watchlist {watchlist_path}; add it there or give --source, --exchange "
                "and --interval."
            )
        if found[0].source == "files":
            raise ParamsError(f"{wanted!r} reads its bars from files; use `kronos-flow ingest FILE` for it.")
        items += found
    return items


def cmd_fetch(args) -> int:
    """Fetch (or backfill from ``--since``) the bars of symbols from their vendors, as the daily DAG does."""
    import pandas as pd

    from kronos_tasks.pipeline.ingest import IngestResult, ingest_fetched

    settings = load()
    items = fetch_items(args, settings.watchlist)
    since = _utc_time(args.since, "--since") if args.since else None
    until = _utc_time(args.until, "--until") if args.until else pd.Timestamp.now("UTC")
    if since is not None and since >= until:
        raise ParamsError(f"--since {args.since} is not before --until ({until}).")
    policies = dict(item.split("=", 1) for item in args.policy or [])
    engine, result = _engine(), IngestResult()
    for item in items:
        result.merge(ingest_fetched(engine, item, until, since=since, policies=policies))
    print(result.render())
    return 1 if result.failed else 0


def cmd_finetune(args) -> int:
    """Fine-tune from the command line, with a progress line on stderr and the backtests printed."""
    from kronos_tasks.pipeline.finetune import request_from, run_in_processes, run_request
    from kronos_tasks.pipeline.finetune_process import terminal_progress

    if args.alias and not args.register:
        raise ParamsError("--alias needs --register.")
    request_from(vars(args))  # bad options are refused here, before any process starts
    values = {k: v for k, v in vars(args).items() if k not in ("func", "processes") and not callable(v)}
    interactive = sys.stderr.isatty()
    if args.processes > 1:
        outcome = run_in_processes(values, args.processes)
    else:
        outcome = run_request(values, terminal_progress)
    if outcome is None:
        return 0  # started by torchrun: process 0 reports
    if interactive:
        print(file=sys.stderr)
    for stage in outcome.stages:
        print(
            f"{stage['name']}: {stage['steps']} steps in {stage['seconds']:.0f} s, best validation loss "
            f"{stage['best_val']:.4f} (stopped: {stage['stopped']})"
        )
    for label, scores in outcome.scores.items():
        print(render.scores(scores, f"{label} pair on the held-back tail"))
    print(f"pair: {outcome.tokenizer_dir.parent}  (MLflow run {outcome.mlflow_run_id})")
    if outcome.model_version:
        print(
            f"registered kronos-model version {outcome.model_version} (tokenizer version {outcome.tokenizer_version})"
            + (f" as @{args.alias}" if args.alias else "")
        )
    return 0


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
    """Versions, aliases and recent alias moves; read with SQL from a local store (no MLflow import)."""
    from kronos_tasks.registry.listing import is_sql_store, sql_moves, sql_versions

    settings = load()
    if is_sql_store(settings.mlflow_registry_uri) and is_sql_store(settings.mlflow_tracking_uri):
        rows = sql_versions(settings.mlflow_registry_uri, (settings.model_name, settings.tokenizer_name))
        moves = sql_moves(settings.mlflow_tracking_uri, "kronos-registry", settings.model_name)
    else:
        from kronos_tasks.registry import Registry

        registry = Registry(settings)
        rows = registry.versions()
        moves = {alias: registry.history(alias) for alias in {a for row in rows for a in row["aliases"]}}
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
    for alias in sorted(moves):
        for move in moves[alias][-5:]:
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
    from kronos_tasks.storage import list_runs, run_failures

    if args.limit < 0:
        raise ParamsError(f"--limit must be 0 (all runs) or more, got {args.limit}.")
    engine = _engine()
    runs = list_runs(engine, limit=args.limit or None)
    failures = run_failures(engine, [r.run_id for r in runs])
    if args.json:
        rows = [
            {
                **{c.name: getattr(r, c.name) for c in r.__table__.columns},
                "failures": [{"symbol": f.symbol, "stage": f.stage, "reason": f.reason} for f in failures[r.run_id]],
            }
            for r in runs
        ]
        print(json.dumps(rows, default=str, indent=2))
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
            f"  data window sha256 {r.data_window_hash}, "
            + (
                f"MLflow run {r.mlflow_run_id}"
                if r.mlflow_run_id
                else "MLflow run NOT LOGGED (logging failed or is under way; re-run the DAG run to log it)"
            )
        )
        for failure in failures[r.run_id]:
            print(f"  failed {failure.symbol} ({failure.stage}): {failure.reason}")
    return 0


def forecast_params(args):
    """The ForecastParams of a command's sampling options (``--quantiles`` given as ``0.1,0.5,0.9``)."""
    from kronos_tasks.forecasting.params import ForecastParams

    values = {name: getattr(args, name) for name in ForecastParams.param_specs()}
    if values["quantiles"] is not None:
        try:
            values["quantiles"] = [float(q) for q in values["quantiles"].split(",")]
        except ValueError:
            raise ParamsError(
                f"--quantiles must be comma-separated numbers such as 0.1,0.5,0.9, got {args.quantiles!r}."
            ) from None
    return ForecastParams.from_dict(values)


def cmd_forecast(args) -> int:
    from kronos_tasks.pipeline.single import Checkpoints, forecast_file

    if args.checkpoints and args.model:
        raise ParamsError("give --model (a registered version) or --checkpoints (local folders), not both.")
    if Path(args.out).resolve() == Path(args.csv).resolve():
        raise ParamsError(f"--out {args.out} is the input file; write the forecast to another file.")
    checkpoints = None
    if args.checkpoints:
        checkpoints = Checkpoints(Path(args.checkpoints[0]), Path(args.checkpoints[1]), args.max_context)
    done = forecast_file(
        Path(args.csv),
        Path(args.out),
        args.exchange,
        forecast_params(args),
        interval=args.interval,
        checkpoints=checkpoints,
        device=args.device,
    )
    for finding in done.dropped:
        print(f"dropped {finding}", file=sys.stderr)
    params = done.params
    print(
        f"wrote {args.out}: {done.model}, seed {params.seed}, {params.sample_count} sample paths, pred_len "
        f"{params.pred_len}, lookback {params.lookback}, on {done.device}\n"
        f"what made it: {done.provenance}"
    )
    if done.warning:
        print(f"WARNING: {done.warning}", file=sys.stderr)
    return 0


def cmd_replay(args) -> int:
    """Replay a stored run and print a verdict per symbol; exit 1 unless every symbol is exact."""
    from kronos_tasks.pipeline.replay import replay_run

    result = replay_run(args.run_id, model=args.model, device=args.device)
    recorded, replayed = result.recorded, result.replayed
    print(f"replay of {result.run_id}")
    print(
        f"  recorded: {recorded['model']} (sha256 {recorded['model_sha256'][:12]}), {recorded['tokenizer']}, "
        f"seed {recorded['seed']}, {recorded['device']} {recorded['dtype']}, kronos-flow {recorded['code_version']}, "
        f"stream {recorded['stream_version']}"
    )
    same = recorded["model_sha256"] == replayed["model_sha256"]
    print(
        f"  replayed: {replayed['model']} (sha256 {replayed['model_sha256'][:12]}"
        f"{', same weights, checksums verified' if same else ', OTHER weights'}), {replayed['device']} "
        f"{replayed['dtype']}, kronos-flow {replayed['code_version']}, stream {replayed['stream_version']}"
    )
    width = max(len(f"{s.symbol}:{s.interval}") for s in result.symbols)
    for s in result.symbols:
        name = f"{s.symbol}:{s.interval}"
        if s.verdict == "exact":
            print(f"  {name:<{width}}  exact: all {s.values} stored values reproduced bit for bit")
        elif s.verdict == "differs":
            print(
                f"  {name:<{width}}  differs: {s.values} values, max abs diff {s.max_abs:.6g}, max rel diff "
                f"{s.max_rel:.3g}: {s.reason}"
            )
        else:
            print(f"  {name:<{width}}  {s.verdict.replace('_', ' ')}: {s.reason}")
    exact = sum(s.verdict == "exact" for s in result.symbols)
    print(f"{exact} of {len(result.symbols)} symbol(s) reproduce the stored forecast exactly.")
    return 0 if result.exact else 1


def cmd_ui(args) -> int:
    from kronos_tasks.pipeline.ui import run_ui

    return run_ui(args.mlflow_port, None if args.no_airflow else args.airflow_port)


def cmd_demo(args) -> int:
    from kronos_tasks.pipeline.demo import run_demo

    with home_lock(load().home, "kronos-flow demo"):
        return run_demo(args.date)


def _backtest(args, model: str | None = None):
    """The walk-forward backtest the backtest and calibrate commands run -> (result, params, pair or None)."""
    import pandas as pd

    from kronos_tasks.data.watchlist import load_watchlist
    from kronos_tasks.evaluation.backtest import items_from, run_backtest, select_origins
    from kronos_tasks.forecasting.engine import pinned_predictor
    from kronos_tasks.pipeline import runtime

    settings = runtime.settings()
    engine = runtime.engine()
    params = forecast_params(args)
    items = items_from(engine, args.symbols, load_watchlist(settings.watchlist))
    pair, predictor, label, max_context = None, None, "persistence only", 512
    model = model or params.model or settings.model_alias
    if not getattr(args, "baseline", False):
        pair = runtime.registry().resolve(model)
        max_context, label = pair.max_context, pair.label
    params = params.resolve(max_context, model, settings.batch_size, seed_key="backtest")
    if pair is not None:
        predictor = pinned_predictor(pair, settings.device, params.batch_size, params.dtype)
    end = pd.Timestamp(args.end) if getattr(args, "end", None) else None
    if end is not None and end.tzinfo is None:
        end = end.tz_localize("UTC")
    origins = select_origins(engine, items, params, max_context, args.origins, args.stride, params.seed, end)
    return run_backtest(origins, params, predictor, label), params, pair


def cmd_backtest(args) -> int:
    from kronos_tasks.pipeline.calibrate import holdouts
    from kronos_tasks.pipeline.calibrate import render as render_holdout

    if args.calibrated and args.baseline:
        raise ParamsError("--calibrated needs the model's forecasts; drop --baseline.")
    result, params, pair = _backtest(args)
    print(render.scores(result.scores, result.model_label))
    if args.calibrated:
        report, _ = holdouts(result.rows, params.quantiles, result.model_label)
        print("calibration fitted on the first half of the origins, scored on the second:")
        print(render_holdout(report))
    if args.out:
        result.rows.to_csv(args.out, index=False)
        print(f"wrote {args.out}")
    return 0


def cmd_calibrate(args) -> int:
    """Backtest a registered version, fit its calibration per interval and store it for its daily forecasts."""
    from kronos_tasks.pipeline.calibrate import fit_and_store, render

    if not args.model:
        raise ParamsError("give the version to calibrate: --model VERSION (or an alias such as champion).")
    result, params, pair = _backtest(args, args.model)
    report = fit_and_store(result.rows, params.quantiles, pair)
    print(f"{pair.model_name} v{pair.model_version}: {result.scores['origins']} origins backtested")
    print(render(report))
    return 0
