"""Run items: a daily run's watchlist in the database (its shard, and why a symbol failed), so that tasks
pass ids and counts instead of per-symbol lists; source files: what each symbol's bar file looked like
when it was last ingested, so that an unchanged file is skipped and a grown one read from where it ended.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-03
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "run_items",
        sa.Column("run_id", sa.String(250), nullable=False),
        sa.Column("symbol", sa.String(64), nullable=False),
        sa.Column("interval", sa.String(16), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("shard", sa.Integer(), nullable=False),
        sa.Column("exchange", sa.String(32), nullable=False),
        sa.Column("timezone", sa.String(64), nullable=False),
        sa.Column("source", sa.String(64), nullable=False),
        sa.Column("file", sa.Text(), nullable=True),
        sa.Column("ticker", sa.String(64), nullable=True),
        sa.Column("stage", sa.String(16), nullable=True),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("run_id", "symbol", name="pk_run_items"),
    )
    op.create_index("ix_run_items_run_shard", "run_items", ["run_id", "shard"])
    op.create_table(
        "source_files",
        sa.Column("symbol", sa.String(64), nullable=False),
        sa.Column("interval", sa.String(16), nullable=False),
        sa.Column("path", sa.Text(), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("mtime_ns", sa.BigInteger(), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("ingested_at", TS, nullable=False),
        sa.PrimaryKeyConstraint("symbol", "interval", name="pk_source_files"),
    )


def downgrade() -> None:
    op.drop_table("source_files")
    op.drop_index("ix_run_items_run_shard", table_name="run_items")
    op.drop_table("run_items")
