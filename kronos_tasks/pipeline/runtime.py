"""Per-process resources the task functions share: settings, the forecasts database engine, the registry."""

from __future__ import annotations

from datetime import datetime, timezone
from functools import lru_cache

from sqlalchemy import Engine

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
    from kronos_tasks.registry import Registry

    return Registry(settings())


def torch_device(requested: str) -> str:
    """``auto`` -> CUDA when available, else CPU; anything else as given."""
    if requested != "auto":
        return requested
    from kronos_tasks.inference.predictor import default_device

    return default_device()


def utc(moment: datetime | str) -> datetime:
    """A plain ``datetime`` in UTC from an aware datetime (pendulum's too) or ISO text; naive input is refused."""
    moment = datetime.fromisoformat(moment) if isinstance(moment, str) else moment
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError(f"{moment!r} has no timezone.")
    return datetime.fromtimestamp(moment.timestamp(), timezone.utc)
