"""Market data: sources, validation, trading calendars."""

from .calendars import exchange_timezone, future_timestamps
from .schema import FEATURES, DataError, Interval, infer_interval
from .sources import SourceSeries, files_under, read_series
from .validation import DEFAULT_POLICIES, RULES, Report, validate

__all__ = [
    "DEFAULT_POLICIES",
    "FEATURES",
    "RULES",
    "DataError",
    "Interval",
    "Report",
    "SourceSeries",
    "exchange_timezone",
    "files_under",
    "future_timestamps",
    "infer_interval",
    "read_series",
    "validate",
]
