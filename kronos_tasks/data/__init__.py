"""Market data: sources, validation, trading calendars.

The names below load their modules (and pandas, exchange_calendars) on first use.
"""

from __future__ import annotations

from kronos_tasks.lazy import lazy_attributes

_LAZY = {
    "exchange_timezone": ".calendars",
    "future_timestamps": ".calendars",
    "FEATURES": ".schema",
    "DataError": ".schema",
    "Interval": ".schema",
    "infer_interval": ".schema",
    "SourceSeries": ".sources",
    "files_under": ".sources",
    "read_series": ".sources",
    "DEFAULT_POLICIES": ".rules",
    "RULES": ".rules",
    "Report": ".validation",
    "validate": ".validation",
}

__getattr__ = lazy_attributes(__name__, _LAZY)

__all__ = sorted(_LAZY)
