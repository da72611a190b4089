"""Calibrations: fitted per model version and interval on held-back backtest origins, stored with their
checksum; forecasts keep raw, calibrated and historical-volatility baseline bands side by side; runs record
which calibration they applied.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-03
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)
FORECAST_COLUMNS = ("calibrated_quantiles", "calibrated_prob_above_last", "baseline_quantiles")


def upgrade() -> None:
    op.create_table(
        "calibrations",
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("model_name", sa.String(250), nullable=False),
        sa.Column("model_version", sa.String(64), nullable=False),
        sa.Column("interval", sa.String(16), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("origins", sa.Integer(), nullable=False),
        sa.Column("content", sa.JSON(), nullable=False),
        sa.Column("mlflow_run_id", sa.String(64), nullable=True),
        sa.PrimaryKeyConstraint("sha256", name="pk_calibrations"),
    )
    op.create_index("ix_calibrations_model", "calibrations", ["model_name", "model_version", "interval"])
    for table in ("forecasts", "staged_forecasts"):
        with op.batch_alter_table(table) as batch:
            batch.add_column(sa.Column("calibrated_quantiles", sa.JSON(), nullable=True))
            batch.add_column(sa.Column("calibrated_prob_above_last", sa.Float(), nullable=True))
            batch.add_column(sa.Column("baseline_quantiles", sa.JSON(), nullable=True))
    with op.batch_alter_table("forecast_runs") as batch:
        batch.add_column(sa.Column("calibrations", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("forecast_runs") as batch:
        batch.drop_column("calibrations")
    for table in ("forecasts", "staged_forecasts"):
        with op.batch_alter_table(table) as batch:
            for column in FORECAST_COLUMNS:
                batch.drop_column(column)
    op.drop_index("ix_calibrations_model", table_name="calibrations")
    op.drop_table("calibrations")
