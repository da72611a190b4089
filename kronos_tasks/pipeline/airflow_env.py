"""Running the DAGs in-process with Airflow's own test runner, on the embedded defaults.

Airflow reads its configuration when it is first imported, so runs happen in a child process whose
environment points Airflow at ``KRONOS_HOME/airflow`` (unless ``AIRFLOW_HOME`` is set) and at this
repository's ``dags/`` folder.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from kronos_tasks.settings import Settings

DAGS_FOLDER = Path(__file__).resolve().parents[2] / "dags"


def airflow_environment(settings: Settings) -> dict[str, str]:
    """The environment of Airflow commands run for kronos-flow (the caller's own AIRFLOW_* settings win)."""
    env = dict(os.environ)
    home = Path(env.get("AIRFLOW_HOME") or settings.home / "airflow")
    home.mkdir(parents=True, exist_ok=True)
    env["AIRFLOW_HOME"] = str(home)
    env.setdefault("AIRFLOW__CORE__DAGS_FOLDER", str(dags_folder()))
    env.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
    env.setdefault("AIRFLOW__CORE__UNIT_TEST_MODE", "False")
    env.setdefault("KRONOS_HOME", str(settings.home))
    return env


def dags_folder() -> Path:
    if not DAGS_FOLDER.is_dir():
        raise FileNotFoundError(f"no dags/ folder at {DAGS_FOLDER}: run kronos-flow from a clone of the repository.")
    return DAGS_FOLDER


def airflow(args: list[str], env: dict[str, str], check: bool = True, capture: bool = False):
    """Run the ``airflow`` command of this environment."""
    command = [str(Path(sys.executable).with_name("airflow")), *args]
    return subprocess.run(command, env=env, check=check, text=True, capture_output=capture)


def migrate_metadata(env: dict[str, str]) -> None:
    airflow(["db", "migrate"], env, capture=True)


def ensure_pool(env: dict[str, str], name: str, slots: int) -> None:
    """Create (or resize) the pool the forecast tasks take their slots from."""
    airflow(["pools", "set", name, str(slots), "forecast tasks (kronos-flow)"], env, capture=True)


def test_dag(
    dag_id: str, logical_date: str, env: dict[str, str], conf: dict | None = None, timeout: float | None = None
) -> subprocess.CompletedProcess:
    """Run ``dag_id`` once for ``logical_date`` through ``dag.test()`` in a child process."""
    import json

    command = [sys.executable, "-m", "kronos_tasks.pipeline.run_dag", dag_id, logical_date]
    if conf:
        command += ["--conf", json.dumps(conf)]
    return subprocess.run(command, env=env, text=True, timeout=timeout)
