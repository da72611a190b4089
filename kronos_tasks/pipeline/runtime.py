"""Per-process resources the task functions share: settings, the forecasts database engine, the registry."""

from __future__ import annotations

from datetime import datetime, timezone
from functools import lru_cache

from sqlalchemy import Engine

from kronos_tasks.errors import ParamsError
from kronos_tasks.settings import Settings, load
from kronos_tasks.storage import make_engine, require_schema


@lru_cache(maxsize=8)
def engine_for(url: str) -> Engine:
    """A pooled engine for ``url``, checked once to be migrated to the code's schema."""
    engine = make_engine(url)
    require_schema(engine)
    return engine


def settings() -> Settings:
    """Settings read now (tasks may run in processes whose environment was set after import)."""
    return load()


def engine() -> Engine:
    return engine_for(settings().db_url)


def registry():
    from kronos_tasks.registry.registry import Registry

    return Registry(settings())


def utc(moment: datetime | str) -> datetime:
    """A plain ``datetime`` in UTC from an aware datetime (pendulum's too) or ISO text; naive input is refused."""
    moment = datetime.fromisoformat(moment) if isinstance(moment, str) else moment
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ParamsError(f"{moment!r} has no timezone; give the time with its offset.")
    return datetime.fromtimestamp(moment.timestamp(), timezone.utc)
