"""Fine-tuning as the CLI and the ``kronos_finetune`` DAG run it: data from the bars table, a base pair,
training with its curves in MLflow, a backtest on the held-back tail, and registration with lineage."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from kronos_tasks.errors import KronosFlowError, ParamsError
from kronos_tasks.pipeline import runtime

EXPERIMENT = "kronos-finetune"
BACKTEST_ORIGINS = 20


@dataclass(frozen=True)
class Base:
    """Where training starts: a registered version (``ref``), two local folders, or a random preset."""

    ref: str | None = None
    checkpoints: tuple[str, str] | None = None
    preset: str | None = None
    preset_seed: int = 0
    max_context: int = 512

    def __post_init__(self):
        given = [x for x in (self.ref, self.checkpoints, self.preset) if x]
        if len(given) != 1:
            raise ParamsError(
                "give exactly one base: --base champion|VERSION, --checkpoints TOK MODEL or --preset NAME."
            )

    def describe(self) -> str:
        if self.ref:
            return f"registry:{self.ref}"
        if self.checkpoints:
            return f"checkpoints:{self.checkpoints[0]},{self.checkpoints[1]}"
        return f"random:{self.preset} seed {self.preset_seed}"


@dataclass
class FinetuneOutcome:
    tokenizer_dir: Path
    model_dir: Path
    mlflow_run_id: str
    stages: list[dict]
    data: dict
    scores: dict[str, Any] = field(default_factory=dict)  # "base" and "finetuned" backtests on the tail
    model_version: str | None = None
    tokenizer_version: str | None = None

    def to_json(self) -> str:
        return json.dumps({k: str(v) if isinstance(v, Path) else v for k, v in asdict(self).items()}, default=str)

    @classmethod
    def from_json(cls, text: str) -> FinetuneOutcome:
        values = json.loads(text)
        return cls(**{**values, "tokenizer_dir": Path(values["tokenizer_dir"]), "model_dir": Path(values["model_dir"])})


class TrainingFailed(KronosFlowError):
    """A multi-process training run ended without an outcome."""


def _base_pair(base: Base):
    """(tokenizer, model, max_context, lineage) of the base."""
    from kronos_tasks.model import Kronos, KronosTokenizer
    from kronos_tasks.model.presets import random_model, random_tokenizer

    if base.preset:
        return (
            random_tokenizer(base.preset, base.preset_seed),
            random_model(base.preset, base.preset_seed),
            base.max_context,
            {"base": base.describe()},
        )
    if base.checkpoints:
        tok, mod = base.checkpoints
        return (
            KronosTokenizer.from_pretrained(tok),
            Kronos.from_pretrained(mod),
            base.max_context,
            {"base": base.describe()},
        )
    pair = runtime.registry().resolve(base.ref)
    lineage = {
        "base": base.describe(),
        "base_model_version": pair.model_version,
        "base_tokenizer_version": pair.tokenizer_version,
    }
    return (
        KronosTokenizer.from_pretrained(pair.tokenizer_path),
        Kronos.from_pretrained(pair.model_path),
        pair.max_context,
        lineage,
    )


def _backtest(engine, items, tokenizer_dir: Path, model_dir: Path, max_context: int, config, origins: int) -> dict:
    """Scores of close on the last ``origins`` origins per symbol (inside the validation tail), and persistence."""
    from kronos_tasks.evaluation.backtest import run_backtest, select_origins
    from kronos_tasks.forecasting.engine import load_predictor
    from kronos_tasks.forecasting.params import ForecastParams

    settings = runtime.settings()
    params = ForecastParams.from_dict(
        {"pred_len": config.pred_len, "lookback": config.lookback, "sample_count": 8, "seed": config.seed},
        max_context,
    ).resolve(max_context, str(model_dir), settings.batch_size, seed_key="finetune-backtest")
    predictor = load_predictor(tokenizer_dir, model_dir, max_context, settings.device, params.batch_size, params.dtype)
    chosen = select_origins(engine, items, params, max_context, origins, 1, params.seed)
    return run_backtest(chosen, params, predictor, str(model_dir.parent.name)).scores


def run_finetune(
    symbols: list[str] | None,
    base: Base,
    config,
    *,
    train_tokenizer: bool = False,
    out: Path | None = None,
    register: bool = False,
    alias: str | None = None,
    backtest_origins: int = BACKTEST_ORIGINS,
    progress=lambda line: None,
) -> FinetuneOutcome | None:
    """Fine-tune ``base`` on the stored bars of ``symbols`` (``symbol[:interval]``; None: the watchlist).

    Every hyper-parameter, the base and the data window (spans, split times, hash) go to one MLflow run in
    the ``kronos-finetune`` experiment with per-step curves; the base and the fine-tuned pair are
    backtested on the validation tail (``backtest_origins`` origins per symbol, 0: none) against
    persistence; with ``register`` the pair becomes new registry versions carrying that lineage.

    Started by ``torchrun``, every process calls this: they train together (data-parallel, one device
    each), process 0 does everything else and returns the outcome, the others return None.
    """
    from ..training import distributed

    group = distributed.join(runtime.settings().device)
    try:
        return _run_finetune(
            symbols, base, config, train_tokenizer, out, register, alias, backtest_origins, progress, group
        )
    finally:
        distributed.leave(group)


def _run_finetune(symbols, base, config, train_tokenizer, out, register, alias, backtest_origins, progress, group):
    from kronos_tasks.data.watchlist import load_watchlist
    from kronos_tasks.evaluation.backtest import items_from
    from kronos_tasks.registry import client, ensure_experiment
    from kronos_tasks.registry.runs import finish_run, log_step_metrics, start_run

    from ..training.config import config_params
    from ..training.data import load_training_data
    from ..training.trainer import finetune

    settings, engine = runtime.settings(), runtime.engine()
    items = items_from(engine, symbols, load_watchlist(settings.watchlist))
    if not group.main:
        group.barrier()  # process 0 resolves (and caches) a registered base first
    tokenizer, model, max_context, lineage = _base_pair(base)
    if group.main:
        group.barrier()
    if config.lookback + config.pred_len > max_context:
        raise ParamsError(
            f"lookback {config.lookback} + pred_len {config.pred_len} exceeds the model's context {max_context}."
        )
    data = load_training_data(engine, items, config.lookback, config.pred_len, config.val_share)
    described = data.describe()
    # Every process needs process 0's folder: the checkpoints live there.
    out = group.share(Path(out) if out else settings.home / "finetune" / _timestamp())
    if not group.main:
        finetune(tokenizer, model, data, config, out / "checkpoints", train_tokenizer, group=group)
        return None
    out.mkdir(parents=True, exist_ok=True)
    base_dir = out / "base"
    tokenizer.save_pretrained(base_dir / "tokenizer")
    model.save_pretrained(base_dir / "model")

    mlflow = client(settings)
    experiment = ensure_experiment(mlflow, EXPERIMENT, settings.mlflow_artifact_root)
    run_id = start_run(
        mlflow, experiment, f"finetune {base.describe()}", {"action": "finetune", "base": base.describe()}
    )
    failed = True
    try:
        stages = finetune(
            tokenizer,
            model,
            data,
            config,
            out / "checkpoints",
            train_tokenizer,
            log=lambda step, metrics: log_step_metrics(mlflow, run_id, step, metrics),
            progress=progress,
            group=group,
        )
        tokenizer_dir = tokenizer.save_pretrained(out / "pair" / "tokenizer")
        model_dir = model.save_pretrained(out / "pair" / "model")
        outcome = FinetuneOutcome(tokenizer_dir, model_dir, run_id, [s.__dict__ for s in stages], described)
        if backtest_origins:
            progress("backtesting the base and the fine-tuned pair on the validation tail")
            outcome.scores = {
                "base": _backtest(
                    engine, items, base_dir / "tokenizer", base_dir / "model", max_context, config, backtest_origins
                ),
                "finetuned": _backtest(engine, items, tokenizer_dir, model_dir, max_context, config, backtest_origins),
            }
        lineage.update(
            {
                "data_sha256": described["data_sha256"],
                "training_run": run_id,
                "symbols": ",".join(f"{s['symbol']}:{s['interval']}" for s in described["symbols"]),
                **{f"train.{k}": v for k, v in config_params(config).items()},
            }
        )
        (out / "pair" / "lineage.json").write_text(json.dumps(lineage, indent=2, sort_keys=True) + "\n")
        (out / "pair" / "training_data.json").write_text(json.dumps(described, indent=2) + "\n")
        if register:
            pair = runtime.registry().register(
                tokenizer_dir,
                model_dir,
                alias=alias,
                max_context=max_context,
                trained=True,
                description=f"fine-tuned from {base.describe()} on {lineage['symbols']} (MLflow run {run_id})",
                reason=f"fine-tuned (run {run_id})",
                lineage=lineage,
            )
            outcome.model_version, outcome.tokenizer_version = pair.model_version, pair.tokenizer_version
        with tempfile.TemporaryDirectory() as folder:
            (Path(folder) / "training_data.json").write_text(json.dumps(described, indent=2))
            (Path(folder) / "backtest.json").write_text(json.dumps(outcome.scores, indent=2, default=str))
            metrics = {f"{s.name}_best_val_loss": s.best_val for s in stages}
            for label, scores in outcome.scores.items():
                if "model" in scores:
                    metrics[f"{label}_skill_vs_persistence"] = scores["model"]["skill"]
                    metrics[f"{label}_mae"] = scores["model"]["mae"]
            params = {
                **config_params(config),
                "processes": group.world,
                "device": str(group.device),
                "base": base.describe(),
                "train_tokenizer": train_tokenizer,
                "data_sha256": described["data_sha256"],
                "symbols": lineage["symbols"],
                "model_version": outcome.model_version,
            }
            finish_run(mlflow, run_id, params=params, metrics=metrics, artifacts=Path(folder))
        failed = False
        return outcome
    finally:
        if failed:
            mlflow.set_terminated(run_id, "FAILED")


def request_from(values: dict) -> tuple[Base, Any, bool]:
    """(base, training config, whether to train the tokenizer) from option or DAG param values (the names
    of ``kronos-flow finetune``'s options). From a random preset the tokenizer is always trained and the
    learning rates default to ``FROM_SCRATCH_LR``; unset values take ``TrainConfig``'s defaults."""
    from kronos_tasks.training.config import FROM_SCRATCH_LR, TrainConfig

    from_scratch = bool(values.get("preset"))
    checkpoints = values.get("checkpoints")
    base = Base(
        values.get("base"),
        tuple(checkpoints) if checkpoints else None,
        values.get("preset"),
        int(values.get("preset_seed") or 0),
        int(values.get("max_context") or 512),
    )
    defaults = TrainConfig()

    def value(name: str, default):
        given = values.get(name)
        return default if given is None else given

    config = TrainConfig(
        lookback=value("lookback", defaults.lookback),
        pred_len=value("pred_len", defaults.pred_len),
        batch_size=value("batch_size", defaults.batch_size),
        epochs=value("epochs", defaults.epochs),
        minutes=values.get("minutes"),
        predictor_lr=float(value("lr", FROM_SCRATCH_LR if from_scratch else defaults.predictor_lr)),
        tokenizer_lr=float(value("tokenizer_lr", FROM_SCRATCH_LR if from_scratch else defaults.tokenizer_lr)),
        accumulation=value("accumulation", defaults.accumulation),
        eval_every=value("eval_every", defaults.eval_every),
        patience=value("patience", defaults.patience),
        val_share=float(value("val_share", defaults.val_share)),
        seed=value("seed", defaults.seed),
        s2_condition=value("s2_condition", defaults.s2_condition),
        bf16=bool(value("bf16", defaults.bf16)),
    ).check()
    return base, config, bool(values.get("train_tokenizer")) or from_scratch


def run_request(values: dict, progress=lambda line: None) -> FinetuneOutcome | None:
    """``run_finetune`` from option or param values (the names of ``kronos-flow finetune``'s options, with
    ``out``, ``register``, ``alias`` and ``backtest_origins``); None on processes other than 0."""
    base, config, train_tokenizer = request_from(values)
    out = values.get("out")
    return run_finetune(
        values.get("symbols"),
        base,
        config,
        train_tokenizer=train_tokenizer,
        out=Path(out) if out else None,
        register=bool(values.get("register")),
        alias=values.get("alias") or None,
        backtest_origins=int(values.get("backtest_origins", BACKTEST_ORIGINS)),
        progress=progress,
    )


def run_in_processes(values: dict, processes: int) -> FinetuneOutcome:
    """``run_request(values)`` in ``processes`` data-parallel processes on this machine (``torchrun
    --standalone``: one per GPU, or gloo processes on the CPU); process 0's outcome.

    The request and the outcome travel as JSON files in the run's folder; process 0's progress and every
    process's errors go to this process's stderr.
    """
    if processes < 1:
        raise ParamsError(f"processes must be a positive integer, got {processes!r}.")
    out = Path(values.get("out") or runtime.settings().home / "finetune" / _timestamp())
    out.mkdir(parents=True, exist_ok=True)
    request, outcome = out / "request.json", out / "outcome.json"
    outcome.unlink(missing_ok=True)
    request.write_text(json.dumps({**values, "out": str(out), "outcome": str(outcome)}, indent=2, default=str))
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={processes}",
        "-m",
        "kronos_tasks.pipeline.finetune_process",
        str(request),
    ]
    # One thread per process unless the operator set it: torchrun's default, said out loud.
    env = {"OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 1) // processes)), **os.environ}
    finished = subprocess.run(command, env=env)
    if finished.returncode != 0 or not outcome.is_file():
        raise TrainingFailed(
            f"training in {processes} processes failed (torchrun exit status {finished.returncode}); its "
            f"errors are above. The checkpoints in {out / 'checkpoints'} resume with the same --out."
        )
    return FinetuneOutcome.from_json(outcome.read_text())


def _timestamp() -> str:
    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")


def dag_task(params: dict, dag_run_id: str) -> dict:
    """The ``kronos_finetune`` DAG's training task: ``run_finetune`` from the run's params, registered under
    ``params["alias"]``, in ``params["processes"]`` data-parallel processes. The checkpoint folder is named
    after the DAG run, so a retry resumes training."""
    runtime.relax_gc()
    folder = runtime.settings().home / "finetune" / "".join(c if c.isalnum() or c in "-_." else "_" for c in dag_run_id)
    values = {**params, "out": str(folder), "register": True}
    processes = int(params.get("processes") or 1)
    outcome = run_in_processes(values, processes) if processes > 1 else run_request(values)
    skills = {f"{k}_skill": v.get("model", {}).get("skill") for k, v in outcome.scores.items()}
    return {
        "model_version": outcome.model_version,
        "tokenizer_version": outcome.tokenizer_version,
        "training_run": outcome.mlflow_run_id,
        **skills,
    }
