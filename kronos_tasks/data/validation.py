"""Checks of bars before they are stored, each rule with its own policy.

A finding names the symbol, the file row, the timestamp and the rule. Policies: ``reject_bar`` drops
the bar, ``reject_symbol`` drops the whole symbol (the other symbols go on), ``warn`` keeps the bar and
reports it.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from .rules import CANNOT_STORE, DEFAULT_POLICIES, ISOLATION_STEPS, POLICIES, RULES  # noqa: F401
from .schema import FEATURES, SYMBOL_MAX, DataError, Interval

NAT = np.iinfo(np.int64).min
DAY_NS = 86_400 * 10**9


@dataclass(frozen=True)
class Finding:
    symbol: str
    row: int  # 1-based data row in the source file
    ts: pd.Timestamp | None
    rule: str
    action: str

    def __str__(self) -> str:
        when = "" if self.ts is None or pd.isna(self.ts) else f" ({self.ts})"
        return f"{self.symbol} row {self.row}{when}: {RULES[self.rule]} [{self.rule}] -> {self.action}"


@dataclass
class Report:
    """What validation found, per rule and symbol, and which symbols it rejected and why."""

    findings: list[Finding] = field(default_factory=list)
    rejected_symbols: dict[str, str] = field(default_factory=dict)
    bars_in: Counter = field(default_factory=Counter)
    bars_kept: Counter = field(default_factory=Counter)
    notes: dict[str, list[str]] = field(default_factory=dict)

    def counts(self) -> Counter:
        return Counter(f.rule for f in self.findings)

    def merge(self, other: Report) -> None:
        self.findings += other.findings
        self.rejected_symbols.update(other.rejected_symbols)
        self.bars_in.update(other.bars_in)
        self.bars_kept.update(other.bars_kept)
        for symbol, notes in other.notes.items():
            self.notes.setdefault(symbol, []).extend(notes)

    def render(self, max_findings: int = 20) -> str:
        lines = [
            f"{len(self.bars_in)} symbol(s), {sum(self.bars_in.values())} bars read, "
            f"{sum(self.bars_kept.values())} kept, {len(self.rejected_symbols)} symbol(s) rejected"
        ]
        counts = self.counts()
        for rule in RULES:
            if counts[rule]:
                lines.append(f"  {rule}: {counts[rule]} ({RULES[rule]})")
        for symbol, reason in sorted(self.rejected_symbols.items()):
            lines.append(f"  rejected {symbol}: {reason}")
        for symbol, notes in sorted(self.notes.items()):
            lines += [f"  note {symbol}: {note}" for note in notes]
        for finding in self.findings[:max_findings]:
            lines.append(f"  {finding}")
        if len(self.findings) > max_findings:
            lines.append(f"  ... {len(self.findings) - max_findings} more finding(s)")
        return "\n".join(lines)


def check_policies(policies: dict[str, str]) -> dict[str, str]:
    """``DEFAULT_POLICIES`` updated with ``policies``, refusing unknown rules or policies by name."""
    merged = dict(DEFAULT_POLICIES)
    for rule, policy in policies.items():
        if rule not in RULES:
            raise DataError(f"unknown validation rule {rule!r}; rules: {sorted(RULES)}.")
        if policy not in POLICIES:
            raise DataError(f"unknown policy {policy!r} for rule {rule!r}; policies: {POLICIES}.")
        if policy == "warn" and rule in CANNOT_STORE:
            raise DataError(
                f"policy warn is not allowed for {rule}: {CANNOT_STORE[rule]}; use reject_bar or reject_symbol."
            )
        merged[rule] = policy
    return merged


def wall_clock_ns(utc_ns: np.ndarray, timezone: str) -> np.ndarray:
    """UTC nanoseconds as wall-clock nanoseconds in ``timezone`` (NaT stays NaT)."""
    return pd.DatetimeIndex(utc_ns, tz="UTC").tz_convert(timezone).tz_localize(None).as_unit("ns").asi8


def _off_grid(local_ns: np.ndarray, interval: Interval) -> np.ndarray:
    """Bars (wall-clock nanoseconds) whose time of day is off the interval's grid."""
    time_of_day = np.mod(local_ns, DAY_NS)
    if interval.daily:
        # Daily bars share one time of day (usually midnight): any other is off the grid.
        values, counts = np.unique(time_of_day, return_counts=True)
        usual = values[counts == counts.max()][0]  # the earliest of the most common ones
        return time_of_day != usual
    step = interval.timedelta / pd.Timedelta(minutes=1)
    return np.mod(time_of_day / 60e9, step) != 0


def _isolated(utc_ns: np.ndarray, good_time: np.ndarray) -> np.ndarray:
    """Bars whose nearest neighbour in time is over a year and ``ISOLATION_STEPS`` usual steps away."""
    flagged = np.zeros(len(utc_ns), bool)
    index = np.flatnonzero(good_time)
    if len(index) < 3:
        return flagged
    times = utc_ns[index] / 1e9  # seconds since the epoch, in file order
    order = np.argsort(times, kind="stable")
    sorted_times = times[order]
    gaps = np.diff(sorted_times)
    usual = np.median(gaps[gaps > 0]) if (gaps > 0).any() else 0
    limit = max(usual * ISOLATION_STEPS, pd.Timedelta(days=366).total_seconds())
    before = np.concatenate([[np.inf], gaps])
    after = np.concatenate([gaps, [np.inf]])
    far = np.minimum(before, after) > limit
    flagged[index[order[far]]] = True
    return flagged


