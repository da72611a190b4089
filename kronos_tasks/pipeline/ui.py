"""``kronos-flow ui``: the MLflow and Airflow UIs of this KRONOS_HOME on loopback, stopped together by Ctrl+C."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from kronos_tasks.settings import load, redact

from .airflow_env import airflow_environment, migrate_metadata

HOST = "127.0.0.1"
PASSWORD_FILE = "simple_auth_manager_passwords.json.generated"  # where Airflow standalone writes the admin's


def ui_environment(settings, airflow_port: int) -> dict[str, str]:
    """Airflow's environment for the UI: this project's DAGs, no examples, the API server on loopback, and the
    virtual environment's commands first on PATH (standalone starts its components by name)."""
    env = airflow_environment(settings)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
    env["AIRFLOW__API__HOST"] = HOST
    env["AIRFLOW__API__PORT"] = str(airflow_port)
    env["AIRFLOW__API__BASE_URL"] = f"http://{HOST}:{airflow_port}"
    env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"] = f"http://{HOST}:{airflow_port}/execution/"
    return env


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status < 500
    except Exception:
        return False


def _start(command: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    log.parent.mkdir(parents=True, exist_ok=True)
    handle = log.open("ab")
    # A session of its own: Ctrl+C reaches this process, which then stops each UI with all its children.
    return subprocess.Popen(command, env=env, stdout=handle, stderr=subprocess.STDOUT, start_new_session=True)


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is not None:
        return
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def run_ui(mlflow_port: int, airflow_port: int | None) -> int:
    """Start the UIs, print where they are and how to log in, wait for Ctrl+C (or a UI dying), stop both."""
    settings = load()
    logs = settings.home / "logs"
    processes: dict[str, subprocess.Popen] = {}
    bin_dir = Path(sys.executable).parent
    tracking = settings.mlflow_tracking_uri
    stop = {"now": False}
    signal.signal(signal.SIGTERM, lambda *_: stop.update(now=True))
    try:
        if tracking.startswith(("http://", "https://")):
            print(f"MLflow   {redact(tracking)}   (the configured server; nothing to start)")
        else:
            processes["MLflow"] = _start(
                [
                    str(bin_dir / "mlflow"),
                    "ui",
                    "--backend-store-uri",
                    tracking,
                    "--host",
                    HOST,
                    "--port",
                    str(mlflow_port),
                ],
                dict(os.environ),
                logs / "mlflow-ui.log",
            )
        if airflow_port is not None:
            env = ui_environment(settings, airflow_port)
            migrate_metadata(env)
            processes["Airflow"] = _start(
                [str(bin_dir / "airflow"), "standalone"], env, logs / "airflow-standalone.log"
            )
        urls = {"MLflow": f"http://{HOST}:{mlflow_port}", "Airflow": f"http://{HOST}:{airflow_port}"}
        waiting = dict.fromkeys(processes, True)
        deadline, announced = time.monotonic() + 180, False
        print(f"starting {' and '.join(processes) or 'nothing'} (logs in {logs}) ...", flush=True)
        while not stop["now"]:
            for name, process in processes.items():
                if process.poll() is not None:
                    print(f"{name} stopped (exit status {process.returncode}); see {logs}", file=sys.stderr)
                    return 1
                if waiting[name] and _answers(
                    urls[name] + ("/api/v2/monitor/health" if name == "Airflow" else "/health")
                ):
                    waiting[name] = False
                    print(f"{name:<8} {urls[name]}", flush=True)
                    if name == "Airflow":
                        print(
                            f"         log in as admin; the password is in {Path(env['AIRFLOW_HOME']) / PASSWORD_FILE}",
                            flush=True,
                        )
            if any(waiting.values()) and time.monotonic() > deadline:
                late = ", ".join(n for n, w in waiting.items() if w)
                print(f"{late} did not answer within 3 minutes; see {logs}", file=sys.stderr)
                return 1
            if processes and not any(waiting.values()) and not announced:
                print("Ctrl+C stops them.", flush=True)
                announced = True
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        for process in processes.values():
            _stop(process)
    print("stopped.")
    return 0
