"""Forecast windows: the exact stored bars each symbol's forecast read (first and last bar, count, SHA-256),
and their staging, so that a run's data inputs can be shown and replayed.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-03
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)


def _window_columns() -> list[sa.Column]:
    return [
        sa.Column("symbol", sa.String(64), nullable=False),
        sa.Column("interval", sa.String(16), nullable=False),
        sa.Column("first_ts", TS, nullable=False),
        sa.Column("last_ts", TS, nullable=False),
        sa.Column("bars", sa.Integer(), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
    ]


def upgrade() -> None:
    op.create_table(
        "forecast_windows",
        sa.Column("run_id", sa.String(250), nullable=False),
        *_window_columns(),
        sa.ForeignKeyConstraint(
            ["run_id"], ["forecast_runs.run_id"], ondelete="CASCADE", name="fk_forecast_windows_run_id_forecast_runs"
        ),
        sa.PrimaryKeyConstraint("run_id", "symbol", name="pk_forecast_windows"),
    )
    op.create_table(
        "staged_windows",
        sa.Column("run_id", sa.String(250), nullable=False),
        sa.Column("batch", sa.String(64), nullable=False),
        *_window_columns(),
        sa.Column("staged_at", TS, nullable=False),
        sa.PrimaryKeyConstraint("run_id", "batch", "symbol", name="pk_staged_windows"),
    )


def downgrade() -> None:
    op.drop_table("staged_windows")
    op.drop_table("forecast_windows")
