"""Initial schema: instruments, bars, forecast runs, forecasts (and their staging), symbol failures, scores,
model decisions.

Revision ID: 0001
Revises:
Create Date: 2026-11-24
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "instruments",
        sa.Column("symbol", sa.String(64), nullable=False),
        sa.Column("interval", sa.String(16), nullable=False),
        sa.Column("exchange", sa.String(32), nullable=True),
        sa.Column("timezone", sa.String(64), nullable=False),
        sa.Column("source", sa.Text(), nullable=True),
        sa.Column("updated_at", TS, nullable=False),
        sa.PrimaryKeyConstraint("symbol", "interval", name="pk_instruments"),
    )
    op.create_table(
        "bars",
        sa.Column("symbol", sa.String(64), nullable=False),
        sa.Column("interval", sa.String(16), nullable=False),
        sa.Column("ts", TS, nullable=False),
        *(sa.Column(name, sa.Float(), nullable=False) for name in ("open", "high", "low", "close", "volume", "amount")),
        sa.Column("ingested_at", TS, nullable=False),
        sa.PrimaryKeyConstraint("symbol", "interval", "ts", name="pk_bars"),
    )
    op.create_table(
        "forecast_runs",
        sa.Column("run_id", sa.String(250), nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("dag_id", sa.String(250), nullable=True),
        sa.Column("logical_date", TS, nullable=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("started_at", TS, nullable=False),
        sa.Column("finished_at", TS, nullable=True),
        sa.Column("lookback", sa.Integer(), nullable=False),
        sa.Column("pred_len", sa.Integer(), nullable=False),
        sa.Column("temperature", sa.Float(), nullable=False),
        sa.Column("top_k", sa.Integer(), nullable=False),
        sa.Column("top_p", sa.Float(), nullable=False),
        sa.Column("sample_count", sa.Integer(), nullable=False),
        sa.Column("quantiles", sa.JSON(), nullable=False),
        sa.Column("seed", sa.BigInteger(), nullable=False),
        sa.Column("max_context", sa.Integer(), nullable=False),
        sa.Column("batch_size", sa.Integer(), nullable=False),
        sa.Column("device", sa.String(64), nullable=False),
        sa.Column("model_name", sa.String(250), nullable=False),
        sa.Column("model_version", sa.String(64), nullable=False),
        sa.Column("model_sha256", sa.String(64), nullable=False),
        sa.Column("tokenizer_name", sa.String(250), nullable=False),
        sa.Column("tokenizer_version", sa.String(64), nullable=False),
        sa.Column("tokenizer_sha256", sa.String(64), nullable=False),
        sa.Column("model_alias", sa.String(64), nullable=True),
        sa.Column("mlflow_run_id", sa.String(64), nullable=True),
        sa.Column("data_window_hash", sa.String(64), nullable=True),
        sa.Column("code_version", sa.String(64), nullable=False),
        sa.Column("symbols_ok", sa.Integer(), nullable=False),
        sa.Column("symbols_failed", sa.Integer(), nullable=False),
        sa.Column("bars_per_second", sa.Float(), nullable=True),
        sa.Column("timings", sa.JSON(), nullable=False),
        sa.Column("extra", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("run_id", name="pk_forecast_runs"),
    )
    op.create_index("ix_forecast_runs_logical_date", "forecast_runs", ["logical_date"])
    op.create_table(
        "forecasts",
        sa.Column("run_id", sa.String(250), nullable=False),
        sa.Column("symbol", sa.String(64), nullable=False),
        sa.Column("feature", sa.String(16), nullable=False),
        sa.Column("step", sa.Integer(), nullable=False),
        sa.Column("interval", sa.String(16), nullable=False),
        sa.Column("origin_ts", TS, nullable=False),
        sa.Column("target_ts", TS, nullable=False),
        sa.Column("last_value", sa.Float(), nullable=False),
        sa.Column("mean", sa.Float(), nullable=False),
        sa.Column("quantiles", sa.JSON(), nullable=False),
        sa.Column("prob_above_last", sa.Float(), nullable=False),
        sa.Column("series_seed", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(
            ["run_id"], ["forecast_runs.run_id"], ondelete="CASCADE", name="fk_forecasts_run_id_forecast_runs"
        ),
        sa.PrimaryKeyConstraint("run_id", "symbol", "feature", "step", name="pk_forecasts"),
    )
    op.create_index("ix_forecasts_symbol_target", "forecasts", ["symbol", "target_ts"])
    op.create_table(
        "staged_forecasts",
        sa.Column("run_id", sa.String(250), nullable=False),
        sa.Column("batch", sa.String(64), nullable=False),
        sa.Column("symbol", sa.String(64), nullable=False),
        sa.Column("feature", sa.String(16), nullable=False),
        sa.Column("step", sa.Integer(), nullable=False),
        sa.Column("interval", sa.String(16), nullable=False),
        sa.Column("origin_ts", TS, nullable=False),
        sa.Column("target_ts", TS, nullable=False),
        sa.Column("last_value", sa.Float(), nullable=False),
        sa.Column("mean", sa.Float(), nullable=False),
        sa.Column("quantiles", sa.JSON(), nullable=False),
        sa.Column("prob_above_last", sa.Float(), nullable=False),
        sa.Column("series_seed", sa.BigInteger(), nullable=False),
        sa.Column("staged_at", TS, nullable=False),
        sa.PrimaryKeyConstraint("run_id", "batch", "symbol", "feature", "step", name="pk_staged_forecasts"),
    )
    op.create_table(
        "symbol_failures",
        sa.Column("run_id", sa.String(250), nullable=False),
        sa.Column("symbol", sa.String(64), nullable=False),
        sa.Column("stage", sa.String(32), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("recorded_at", TS, nullable=False),
        sa.ForeignKeyConstraint(
            ["run_id"], ["forecast_runs.run_id"], ondelete="CASCADE", name="fk_symbol_failures_run_id_forecast_runs"
        ),
        sa.PrimaryKeyConstraint("run_id", "symbol", name="pk_symbol_failures"),
    )
    op.create_table(
        "forecast_scores",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("run_id", sa.String(250), nullable=False),
        sa.Column("symbol", sa.String(64), nullable=False),
        sa.Column("feature", sa.String(16), nullable=False),
        sa.Column("horizon", sa.Integer(), nullable=False),
        sa.Column("method", sa.String(32), nullable=False),
        sa.Column("metric", sa.String(32), nullable=False),
        sa.Column("value", sa.Float(), nullable=True),
        sa.Column("count", sa.Integer(), nullable=False),
        sa.Column("model_version", sa.String(64), nullable=True),
        sa.Column("evaluated_at", TS, nullable=False),
        sa.ForeignKeyConstraint(
            ["run_id"], ["forecast_runs.run_id"], ondelete="CASCADE", name="fk_forecast_scores_run_id_forecast_runs"
        ),
        sa.PrimaryKeyConstraint("id", name="pk_forecast_scores"),
        sa.UniqueConstraint(
            "run_id", "symbol", "feature", "horizon", "method", "metric", name="uq_forecast_scores_run_id"
        ),
    )
    op.create_table(
        "model_decisions",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("decided_at", TS, nullable=False),
        sa.Column("action", sa.String(32), nullable=False),
        sa.Column("model_name", sa.String(250), nullable=False),
        sa.Column("alias", sa.String(64), nullable=False),
        sa.Column("candidate_version", sa.String(64), nullable=True),
        sa.Column("previous_version", sa.String(64), nullable=True),
        sa.Column("actor", sa.String(250), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("metrics", sa.JSON(), nullable=False),
        sa.Column("mlflow_run_id", sa.String(64), nullable=True),
        sa.Column("dag_run_id", sa.String(250), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_model_decisions"),
    )


def downgrade() -> None:
    for table in (
        "model_decisions",
        "forecast_scores",
        "symbol_failures",
        "staged_forecasts",
        "forecasts",
        "forecast_runs",
        "bars",
        "instruments",
    ):
        op.drop_table(table)
