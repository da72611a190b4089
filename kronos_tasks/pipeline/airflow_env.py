"""Running the DAGs in-process with Airflow's own test runner, on the embedded defaults.

Airflow reads its configuration when it is first imported, so runs happen in a child process whose
environment points Airflow at ``KRONOS_HOME/airflow`` (unless ``AIRFLOW_HOME`` is set) and at this
repository's ``dags/`` folder.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Callable
from datetime import datetime
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


TASK_EVENT = re.compile(r"^(\S+) .*\[DAG TEST\] (starting|end task) task_id=(\S+) map_index=(-?\d+)")


def task_progress(line: str, started: dict[tuple[str, int], datetime]) -> str | None:
    """A short line when ``line`` (dag.test's log) ends a task: ``forecast[0] 5.7 s``; None for other lines."""
    match = TASK_EVENT.match(line)
    if not match:
        return None
    stamp, event, task, index = match.group(1), match.group(2), match.group(3), int(match.group(4))
    at = datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    key = (task, index)
    if event == "starting":
        started[key] = at
        return None
    name = task if index < 0 else f"{task}[{index}]"
    seconds = (at - started.pop(key, at)).total_seconds()
    return f"{name} {seconds:.1f} s"


def test_dag(
    dag_id: str,
    logical_date: str,
    env: dict[str, str],
    conf: dict | None = None,
    timeout: float | None = None,
    log_path: Path | None = None,
    progress: Callable[[str], None] | None = None,
) -> subprocess.CompletedProcess:
    """Run ``dag_id`` once for ``logical_date`` through ``dag.test()`` in a child process.

    With ``log_path`` the child's output (Airflow's whole log) goes to that file instead of the terminal,
    and ``progress`` gets a short line as each task ends.
    """
    import json

    command = [sys.executable, "-m", "kronos_tasks.pipeline.run_dag", dag_id, logical_date]
    if conf:
        command += ["--conf", json.dumps(conf)]
    if log_path is None:
        return subprocess.run(command, env=env, text=True, timeout=timeout)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    started: dict[tuple[str, int], datetime] = {}
    with (
        log_path.open("w") as log,
        subprocess.Popen(command, env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT) as child,
    ):
        for line in child.stdout:
            log.write(line)
            done = task_progress(line, started)
            if done and progress:
                progress(done)
        child.wait(timeout=timeout)
    return subprocess.CompletedProcess(command, child.returncode)
