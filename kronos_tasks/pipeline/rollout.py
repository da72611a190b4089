"""Task functions of the model rollout: verify -> backtest candidate and champion -> gate -> promote or refuse.

The gate: the candidate's skill versus persistence (MAE of close) must reach ``min_skill`` and its Brier
score of P(close up) must not exceed ``max_brier``; when a champion exists, the candidate must also be
no worse than it beyond ``tolerance`` on both. ``force`` promotes regardless (recorded as such);
``rollback`` moves the alias back to its previous holder. Every decision is stored in the
``model_decisions`` table and as an MLflow run, with the numbers it was made on.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from kronos_tasks.data.watchlist import WatchItem, load_watchlist, parse_watchlist
from kronos_tasks.errors import ParamsError
from kronos_tasks.evaluation.backtest import run_backtest, select_origins
from kronos_tasks.evaluation.metrics import json_safe
from kronos_tasks.forecasting.engine import pinned_predictor
from kronos_tasks.forecasting.params import ForecastParams
from kronos_tasks.forecasting.windows import make_window, predict_windows
from kronos_tasks.registry.mlflow_setup import RegistryError, ensure_experiment
from kronos_tasks.registry.pinned import PinnedPair
from kronos_tasks.registry.registry import REGISTRY_EXPERIMENT
from kronos_tasks.registry.runs import record_run
from kronos_tasks.storage import read_bars, record_decision

from . import runtime


@dataclass(frozen=True)
class Gate:
    min_skill: float = 0.0
    max_brier: float = 0.25
    tolerance: float = 0.02
    coverage_tolerance: float = 0.05  # calibrated band coverage on held-back origins vs nominal


def _items(watchlist: Any) -> list[WatchItem]:
    return parse_watchlist(watchlist) if watchlist else load_watchlist(runtime.settings().watchlist)


def _predictor(pair: PinnedPair, params: ForecastParams):
    settings = runtime.settings()
    runtime.prepare_decoding()  # backtests decode as much as a daily run, in worker processes like it
    return pinned_predictor(pair, settings.device, params.batch_size or settings.batch_size, params.dtype)


def choose(rollback: bool, candidate: str | None) -> str:
    """The branch a rollout takes: ``rollback`` when asked, else ``verify`` (which needs a candidate)."""
    if rollback:
        return "rollback"
    if not candidate:
        raise ParamsError("set the candidate param to a model version (or rollback to true).")
    return "verify"


def verify(candidate: str, watchlist: Any, params: dict[str, Any]) -> PinnedPair:
    """Pin the candidate (downloads are checked against their SHA-256), check its pair and smoke-forecast."""
    runtime.relax_gc()
    registry = runtime.registry()
    pair = registry.resolve(f"{registry.model_name}/{candidate}")
    smoke = ForecastParams.from_dict({**params, "pred_len": 4, "sample_count": 2, "lookback": 64, "min_history": 16})
    windows = []
    for item in _items(watchlist)[:2]:
        bars = read_bars(runtime.engine(), item.symbol, item.interval, limit=smoke.window(pair.max_context))
        windows.append(make_window(item, bars, smoke, pair.max_context))
    predicted, failed = predict_windows(_predictor(pair, smoke), windows, smoke, 0)
    values = [f.samples for f in predicted.values()]
    if failed or not values or not all(np.isfinite(v).all() for v in values):
        raise RegistryError(f"candidate {candidate} failed its smoke forecast: {failed or 'non-finite output'}")
    return pair


def champion(alias: str) -> PinnedPair | None:
    """The pinned pair the alias holds now, or None."""
    registry = runtime.registry()
    if registry.holder(alias) is None:
        return None
    return registry.resolve(f"{registry.model_name}@{alias}")


def backtest(
    pair: PinnedPair | None, watchlist: Any, params: dict[str, Any], origins: int, stride: int, seed: int
) -> dict[str, Any] | None:
    """Backtest scores of a pinned pair on the latest windows of the watchlist (same origins and seeds for all),
    and its calibration per interval: a walk-forward holdout report, and the calibration fitted on all the
    origins, stored for the version (``calibrate.fit_and_store``)."""
    runtime.relax_gc()
    from .calibrate import fit_and_store

    if pair is None:
        return None
    forecast_params = ForecastParams.from_dict(params, pair.max_context)
    chosen = select_origins(
        runtime.engine(), _items(watchlist), forecast_params, pair.max_context, origins, stride, seed
    )
    result = run_backtest(chosen, forecast_params, _predictor(pair, forecast_params), pair.label)
    calibration = fit_and_store(result.rows, forecast_params.quantiles, pair)
    return {
        "label": result.model_label,
        "version": pair.model_version,
        "scores": result.scores,
        "calibration": calibration,
    }


def decide(candidate: dict[str, Any], current: dict[str, Any] | None, gate: Gate, force: bool) -> dict[str, Any]:
    """Apply the gate -> {"action": "promote" | "refuse" | "force_promote", "reasons": [...], "numbers": {...}}."""
    model = candidate["scores"]["model"]
    numbers = {
        "candidate_skill": model["skill"],
        "candidate_brier": model["brier"],
        "candidate_mae": model["mae"],
        "candidate_direction_accuracy": model["direction_accuracy"],
        "persistence_mae": candidate["scores"]["persistence"]["mae"],
        **{f"gate_{k}": v for k, v in asdict(gate).items()},
    }
    reasons = []
    if model["skill"] is None or model["brier"] is None:
        reasons.append("the backtest produced no finite skill or Brier score")
    elif not model["skill"] >= gate.min_skill:
        reasons.append(
            f"skill vs persistence {model['skill']:+.4f} < {gate.min_skill:+.4f}: it loses to carrying the "
            "last close forward"
        )
    if model["brier"] is not None and not model["brier"] <= gate.max_brier:
        reasons.append(
            f"Brier score {model['brier']:.4f} > {gate.max_brier:.4f}: its P(close up) is worse calibrated than allowed"
        )
    if current is not None and model["skill"] is not None and model["brier"] is not None:
        held = current["scores"]["model"]
        numbers.update(
            {
                "champion_version": current["version"],
                "champion_skill": held["skill"],
                "champion_brier": held["brier"],
                "champion_mae": held["mae"],
            }
        )
        if held["skill"] is not None and model["skill"] < held["skill"] - gate.tolerance:
            reasons.append(
                f"skill {model['skill']:+.4f} is worse than the champion's {held['skill']:+.4f} beyond the "
                f"tolerance {gate.tolerance}"
            )
        if held["brier"] is not None and model["brier"] > held["brier"] + gate.tolerance:
            reasons.append(
                f"Brier {model['brier']:.4f} is worse than the champion's {held['brier']:.4f} beyond the "
                f"tolerance {gate.tolerance}"
            )
    reasons += _honesty(candidate, gate, numbers)
    if reasons:
        action = "force_promote" if force else "refuse"
    else:
        action = "promote"
    return {"action": action, "reasons": reasons or ["passed the gate"], "numbers": json_safe(numbers)}


def _honesty(candidate: dict[str, Any], gate: Gate, numbers: dict[str, Any]) -> list[str]:
    """The gate's checks of stated uncertainty: calibrated band coverage on held-back origins within
    ``coverage_tolerance`` of nominal for every interval, and a CRPS below the historical-volatility band's and
    persistence's. Adds each number to ``numbers``; returns the reasons to refuse."""
    reasons = []
    scores = candidate["scores"]
    crps = {
        "model": scores["model"].get("crps"),
        "histvol": scores.get("histvol", {}).get("crps"),
        "persistence": scores["persistence"].get("crps"),
    }
    numbers.update({f"crps_{k}": v for k, v in crps.items()})
    if None in crps.values():
        reasons.append("the backtest produced no finite CRPS for the model or a baseline")
    else:
        for baseline in ("histvol", "persistence"):
            if not crps["model"] < crps[baseline]:
                name = "the historical-volatility band" if baseline == "histvol" else "persistence"
                reasons.append(f"CRPS {crps['model']:.5g} does not beat {name}'s {crps[baseline]:.5g}")
    calibration = candidate.get("calibration") or {}
    if not calibration:
        reasons.append("no calibration could be fitted on the backtest")
    for interval, entry in calibration.items():
        if "holdout" not in entry:
            reasons.append(f"no calibration at {interval}: {entry.get('skipped')}")
            continue
        band = entry["holdout"]["calibrated"]
        numbers.update(
            {
                f"{interval}_calibrated_coverage": band["coverage"],
                f"{interval}_raw_coverage": entry["holdout"]["raw"]["coverage"],
                f"{interval}_histvol_coverage": entry["holdout"]["histvol"]["coverage"],
                f"{interval}_nominal_coverage": band["nominal"],
            }
        )
        # inclusive, and blind to float noise: 0.75 is within 0.05 of 0.80
        if band["coverage"] is None or abs(band["coverage"] - band["nominal"]) > gate.coverage_tolerance + 1e-9:
            reasons.append(
                f"at {interval} the calibrated {band['nominal']:.0%} band covered {band['coverage']} of held-back "
                f"outcomes, outside {band['nominal']:.0%} +- {gate.coverage_tolerance}"
            )
    return reasons


