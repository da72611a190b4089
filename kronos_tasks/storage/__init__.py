"""The forecasts database: SQLAlchemy models, Alembic migrations, idempotent writes."""

from .bars import bar_count, instrument, read_bars, record_source, source_record, write_bars
from .db import DatabaseError, current_revision, downgrade, make_engine, require_schema, upgrade, upsert
from .items import fail_items, item_counts, item_failures, plan_items, read_windows, reset_shard, shard_items
from .runs import (
    clear_staging,
    get_run,
    list_runs,
    persist_run,
    record_decision,
    run_failures,
    run_windows,
    stage_forecasts,
    update_run,
)

__all__ = [
    "fail_items",
    "item_counts",
    "item_failures",
    "plan_items",
    "read_windows",
    "reset_shard",
    "shard_items",
    "DatabaseError",
    "bar_count",
    "clear_staging",
    "stage_forecasts",
    "current_revision",
    "downgrade",
    "get_run",
    "instrument",
    "list_runs",
    "run_failures",
    "run_windows",
    "make_engine",
    "persist_run",
    "read_bars",
    "record_source",
    "source_record",
    "record_decision",
    "require_schema",
    "update_run",
    "upgrade",
    "upsert",
    "write_bars",
]
