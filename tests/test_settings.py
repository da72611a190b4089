"""The settings module: defaults under KRONOS_HOME, validation, masking of secrets."""

from __future__ import annotations

from pathlib import Path

import pytest

from kronos_tasks.settings import Settings, SettingsError, gpu_task_arguments, redact


def test_embedded_defaults_live_under_kronos_home(tmp_path):
    settings = Settings.from_env({"KRONOS_HOME": str(tmp_path)})
    assert settings.db_url == f"sqlite:///{tmp_path / 'kronos.db'}"
    assert settings.mlflow_tracking_uri == f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert settings.mlflow_registry_uri == settings.mlflow_tracking_uri
    assert settings.mlflow_artifact_root == (tmp_path / "mlartifacts").as_uri()
    assert settings.model_cache == tmp_path / "model-cache"
    assert settings.watchlist.name == "watchlist.yaml" and settings.watchlist.is_file()
    assert (settings.gpu_queue, settings.gpu_pool, settings.device) == ("gpu", "gpu", "auto")
    served = Settings.from_env({"KRONOS_HOME": str(tmp_path), "MLFLOW_TRACKING_URI": "http://mlflow:5000"})
    assert served.mlflow_artifact_root is None  # the server's artifact store, not a path on this machine
    home = Settings.from_env({})
    assert home.home == Path("~/.kronos-flow").expanduser()


def test_values_are_validated_with_the_variable_named():
    with pytest.raises(SettingsError, match="KRONOS_BATCH_SIZE must be a positive integer, got '0'"):
        Settings.from_env({"KRONOS_BATCH_SIZE": "0"})
    with pytest.raises(SettingsError, match="KRONOS_MAX_FAILED_SHARE must be a number between 0 and 1"):
        Settings.from_env({"KRONOS_MAX_FAILED_SHARE": "1.5"})


def test_schedule_none_means_triggered_runs_only():
    assert Settings.from_env({"KRONOS_SCHEDULE": "None"}).schedule is None
    assert Settings.from_env({}).schedule == "30 17 * * 1-5"


def test_passwords_never_reach_descriptions():
    url = "postgresql+psycopg://kronos:s3cr3t@db:5432/kronos"
    assert redact(url) == "postgresql+psycopg://kronos:***@db:5432/kronos"
    assert redact("https://host/x?token=abc&user=me") == "https://host/x?token=***&user=me"
    described = Settings.from_env({"KRONOS_DB_URL": url, "MLFLOW_TRACKING_URI": "http://u:pw@mlflow:5000"}).describe()
    assert "s3cr3t" not in str(described) and ":pw@" not in str(described)


def test_gpu_tasks_get_queue_pool_and_optional_pod_template():
    settings = Settings.from_env({"KRONOS_GPU_QUEUE": "cuda", "KRONOS_GPU_POOL": "gpus"})
    assert gpu_task_arguments(settings) == {"queue": "cuda", "pool": "gpus"}
    with_pod = Settings.from_env({"KRONOS_GPU_POD_TEMPLATE": "/opt/t.yaml"})
    assert gpu_task_arguments(with_pod)["executor_config"] == {"pod_template_file": "/opt/t.yaml"}