def _record(
    action: str,
    alias: str,
    candidate: str | None,
    previous: str | None,
    reason: str,
    numbers: dict[str, Any],
    dag_run_id: str | None,
) -> str:
    """Store a decision in the model_decisions table and as an MLflow run -> the MLflow run id."""
    registry = runtime.registry()
    experiment = ensure_experiment(registry.client, REGISTRY_EXPERIMENT, runtime.settings().mlflow_artifact_root)
    run_id = record_run(
        registry.client,
        experiment,
        f"rollout decision: {action} {candidate or ''} @{alias}",
        tags={"action": f"decision:{action}", "alias": alias, "dag_run_id": dag_run_id},
        params={
            "action": action,
            "alias": alias,
            "candidate_version": candidate or "",
            "previous_version": previous or "",
            "reason": reason,
        },
        metrics=numbers,
    )
    record_decision(
        runtime.engine(),
        {
            "action": action,
            "model_name": registry.model_name,
            "alias": alias,
            "candidate_version": candidate,
            "previous_version": previous,
            "actor": f"airflow:{dag_run_id}" if dag_run_id else "kronos-flow",
            "reason": reason,
            "metrics": numbers,
            "mlflow_run_id": run_id,
            "dag_run_id": dag_run_id,
        },
    )
    return run_id


