"""Screenshots of what a user audits, taken by headless Chromium: `make screenshots`.

Runs the demo in a fresh KRONOS_HOME (or uses the one given), starts `mlflow ui` on a free loopback
port, and saves into docs/screenshots/:

  run.png             the forecast run's page: name, description with version links and data windows,
                      datasets (one per symbol, digest = window hash), resolved parameters
  model_version.png   kronos-model v1: source model link (the logged model)
  logged_model.png    that logged model: its registered versions and the runs that used it
  registered_model.png  kronos-model: aliases and the alias history table
  fan_chart.png       the run's fan chart artifact, as the artifact viewer shows it
  horizons.png        (when an evaluation run exists) the evaluation's per-horizon plot

Needs Chromium (Debian's `chromium` package) and the `screenshots` extra (playwright, which drives
the system Chromium: nothing is downloaded).
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

OUT = Path(__file__).resolve().parent / "screenshots"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(url: str, seconds: float = 90) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except Exception:
            time.sleep(0.5)
    raise SystemExit(f"{url} did not answer within {seconds:.0f} s")


def ids(home: Path) -> dict[str, str]:
    """The demo run's MLflow ids and the model version's logged model, from the home's stores."""
    os.environ["KRONOS_HOME"] = str(home)
    from mlflow import MlflowClient

    from kronos_tasks.settings import load
    from kronos_tasks.storage import list_runs, make_engine

    settings = load()
    (run,) = list_runs(make_engine(settings.db_url), limit=1)
    client = MlflowClient(settings.mlflow_tracking_uri, settings.mlflow_registry_uri)
    mlflow_run = client.get_run(run.mlflow_run_id)
    version = client.get_model_version(run.model_name, run.model_version)
    logged = version.source.removeprefix("models:/")
    evaluation = client.get_experiment_by_name("kronos-forecast-evaluation")
    evaluations = client.search_runs([evaluation.experiment_id]) if evaluation else []
    return {
        "experiment": mlflow_run.info.experiment_id,
        "run": mlflow_run.info.run_id,
        "model": run.model_name,
        "version": run.model_version,
        "logged_model": logged,
        "logged_experiment": client.get_logged_model(logged).experiment_id,
        "evaluation": f"{evaluations[0].info.experiment_id}/runs/{evaluations[0].info.run_id}" if evaluations else "",
    }


def shoot(base: str, found: dict[str, str]) -> list[Path]:
    from playwright.sync_api import sync_playwright

    OUT.mkdir(exist_ok=True)
    run = f"experiments/{found['experiment']}/runs/{found['run']}"
    # (file, route, text to wait for, artifact to open)
    pages = [
        ("run", run, "Datasets", None),
        ("model_version", f"models/{found['model']}/versions/{found['version']}", "Source model", None),
        ("logged_model", f"experiments/{found['logged_experiment']}/models/{found['logged_model']}", "Runs", None),
        ("registered_model", f"models/{found['model']}", "newest first", None),
        ("fan_chart", f"{run}/artifacts", "fan_chart.png", "fan_chart.png"),
    ]
    if found["evaluation"]:
        pages.append(("horizons", f"experiments/{found['evaluation']}/artifacts", "horizons.png", "horizons.png"))
    written = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        page = browser.new_page(viewport={"width": 1440, "height": 1400})
        page.goto(f"{base}/")
        page.wait_for_timeout(3000)
        # MLflow 3 opens in its GenAI view; the classic model-training view shows runs, models and registry.
        page.get_by_text("Model training", exact=True).first.click()
        page.wait_for_timeout(800)
        for name, route, ready, artifact in pages:
            page.goto(f"{base}/#/{route}")
            page.get_by_text(ready).first.wait_for(timeout=60_000)
            page.wait_for_timeout(1500)
            assistant = page.get_by_role("button", name="Close")
            if assistant.count():
                assistant.first.click()
                page.wait_for_timeout(300)
            if name == "run" and page.get_by_text("Show more").count():
                page.get_by_text("Show more").first.click()  # the whole description: the data windows table
                page.wait_for_timeout(500)
            if name == "logged_model":
                page.get_by_text(found["model"]).first.wait_for(timeout=60_000)
                page.wait_for_timeout(2000)
            if artifact:
                page.get_by_text(artifact, exact=True).first.click()
                page.wait_for_timeout(2500)
            path = OUT / f"{name}.png"
            page.screenshot(path=str(path), full_page=True)
            written.append(path)
        browser.close()
    return written


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", help="a KRONOS_HOME where the demo ran (default: run it in a new one)")
    args = parser.parse_args()
    cli = str(Path(sys.executable).with_name("kronos-flow"))
    with tempfile.TemporaryDirectory() as scratch:
        home = Path(args.home) if args.home else Path(scratch) / "home"
        env = {**os.environ, "KRONOS_HOME": str(home), "KRONOS_DEVICE": "cpu"}
        if not args.home:
            subprocess.run([cli, "demo"], env=env, check=True)
            evaluation = ["kronos_forecast_evaluation", "2024-08-30T07:00:00-04:00", "--conf", '{"lookback_days": 10}']
            subprocess.run(
                [sys.executable, "-m", "kronos_tasks.pipeline.run_dag", *evaluation],
                env={**env, "AIRFLOW_HOME": str(home / "airflow"), "AIRFLOW__CORE__LOAD_EXAMPLES": "False"},
                check=True,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        found = ids(home)
        port = free_port()
        tracking = f"sqlite:///{home / 'mlflow.db'}"
        server = subprocess.Popen(
            [str(Path(sys.executable).with_name("mlflow")), "ui", "--backend-store-uri", tracking, "--port", str(port)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        try:
            base = f"http://127.0.0.1:{port}"
            wait_for(f"{base}/health")
            for path in shoot(base, found):
                print(f"wrote {path.relative_to(OUT.parent.parent)}")
        finally:
            os.killpg(server.pid, 15)
            server.wait(timeout=30)
    return 0


if __name__ == "__main__":
    sys.exit(main())
