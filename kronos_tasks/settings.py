"""Every setting of kronos-flow, read from the environment in one place.

All variables carry the ``KRONOS_`` prefix except MLflow's own ``MLFLOW_TRACKING_URI`` and
``MLFLOW_REGISTRY_URI``. Unset variables fall back to the embedded defaults: everything under
``KRONOS_HOME`` (SQLite for forecasts and MLflow, a local artifact folder, the CPU).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, fields
from pathlib import Path
from urllib.parse import unquote

from kronos_tasks.errors import KronosFlowError

ENV_PREFIX = "KRONOS_"


@dataclass(frozen=True)
class Setting:
    env: str
    help: str
    default: str | None = None  # None: derived from KRONOS_HOME or another setting


# The documented variables (README "Configuration" lists the same); `Settings.from_env` reads these only.
VARIABLES: tuple[Setting, ...] = (
    Setting("KRONOS_HOME", "folder for all local state", "~/.kronos-flow"),
    Setting("KRONOS_DB_URL", "SQLAlchemy URL of the forecasts database (default: SQLite file under KRONOS_HOME)"),
    Setting("MLFLOW_TRACKING_URI", "MLflow tracking URI (default: SQLite store under KRONOS_HOME)"),
    Setting("MLFLOW_REGISTRY_URI", "MLflow model registry URI (default: the tracking URI)"),
    Setting(
        "KRONOS_MLFLOW_ARTIFACT_ROOT",
        "artifact location of new MLflow experiments (default: the MLflow server's artifact store; KRONOS_HOME/mlartifacts for a local store)",
    ),
    Setting("KRONOS_MLFLOW_EXPERIMENT", "MLflow experiment of the daily forecast runs", "kronos-daily-forecast"),
    Setting("KRONOS_MODEL_NAME", "registered model name of the predictor", "kronos-model"),
    Setting("KRONOS_TOKENIZER_NAME", "registered model name of the tokenizer", "kronos-tokenizer"),
    Setting("KRONOS_MODEL_ALIAS", "alias the daily forecast uses", "champion"),
    Setting("KRONOS_MODEL_CACHE", "download cache of registered weights (default: KRONOS_HOME/model-cache)"),
    Setting("KRONOS_DATA_DIR", "folder of CSV/Parquet bars the daily DAG ingests (default: the bundled samples)"),
    Setting("KRONOS_WATCHLIST", "watchlist file, YAML or JSON (default: the bundled sample watchlist)"),
    Setting("KRONOS_DEVICE", "torch device for forecasts: auto, cpu, cuda, cuda:1, ...", "auto"),
    Setting("KRONOS_SCHEDULE", "cron of the daily forecast; `none`: triggered runs only", "30 17 * * 1-5"),
    Setting("KRONOS_TIMEZONE", "timezone of the daily schedule", "America/New_York"),
    Setting("KRONOS_GPU_QUEUE", "Airflow queue of forecast tasks", "gpu"),
    Setting("KRONOS_GPU_POOL", "Airflow pool of forecast tasks", "gpu"),
    Setting("KRONOS_GPU_POOL_SLOTS", "slots of the forecast pool created by `kronos-flow init`", "1"),
    Setting("KRONOS_GPU_POD_TEMPLATE", "KubernetesExecutor pod template file of GPU tasks (empty: none)", ""),
    Setting("KRONOS_FORECAST_RETRY_DELAY", "seconds before a failed forecast task retries (then backing off)", "30"),
    Setting("KRONOS_BATCH_SIZE", "series the predictor decodes together (memory grows with it)", "32"),
    Setting(
        "KRONOS_FORECAST_SHARDS",
        "ingest and forecast tasks per daily run (default: KRONOS_GPU_POOL_SLOTS, at least 2)",
    ),
    Setting(
        "KRONOS_TORCH_THREADS",
        "torch threads per forecast task (default: the cores the task owns: its CPU affinity divided by "
        "AIRFLOW__CELERY__WORKER_CONCURRENCY)",
    ),
    Setting("KRONOS_MAX_FAILED_SHARE", "share of failed symbols above which a daily run fails", "0.2"),
)


@dataclass(frozen=True)
class Settings:
    home: Path
    db_url: str
    mlflow_tracking_uri: str
    mlflow_registry_uri: str
    mlflow_artifact_root: str | None  # None: the MLflow server chooses
    mlflow_experiment: str
    model_name: str
    tokenizer_name: str
    model_alias: str
    model_cache: Path
    data_dir: Path
    watchlist: Path
    device: str
    schedule: str | None
    timezone: str
    gpu_queue: str
    gpu_pool: str
    gpu_pool_slots: int
    gpu_pod_template: str
    forecast_retry_delay: int
    batch_size: int
    forecast_shards: int | None
    torch_threads: int | None
    max_failed_share: float

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> Settings:
        """Settings from ``environ`` (default ``os.environ``); errors name the variable and the bad value."""
        env = os.environ if environ is None else environ

        def get(name: str) -> str | None:
            value = env.get(name)
            if value is not None and value.strip() != "":
                return value.strip()
            return next(v.default for v in VARIABLES if v.env == name)

        home = Path(get("KRONOS_HOME")).expanduser()
        package = Path(__file__).resolve().parent
        tracking = get("MLFLOW_TRACKING_URI") or f"sqlite:///{home / 'mlflow.db'}"
        return cls(
            home=home,
            db_url=get("KRONOS_DB_URL") or f"sqlite:///{home / 'kronos.db'}",
            mlflow_tracking_uri=tracking,
            mlflow_registry_uri=get("MLFLOW_REGISTRY_URI") or tracking,
            # Against an MLflow server, unset means the server's own artifact store (its proxy): a local
            # file:// root would only exist on the machine that created the experiment.
            mlflow_artifact_root=get("KRONOS_MLFLOW_ARTIFACT_ROOT")
            or (None if tracking.startswith(("http://", "https://")) else (home / "mlartifacts").as_uri()),
            mlflow_experiment=get("KRONOS_MLFLOW_EXPERIMENT"),
            model_name=get("KRONOS_MODEL_NAME"),
            tokenizer_name=get("KRONOS_TOKENIZER_NAME"),
            model_alias=get("KRONOS_MODEL_ALIAS"),
            model_cache=Path(get("KRONOS_MODEL_CACHE") or home / "model-cache").expanduser(),
            data_dir=Path(get("KRONOS_DATA_DIR") or package / "sample_data").expanduser(),
            watchlist=Path(get("KRONOS_WATCHLIST") or package / "sample_data" / "watchlist.yaml").expanduser(),
            device=get("KRONOS_DEVICE"),
            schedule=None if get("KRONOS_SCHEDULE").lower() == "none" else get("KRONOS_SCHEDULE"),
            timezone=get("KRONOS_TIMEZONE"),
            gpu_queue=get("KRONOS_GPU_QUEUE"),
            gpu_pool=get("KRONOS_GPU_POOL"),
            gpu_pool_slots=_positive_int("KRONOS_GPU_POOL_SLOTS", get("KRONOS_GPU_POOL_SLOTS")),
            gpu_pod_template=get("KRONOS_GPU_POD_TEMPLATE") or "",
            forecast_retry_delay=_positive_int("KRONOS_FORECAST_RETRY_DELAY", get("KRONOS_FORECAST_RETRY_DELAY")),
            batch_size=_positive_int("KRONOS_BATCH_SIZE", get("KRONOS_BATCH_SIZE")),
            forecast_shards=_optional_positive_int("KRONOS_FORECAST_SHARDS", get("KRONOS_FORECAST_SHARDS")),
            torch_threads=_optional_positive_int("KRONOS_TORCH_THREADS", get("KRONOS_TORCH_THREADS")),
            max_failed_share=_share("KRONOS_MAX_FAILED_SHARE", get("KRONOS_MAX_FAILED_SHARE")),
        )

    def describe(self) -> dict[str, str]:
        """Every setting as text, with passwords in URLs replaced by ***, safe to log or print."""
        return {f.name: redact(str(getattr(self, f.name))) for f in fields(self)}


class SettingsError(KronosFlowError, ValueError):
    """A setting whose value cannot be used; the message names the variable."""


def _positive_int(name: str, value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise SettingsError(f"{name} must be a positive integer, got {value!r}.") from None
    if number < 1:
        raise SettingsError(f"{name} must be a positive integer, got {value!r}.")
    return number


def _optional_positive_int(name: str, value: str | None) -> int | None:
    return None if value is None or value.lower() == "auto" else _positive_int(name, value)


def _share(name: str, value: str) -> float:
    try:
        share = float(value)
    except ValueError:
        raise SettingsError(f"{name} must be a number between 0 and 1, got {value!r}.") from None
    if not 0 <= share <= 1:
        raise SettingsError(f"{name} must be a number between 0 and 1, got {value!r}.")
    return share


_SECRET_QUERY = re.compile(r"((?:password|passwd|pwd|secret|token|key)=)[^&]*", re.IGNORECASE)


# scheme://userinfo@rest, userinfo running to the last "@": passwords often hold unescaped "@", "/" or "#".
_USERINFO = re.compile(r"^(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)(?P<userinfo>.*)@(?P<rest>[^@]*)$", re.DOTALL)


def split_userinfo(url: str) -> tuple[str, str | None, str | None]:
    """(``url`` without its user:password@ part, user, password); user and password are None when absent.

    Everything up to the last ``@`` after the scheme is the user information, so a password with an
    unescaped ``@``, ``/``, ``?`` or ``#`` is never mistaken for the host (and never sent to DNS).
    """
    match = _USERINFO.match(url)
    if match is None:
        return url, None, None
    user, colon, password = match["userinfo"].partition(":")
    return match["scheme"] + match["rest"], unquote(user), (unquote(password) if colon else None)


def redact(text: str) -> str:
    """``text`` with the password of a URL (user:password@host) and secret query values replaced by ***."""
    match = _USERINFO.match(text)
    if match is not None:
        user, colon, _ = match["userinfo"].partition(":")
        text = f"{match['scheme']}{user}{':***' if colon else ''}@{match['rest']}"
    return _SECRET_QUERY.sub(r"\1***", text)


def load() -> Settings:
    return Settings.from_env()


def gpu_task_arguments(settings: Settings) -> dict:
    """Operator arguments that route a task to the GPU workers: queue and pool, and the pod template if set."""
    arguments = {"queue": settings.gpu_queue, "pool": settings.gpu_pool}
    if settings.gpu_pod_template:
        arguments["executor_config"] = {"pod_template_file": settings.gpu_pod_template}
    return arguments