def apply(decision: dict[str, Any], candidate: PinnedPair, alias: str, dag_run_id: str | None) -> dict[str, Any]:
    """Carry out a decision: move the alias on promote, record every decision either way."""
    registry = runtime.registry()
    previous = registry.holder(alias)
    reason = "; ".join(decision["reasons"])
    if decision["action"] in ("promote", "force_promote"):
        registry.promote(
            candidate.model_version,
            alias,
            reason=f"{decision['action']}: {reason}",
            actor=f"airflow:{dag_run_id}" if dag_run_id else None,
        )
    run_id = _record(
        decision["action"], alias, candidate.model_version, previous, reason, decision["numbers"], dag_run_id
    )
    return {
        **decision,
        "alias": alias,
        "candidate_version": candidate.model_version,
        "previous_version": previous,
        "mlflow_run_id": run_id,
    }


def rollback(alias: str, reason: str, dag_run_id: str | None) -> dict[str, Any]:
    """Move the alias back to its previous holder and record it."""
    registry = runtime.registry()
    move = registry.rollback(alias, reason=reason, actor=f"airflow:{dag_run_id}" if dag_run_id else None)
    run_id = _record("rollback", alias, move.to_version, move.from_version, reason, {}, dag_run_id)
    return {
        "action": "rollback",
        "alias": alias,
        "from_version": move.from_version,
        "to_version": move.to_version,
        "mlflow_run_id": run_id,
    }
