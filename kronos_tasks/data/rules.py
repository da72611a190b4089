"""The validation rules' names, texts and default policies (no pandas: the CLI's help lists them)."""

from __future__ import annotations

POLICIES = ("reject_bar", "reject_symbol", "warn")
# Rules whose bars cannot be kept, whatever the policy says.
CANNOT_STORE = {
    "bad_timestamp": "a bar without a time cannot be stored",
    "non_finite": "a missing or infinite value cannot be stored or forecast from",
    "duplicate_timestamp": "one symbol holds one bar per time",
}
# A bar this many usual steps (and at least a year) away from both neighbours is "isolated".
ISOLATION_STEPS = 1000

RULES: dict[str, str] = {
    "bad_timestamp": "timestamp missing or not a date/time",
    "non_finite": "a value is missing, not a number or infinite",
    "non_positive_price": "a price is zero or negative",
    "high_below_open_close": "high < max(open, close)",
    "low_above_open_close": "low > min(open, close)",
    "negative_volume": "volume or amount is negative",
    "isolated_timestamp": "timestamp far from every other bar (a mistyped year?)",
    "duplicate_timestamp": "same timestamp as an earlier bar",
    "decreasing_timestamp": "timestamp earlier than the bar before it",
    "off_grid": "timestamp off the interval grid",
}

DEFAULT_POLICIES: dict[str, str] = {
    "bad_timestamp": "reject_bar",
    "non_finite": "reject_bar",
    "non_positive_price": "reject_bar",
    "high_below_open_close": "reject_bar",
    "low_above_open_close": "reject_bar",
    "negative_volume": "reject_bar",
    "isolated_timestamp": "reject_bar",
    "duplicate_timestamp": "reject_bar",
    "decreasing_timestamp": "reject_symbol",
    "off_grid": "warn",
}
