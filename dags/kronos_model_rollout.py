"""Roll a model version out behind a gate, or roll the alias back one step.

Triggered by hand with a candidate version: verify it (checksums, tokenizer, smoke forecast) -> backtest it
and the current holder of the alias on the same recent windows with the same seeds -> promote only if it
passes the gate (skill vs persistence, calibration, not worse than the champion) or ``force`` is set. With
``rollback`` the alias moves back to its previous holder instead. Every decision is recorded in the
database and in MLflow. Task bodies live in ``kronos_tasks.pipeline.rollout``.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from airflow.sdk import Param, dag, get_current_context, task

from kronos_tasks.pipeline.payloads import PinnedPair
from kronos_tasks.settings import gpu_task_arguments, load

SETTINGS = load()
BACKTEST_TASK = {
    **gpu_task_arguments(SETTINGS),
    "retries": 1,
    "execution_timeout": timedelta(hours=2),
}


@dag(
    dag_id="kronos_model_rollout",
    schedule=None,
    start_date=datetime(1970, 1, 1, tzinfo=timezone.utc),
    catchup=False,
    max_active_runs=1,
    default_args={"owner": "kronos-flow", "retries": 0},
    tags=["kronos", "registry"],
    doc_md=__doc__,
    params={
        "candidate": Param(None, type=["null", "string"], description="model version to roll out"),
        "alias": Param(SETTINGS.model_alias, type="string"),
        "rollback": Param(False, type="boolean", description="move the alias back to its previous holder"),
        "force": Param(False, type="boolean", description="promote even if the gate refuses (recorded)"),
        "min_skill": Param(0.0, type="number", description="skill vs persistence (MAE of close) to reach"),
        "max_brier": Param(0.25, type="number", minimum=0, maximum=1, description="Brier of P(close up) not to exceed"),
        "tolerance": Param(0.02, type="number", minimum=0, description="allowed shortfall against the champion"),
        "coverage_tolerance": Param(
            0.05,
            type="number",
            minimum=0,
            maximum=1,
            description="largest gap between the calibrated band's coverage on held-back origins and its nominal share",
        ),
        "origins": Param(50, type="integer", minimum=1, description="backtest origins per symbol"),
        "stride": Param(1, type="integer", minimum=1),
        "seed": Param(0, type="integer", minimum=0),
        "watchlist": Param(None, type=["null", "array"], items={"type": "object"}),
        "forecast": Param(
            {"pred_len": 12, "sample_count": 16},
            type="object",
            description="forecast parameters of the backtest (see the daily DAG)",
        ),
    },
)
def kronos_model_rollout():
    @task.branch
    def choose() -> str:
        from kronos_tasks.pipeline import rollout

        params = get_current_context()["params"]
        return rollout.choose(params["rollback"], params["candidate"])

    @task
    def rollback() -> dict:
        from kronos_tasks.pipeline import rollout

        context = get_current_context()
        return rollout.rollback(
            context["params"]["alias"], "rollback requested through kronos_model_rollout", context["run_id"]
        )

    @task
    def verify() -> PinnedPair:
        from kronos_tasks.pipeline import rollout

        params = get_current_context()["params"]
        return rollout.verify(str(params["candidate"]), params["watchlist"], params["forecast"])

    @task
    def champion() -> PinnedPair | None:
        from kronos_tasks.pipeline import rollout

        return rollout.champion(get_current_context()["params"]["alias"])

    @task(**BACKTEST_TASK)
    def backtest(pair: PinnedPair | None) -> dict | None:
        from kronos_tasks.pipeline import rollout

        params = get_current_context()["params"]
        return rollout.backtest(
            pair, params["watchlist"], params["forecast"], params["origins"], params["stride"], params["seed"]
        )

    @task
    def decide_and_apply(candidate: PinnedPair, candidate_scores: dict, champion_scores: dict | None) -> dict:
        from kronos_tasks.pipeline import rollout

        context = get_current_context()
        params = context["params"]
        gate = rollout.Gate(params["min_skill"], params["max_brier"], params["tolerance"], params["coverage_tolerance"])
        decision = rollout.decide(candidate_scores, champion_scores, gate, params["force"])
        return rollout.apply(decision, candidate, params["alias"], context["run_id"])

    branch = choose()
    candidate = verify()
    current = champion()
    branch >> [rollback(), candidate]
    candidate >> current
    decide_and_apply(
        candidate,
        backtest.override(task_id="backtest_candidate")(candidate),
        backtest.override(task_id="backtest_champion")(current),
    )


kronos_model_rollout()
