"""Staged forecasts as chunks: a forecast task stages each chunk of its symbols' forecast rows as one row
holding an Arrow IPC stream, instead of one row per forecast row, so that persisting a run writes the rows
to the database once (into ``forecasts``) rather than twice.

The old staging table must be empty: its rows belong to runs in flight, which must finish (or be cleared)
before the upgrade.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-04
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)


def refuse_while_staged(table: str, change: str) -> None:
    """Raise if ``table`` holds staged rows: they belong to runs in flight, and dropping it would lose them."""
    in_flight = op.get_bind().execute(sa.text(f"SELECT DISTINCT run_id FROM {table}")).scalars().all()
    if in_flight:
        raise RuntimeError(
            f"{table} holds rows of {len(in_flight)} run(s) in flight ({', '.join(sorted(in_flight)[:5])}): "
            f"let them finish, or clear their DAG runs, before {change} the database."
        )


def upgrade() -> None:
    refuse_while_staged("staged_forecasts", "upgrading")
    op.create_table(
        "staged_forecast_chunks",
        sa.Column("run_id", sa.String(250), nullable=False),
        sa.Column("batch", sa.String(64), nullable=False),
        sa.Column("chunk", sa.Integer(), nullable=False),
        sa.Column("rows", sa.Integer(), nullable=False),
        sa.Column("arrow", sa.LargeBinary(), nullable=False),
        sa.Column("staged_at", TS, nullable=False),
        sa.PrimaryKeyConstraint("run_id", "batch", "chunk", name="pk_staged_forecast_chunks"),
    )
    op.drop_table("staged_forecasts")


def downgrade() -> None:
    refuse_while_staged("staged_forecast_chunks", "downgrading")
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
        sa.Column("calibrated_quantiles", sa.JSON(), nullable=True),
        sa.Column("calibrated_prob_above_last", sa.Float(), nullable=True),
        sa.Column("baseline_quantiles", sa.JSON(), nullable=True),
        sa.PrimaryKeyConstraint("run_id", "batch", "symbol", "feature", "step", name="pk_staged_forecasts"),
    )
    op.drop_table("staged_forecast_chunks")