def bar_arrays(bars: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """A frame of bars as ``check_bars`` takes them: times (UTC nanoseconds, NaT the smallest int64) and
    values [bars, 6] in ``FEATURES`` order."""
    utc_ns = pd.DatetimeIndex(bars["ts"]).as_unit("ns").asi8
    # column by column: a multi-column selection costs 4x more on the few rows of a daily ingest
    return utc_ns, np.column_stack([bars[f].to_numpy(dtype=float) for f in FEATURES]).reshape(len(bars), -1)


def validate(
    symbol: str, bars: pd.DataFrame, interval: Interval, timezone: str = "UTC", policies: dict[str, str] | None = None
) -> tuple[pd.DataFrame, Report]:
    """Apply every rule to one symbol's bars -> (bars kept, report). Kept bars are sorted by time."""
    utc_ns, values = bar_arrays(bars)
    kept, report = check_bars(
        symbol, utc_ns, values, bars["row"].to_numpy(), interval, timezone, check_policies(policies or {})
    )
    if kept is None:
        return bars.iloc[0:0], report
    unchanged = len(kept) == len(bars) and (kept == np.arange(len(bars))).all()
    return (bars if unchanged else bars.take(kept)).reset_index(drop=True), report


def check_bars(
    symbol: str,
    utc_ns: np.ndarray,
    values: np.ndarray,
    rows: np.ndarray,
    interval: Interval,
    timezone: str,
    policies: dict[str, str],
    local_ns: np.ndarray | None = None,
) -> tuple[np.ndarray | None, Report]:
    """``validate`` on one symbol's bars as arrays: times (UTC nanoseconds, NaT the smallest int64), values
    [bars, 6] in ``FEATURES`` order and file rows; ``policies`` as ``check_policies`` returns them;
    ``local_ns`` the times' wall clock in ``timezone`` when already known. -> (the positions of the kept bars
    in time order, None when the symbol is rejected; report). Numpy only: the daily ingest runs it on each of
    thousands of symbols' few new bars, cut from one table.
    """
    report = Report()
    report.bars_in[symbol] = len(utc_ns)
    if len(symbol) > SYMBOL_MAX:
        report.rejected_symbols[symbol] = (
            f"the symbol is {len(symbol)} characters long; the database holds at most {SYMBOL_MAX}: use a shorter name"
        )
        report.bars_kept[symbol] = 0
        return None, report
    flags: dict[str, np.ndarray] = {}
    opens, highs, lows, closes, volumes, amounts = values.T
    flags["bad_timestamp"] = utc_ns == NAT
    flags["non_finite"] = ~np.isfinite(values).all(axis=1)
    with np.errstate(invalid="ignore"):
        flags["non_positive_price"] = (values[:, :4] <= 0).any(axis=1)
        flags["high_below_open_close"] = highs < np.fmax(opens, closes)
        flags["low_above_open_close"] = lows > np.fmin(opens, closes)
        flags["negative_volume"] = (volumes < 0) | (amounts < 0)
    good_time = ~flags["bad_timestamp"]
    flags["isolated_timestamp"] = _isolated(utc_ns, good_time)
    if policies["isolated_timestamp"] != "warn":
        good_time = good_time & ~flags["isolated_timestamp"]  # so that it is not also "decreasing"
    first = np.ones(len(utc_ns), bool)
    first[np.unique(utc_ns, return_index=True)[1]] = False
    flags["duplicate_timestamp"] = first & good_time
    # A bar is "decreasing" when it is earlier than the latest valid timestamp before it (in file order).
    latest_valid = np.maximum.accumulate(np.where(good_time, np.arange(len(utc_ns)), -1))
    previous = np.concatenate([[-1], latest_valid[:-1]])
    flags["decreasing_timestamp"] = good_time & (previous >= 0) & (utc_ns < utc_ns[np.maximum(previous, 0)])
    flags["off_grid"] = np.zeros(len(utc_ns), bool)
    if good_time.any():
        local = wall_clock_ns(utc_ns[good_time], timezone) if local_ns is None else local_ns[good_time]
        flags["off_grid"][good_time] = _off_grid(local, interval)

    drop = np.zeros(len(utc_ns), bool)
    for rule, flagged in flags.items():
        if not flagged.any():
            continue
        policy = policies[rule]
        for index in np.flatnonzero(flagged):
            when = pd.NaT if utc_ns[index] == NAT else pd.Timestamp(int(utc_ns[index]), tz="UTC")
            report.findings.append(Finding(symbol, int(rows[index]), when, rule, policy))
        if policy == "reject_symbol":
            reason = f"{RULES[rule]} [{rule}], first at row {int(rows[np.flatnonzero(flagged)[0]])}"
            earlier = report.rejected_symbols.get(symbol)
            report.rejected_symbols[symbol] = f"{earlier}; {reason}" if earlier else reason
        elif policy == "reject_bar":
            drop |= flagged
    if symbol in report.rejected_symbols:
        report.bars_kept[symbol] = 0
        return None, report
    kept = np.flatnonzero(~drop)
    if not (np.diff(utc_ns[kept]) >= 0).all():
        kept = kept[np.argsort(utc_ns[kept], kind="stable")]
    if not len(kept):
        report.rejected_symbols[symbol] = "no bar passed validation"
    report.bars_kept[symbol] = len(kept)
    return kept, report
