"""MLflow clients and experiments configured from the settings, with errors that say what to do."""

from __future__ import annotations

import base64
import urllib.error
import urllib.request

import mlflow
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from kronos_tasks.settings import Settings, redact, split_userinfo

from .pinned import RegistryError  # noqa: F401  (raised here; defined where no MLflow is imported)


def check_reachable(uri: str, timeout: float = 5.0) -> None:
    """For an http(s) tracking URI, fail fast with a clear message when no MLflow server answers."""
    if not uri.startswith(("http://", "https://")):
        return
    bare, user, password = split_userinfo(uri)  # credentials go in a header, never into the host name
    request = urllib.request.Request(f"{bare.rstrip('/')}/health")
    if user is not None:
        token = base64.b64encode(f"{user}:{password or ''}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            if response.status == 200:
                return
            problem = f"HTTP {response.status}"
    except (urllib.error.URLError, OSError) as exc:
        problem = str(getattr(exc, "reason", exc))
    raise RegistryError(
        f"cannot reach the MLflow server at {redact(uri)} ({problem}): start it (mlflow server ...) or point "
        "MLFLOW_TRACKING_URI at a running one; unset, kronos-flow uses a local SQLite store."
    )


def client(settings: Settings) -> MlflowClient:
    """An MLflow client for the configured tracking and registry URIs (checked to be reachable)."""
    check_reachable(settings.mlflow_tracking_uri)
    if settings.mlflow_registry_uri != settings.mlflow_tracking_uri:
        check_reachable(settings.mlflow_registry_uri)
    if settings.mlflow_tracking_uri.startswith("sqlite:///"):
        settings.home.mkdir(parents=True, exist_ok=True)
    # MLflow's SQL registry resolves a ``models:/<logged model id>`` source with the process's default
    # tracking URI, not the client's: both point at the configured store.
    mlflow.set_tracking_uri(settings.mlflow_tracking_uri)
    mlflow.set_registry_uri(settings.mlflow_registry_uri)
    return MlflowClient(tracking_uri=settings.mlflow_tracking_uri, registry_uri=settings.mlflow_registry_uri)


EXPERIMENT_TAGS = {"mlflow.experimentKind": "custom_model_development"}


def ensure_experiment(mlflow_client: MlflowClient, name: str, artifact_root: str | None) -> str:
    """The id of experiment ``name``, created with its artifacts under ``artifact_root``/``name`` if new
    (``artifact_root`` None: where the tracking server puts them)."""
    try:
        experiment = mlflow_client.get_experiment_by_name(name)
        if experiment is not None:
            return experiment.experiment_id
        location = f"{artifact_root.rstrip('/')}/{name}" if artifact_root else None
        # Without this tag MLflow 3's UI opens the experiment as a GenAI one and hides its runs' metrics.
        return mlflow_client.create_experiment(name, artifact_location=location, tags=EXPERIMENT_TAGS)
    except MlflowException as exc:
        # Two processes creating the same experiment at once: the loser finds the winner's.
        experiment = mlflow_client.get_experiment_by_name(name)
        if experiment is not None:
            return experiment.experiment_id
        raise RegistryError(f"cannot create MLflow experiment {name!r}: {exc.message}") from exc
