"""``python -m kronos_tasks.pipeline.run_dag DAG_ID LOGICAL_DATE [--conf JSON]``: one in-process run via dag.test().

Exits 0 when the run succeeds, 1 otherwise. Meant to run with the environment of
``airflow_env.airflow_environment`` (Airflow's configuration is read at import).
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import sys
from datetime import datetime
from typing import NoReturn

from kronos_tasks.pipeline.airflow_env import dags_folder
from kronos_tasks.pipeline.runtime import relax_gc


def load_dag(dag_id: str):
    """The DAG ``dag_id`` from its file in the dags folder (``dags/<dag_id>.py``)."""
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(dags_folder() / f"{dag_id}.py"))
    if dag_id not in bag.dags:
        raise SystemExit(f"no DAG {dag_id} in {dags_folder()}: {bag.import_errors or 'not defined there'}")
    return bag.dags[dag_id]


def record_real_start(run) -> None:
    """dag.test() stores the logical date as the run's start, so a run for a past date would show a duration
    of months in the UI; store when it really started (its first task) instead."""
    from airflow.models.dagrun import DagRun
    from airflow.utils.session import create_session

    with create_session() as session:
        stored = session.get(DagRun, run.id)
        starts = [ti.start_date for ti in stored.get_task_instances(session=session) if ti.start_date]
        if starts:
            stored.start_date = min(starts)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("dag_id")
    parser.add_argument("logical_date", help="ISO date-time with offset")
    parser.add_argument("--conf", default="{}")
    args = parser.parse_args(argv)
    relax_gc()  # before Airflow's imports: every task of the run shares this process's heap
    dag = load_dag(args.dag_id)
    run = dag.test(logical_date=datetime.fromisoformat(args.logical_date), run_conf=json.loads(args.conf))
    state = str(getattr(run, "state", "unknown"))
    if run is not None:
        record_real_start(run)
    print(f"dag run {args.dag_id} {args.logical_date}: {state}", file=sys.stderr)
    return 0 if state.endswith("success") else 1


def exit_now(code: int) -> NoReturn:
    """End the process with ``code`` after running its exit handlers and flushing its output, without the
    interpreter's teardown of its heap: after a run that loaded torch, pandas and Airflow's execution API that
    teardown takes 2-3 s (a tenth of a 1,000-symbol daily run on 2 cores) and frees nothing the operating
    system would not."""
    atexit._run_exitfuncs()  # what a normal exit runs first: Airflow's ORM disposal, logging's shutdown
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    exit_now(main())
