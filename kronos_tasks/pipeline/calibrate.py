"""Fitting, storing and reporting calibrations of a model version from its walk-forward backtest.

The rollout gate and ``kronos-flow calibrate`` call ``fit_and_store`` on the rows of a backtest over the
latest origins (windows the version was not trained on when it came from ``kronos-flow finetune``: their
origins lie in the held-back tail or later). Per interval it scores a walk-forward holdout (fit on the first
half of the origins, evaluated on the second) and stores the calibration fitted on all of them, in the
database and as an MLflow run of ``kronos-registry`` with ``calibration.json``; the version carries the
checksum as the tag ``kronos.calibration.<interval>``.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import pandas as pd

from kronos_tasks.evaluation.calibration import fit, holdout
from kronos_tasks.evaluation.metrics import json_safe
from kronos_tasks.registry.pinned import PinnedPair
from kronos_tasks.storage import store_calibration

from . import runtime


def holdouts(rows: pd.DataFrame, levels, label: str) -> tuple[dict[str, Any], dict]:
    """Per interval of backtest ``rows``: the walk-forward holdout report, and the calibration fitted on all of
    its origins -> (report, {interval: Calibration})."""
    report: dict[str, Any] = {}
    fitted = {}
    for interval, part in rows.groupby("interval"):
        try:
            checked = holdout(part, list(levels), label, str(interval))
        except ValueError as exc:
            report[str(interval)] = {"skipped": str(exc)}
            continue
        calibration = fit(part, list(levels), label, str(interval))
        fitted[str(interval)] = calibration
        report[str(interval)] = {"sha256": calibration.sha256, "holdout": checked, "fitted_on": calibration.fitted_on}
    return report, fitted


def fit_and_store(rows: pd.DataFrame, levels, pair: PinnedPair) -> dict[str, Any]:
    """``holdouts`` of a version's backtest, with each calibration stored (database, MLflow, version tag)."""
    from kronos_tasks.registry.mlflow_setup import ensure_experiment
    from kronos_tasks.registry.registry import REGISTRY_EXPERIMENT
    from kronos_tasks.registry.runs import record_run

    registry = runtime.registry()
    label = f"{pair.model_name} v{pair.model_version}"
    report, fitted = holdouts(rows, levels, label)
    if not fitted:
        return json_safe(report)
    experiment = ensure_experiment(registry.client, REGISTRY_EXPERIMENT, runtime.settings().mlflow_artifact_root)
    with tempfile.TemporaryDirectory() as folder:
        for interval, calibration in fitted.items():
            Path(folder, f"calibration_{interval}.json").write_text(json.dumps(calibration.describe(), indent=2))
        Path(folder, "holdout.json").write_text(json.dumps(json_safe(report), indent=2))
        metrics = {}
        for interval, entry in report.items():
            if "holdout" in entry:
                metrics[f"{interval}_raw_coverage"] = entry["holdout"]["raw"]["coverage"]
                metrics[f"{interval}_calibrated_coverage"] = entry["holdout"]["calibrated"]["coverage"]
                metrics[f"{interval}_histvol_coverage"] = entry["holdout"]["histvol"]["coverage"]
        run_id = record_run(
            registry.client,
            experiment,
            f"calibrate {label} ({', '.join(fitted)})",
            tags={"action": "calibrate", "model": f"{pair.model_name}/{pair.model_version}"},
            params={f"{i}_sha256": c.sha256 for i, c in fitted.items()}
            | {f"{i}_origins": c.fitted_on["origins"] for i, c in fitted.items()},
            metrics=metrics,
            artifacts=Path(folder),
        )
    engine = runtime.engine()
    for interval, calibration in fitted.items():
        store_calibration(
            engine, calibration.describe(), calibration.sha256, pair.model_name, pair.model_version, run_id
        )
        registry.client.set_model_version_tag(
            pair.model_name, pair.model_version, f"kronos.calibration.{interval}", calibration.sha256
        )
        report[interval]["mlflow_run_id"] = run_id
    return json_safe(report)


def render(report: dict[str, Any]) -> str:
    """The holdout report as text: per interval, raw, calibrated and baseline bands and the P(up) Brier."""
    lines = []
    for interval, entry in report.items():
        if "skipped" in entry:
            lines.append(f"{interval}: no calibration ({entry['skipped']})")
            continue
        checked = entry["holdout"]
        nominal = checked["raw"]["nominal"]
        lines.append(
            f"{interval}: fitted on {checked['fit_origins']} origins up to {checked['cut'][:16]}, evaluated on the "
            f"{checked['evaluated_origins']} after ({checked['scope']})"
        )
        for name in ("raw", "calibrated", "histvol"):
            band = checked[name]
            lines.append(
                f"  {name:<11} {nominal:.0%} band covers {band['coverage']:.3f} [{band['coverage_low']:.3f}, "
                f"{band['coverage_high']:.3f}]  pinball {band['pinball']:.5g}"
            )
        crps, brier = checked["crps"], checked["brier"]
        lines.append(
            f"  CRPS model {crps['model']:.5g}, historical volatility {crps['histvol']:.5g}, persistence "
            f"{crps['persistence']:.5g}; Brier of P(up) raw {brier['raw']:.4f}, calibrated {brier['calibrated']:.4f}"
        )
        if "mlflow_run_id" in entry:
            lines.append(
                f"  stored calibration {entry['sha256'][:16]} (fitted on all {entry['fitted_on']['origins']} origins; "
                f"MLflow run {entry['mlflow_run_id']})"
            )
    return "\n".join(lines)
