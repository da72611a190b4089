"""The one way kronos-flow writes an MLflow run: prefixed tags, bounded params, finite metrics, artifacts.

Forecast runs, evaluation runs, rollout decisions, registrations and alias moves all go through
``start_run`` and ``finish_run`` (or ``record_run``, both at once), so every run reads the same way in
the MLflow UI and the rules below hold everywhere.
"""

from __future__ import annotations

import math
import numbers
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag
from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH, MAX_PARAMS_TAGS_PER_BATCH, MAX_TAG_VAL_LENGTH

TAG_PREFIX = "kronos."


def tag_key(name: str) -> str:
    """The MLflow tag key of a kronos-flow tag (``run_id`` -> ``kronos.run_id``); MLflow's own tags
    (``mlflow.note.content``, the run's description) keep their names."""
    return name if name.startswith((TAG_PREFIX, "mlflow.")) else TAG_PREFIX + name


def _tags(tags: Mapping[str, Any]) -> dict[str, str]:
    return {tag_key(k): str(v)[:MAX_TAG_VAL_LENGTH] for k, v in tags.items() if v is not None}


def _search_filter(tags: Mapping[str, str]) -> str:
    for value in tags.values():
        if "'" in str(value) or '"' in str(value):
            raise ValueError(f"MLflow tag value {value!r} contains a quote and cannot be searched for.")
    return " and ".join(f"tags.`{tag_key(k)}` = '{v}'" for k, v in tags.items())


def start_run(
    client: MlflowClient,
    experiment_id: str,
    name: str,
    tags: Mapping[str, Any],
    replaces: Mapping[str, str] | None = None,
) -> str:
    """Create a run (tags prefixed with ``kronos.``) -> its id.

    With ``replaces``, earlier runs of the experiment carrying all of those tags are deleted first: a re-run
    of the same record replaces it, as its database rows are replaced.
    """
    if replaces:
        for old in client.search_runs([experiment_id], _search_filter(replaces)):
            client.delete_run(old.info.run_id)
    return client.create_run(experiment_id, run_name=name, tags=_tags(tags)).info.run_id


def _finite(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def finish_run(
    client: MlflowClient,
    run_id: str,
    params: Mapping[str, Any] | None = None,
    metrics: Mapping[str, Any] | None = None,
    artifacts: Path | None = None,
    failed: bool = False,
) -> None:
    """Log params (as text, cut to MLflow's limit), metrics (finite numbers only; None, NaN and inf are left
    out) and the files of ``artifacts``, then end the run as FINISHED (or FAILED)."""
    now = int(time.time() * 1000)
    logged_params = [Param(k, str(v)[:MAX_PARAM_VAL_LENGTH]) for k, v in (params or {}).items() if v is not None]
    logged_metrics = [Metric(k, float(v), now, 0) for k, v in (metrics or {}).items() if _finite(v)]
    for start in range(0, max(len(logged_params), len(logged_metrics)), MAX_PARAMS_TAGS_PER_BATCH):
        client.log_batch(
            run_id,
            metrics=logged_metrics[start : start + MAX_PARAMS_TAGS_PER_BATCH],
            params=logged_params[start : start + MAX_PARAMS_TAGS_PER_BATCH],
        )
    if artifacts is not None:
        client.log_artifacts(run_id, str(artifacts))
    client.set_terminated(run_id, "FAILED" if failed else "FINISHED")


def log_step_metrics(client: MlflowClient, run_id: str, step: int, metrics: Mapping[str, Any]) -> None:
    """Log ``metrics`` at ``step`` (finite numbers only): one point of each curve in the MLflow UI."""
    now = int(time.time() * 1000)
    logged = [Metric(k, float(v), now, step) for k, v in metrics.items() if _finite(v)]
    for start in range(0, len(logged), MAX_PARAMS_TAGS_PER_BATCH):
        client.log_batch(run_id, metrics=logged[start : start + MAX_PARAMS_TAGS_PER_BATCH])


def set_tags(client: MlflowClient, run_id: str, tags: Mapping[str, Any]) -> None:
    """Add kronos-prefixed tags to a run."""
    items = [RunTag(k, v) for k, v in _tags(tags).items()]
    for start in range(0, len(items), MAX_PARAMS_TAGS_PER_BATCH):
        client.log_batch(run_id, tags=items[start : start + MAX_PARAMS_TAGS_PER_BATCH])


def record_run(
    client: MlflowClient,
    experiment_id: str,
    name: str,
    *,
    tags: Mapping[str, Any],
    params: Mapping[str, Any] | None = None,
    metrics: Mapping[str, Any] | None = None,
    artifacts: Path | None = None,
    failed: bool = False,
    replaces: Mapping[str, str] | None = None,
) -> str:
    """``start_run`` and ``finish_run`` in one call -> the run's id."""
    run_id = start_run(client, experiment_id, name, tags, replaces)
    try:
        finish_run(client, run_id, params, metrics, artifacts, failed)
    except Exception:
        client.set_terminated(run_id, "FAILED")
        raise
    return run_id
