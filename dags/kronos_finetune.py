"""Fine-tune Kronos on the stored bars and hand the result to the rollout gate.

train (GPU queue and pool: data from the bars table, split by time; tokenizer if asked, then the
predictor; curves in the MLflow experiment ``kronos-finetune``; backtest of the base and the result on
the held-back tail; registered as new versions with lineage under ``alias``) -> trigger
``kronos_model_rollout`` for the new version, whose gate decides whether it becomes the champion. A
retry resumes training from its last checkpoint. Task bodies live in ``kronos_tasks.pipeline.finetune``.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from airflow.providers.standard.operators.trigger_dagrun import TriggerDagRunOperator
from airflow.sdk import Param, dag, get_current_context, task

from kronos_tasks.settings import gpu_task_arguments, load
from kronos_tasks.training.config import TrainConfig

SETTINGS = load()
DEFAULTS = TrainConfig()


@dag(
    dag_id="kronos_finetune",
    schedule=None,
    start_date=datetime(1970, 1, 1, tzinfo=timezone.utc),
    catchup=False,
    max_active_runs=1,
    default_args={"owner": "kronos-flow", "retries": 0},
    tags=["kronos", "training"],
    doc_md=__doc__,
    params={
        "symbols": Param(
            None,
            type=["null", "array"],
            items={"type": "string"},
            description="symbol[:interval] to train on (empty: the watchlist)",
        ),
        "base": Param(
            SETTINGS.model_alias, type=["null", "string"], description="registered alias or version to start from"
        ),
        "preset": Param(None, type=["null", "string"], description="start from random weights of this preset instead"),
        "preset_seed": Param(0, type="integer", minimum=0),
        "max_context": Param(512, type="integer", minimum=1, description="with preset"),
        "train_tokenizer": Param(False, type="boolean", description="train the tokenizer too (always with preset)"),
        "minutes": Param(60, type=["null", "number"], exclusiveMinimum=0, description="wall-clock budget"),
        "epochs": Param(DEFAULTS.epochs, type="integer", minimum=1),
        "lookback": Param(DEFAULTS.lookback, type="integer", minimum=1),
        "pred_len": Param(DEFAULTS.pred_len, type="integer", minimum=1),
        "batch_size": Param(DEFAULTS.batch_size, type="integer", minimum=1),
        "lr": Param(
            None, type=["null", "number"], description="peak predictor learning rate (empty: 4e-5, 1e-3 from preset)"
        ),
        "tokenizer_lr": Param(None, type=["null", "number"]),
        "eval_every": Param(DEFAULTS.eval_every, type="integer", minimum=1),
        "val_share": Param(DEFAULTS.val_share, type="number", exclusiveMinimum=0, exclusiveMaximum=1),
        "seed": Param(DEFAULTS.seed, type="integer", minimum=0),
        "processes": Param(
            1, type="integer", minimum=1, description="data-parallel training processes on the worker, one per GPU"
        ),
        "backtest_origins": Param(20, type="integer", minimum=0),
        "alias": Param("challenger", type=["null", "string"], description="alias of the new version"),
        "gate_alias": Param(SETTINGS.model_alias, type="string", description="the alias the rollout gate may move"),
    },
)
def kronos_finetune():
    @task(
        **gpu_task_arguments(SETTINGS),
        retries=1,
        retry_delay=timedelta(minutes=1),
        execution_timeout=timedelta(hours=12),
    )
    def train() -> dict:
        from kronos_tasks.pipeline import finetune

        context = get_current_context()
        return finetune.dag_task(dict(context["params"]), context["run_id"])

    trained = train()
    trained >> TriggerDagRunOperator(
        task_id="hand_to_rollout",
        trigger_dag_id="kronos_model_rollout",
        conf={"candidate": "{{ ti.xcom_pull(task_ids='train')['model_version'] }}", "alias": "{{ params.gate_alias }}"},
    )


kronos_finetune()
