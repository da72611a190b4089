"""Parameters of a forecast run and the watchlist, validated with messages that name what is wrong."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from kronos_tasks.data import DataError, Interval
from kronos_tasks.data.calendars import exchange_timezone


class ParamsError(ValueError):
    """A run parameter or watchlist entry that cannot be used; the message names it."""


@dataclass(frozen=True)
class ForecastParams:
    """What a forecast run does. ``lookback=None`` means max_context - pred_len, so the window never slides."""

    pred_len: int = 24
    lookback: int | None = None
    T: float = 1.0
    top_k: int = 0
    top_p: float = 0.9
    sample_count: int = 16
    quantiles: tuple[float, ...] = (0.1, 0.5, 0.9)
    seed: int | None = None
    model: str = "champion"
    batch_size: int = 32
    min_history: int = 32

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> ForecastParams:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ParamsError(f"unknown parameter(s) {unknown}; known: {sorted(known)}.")
        values = {k: v for k, v in values.items() if v is not None or k in ("lookback", "seed")}
        if "quantiles" in values:
            values["quantiles"] = tuple(float(q) for q in values["quantiles"])
        params = cls(**values)
        params.check()
        return params

    @classmethod
    def from_options(cls, options: Any) -> ForecastParams:
        """From the sampling options of a ``kronos-flow`` command, ``--quantiles`` given as ``0.1,0.5,0.9``."""
        try:
            quantiles = [float(q) for q in options.quantiles.split(",")]
        except ValueError:
            raise ParamsError(
                f"--quantiles must be comma-separated numbers such as 0.1,0.5,0.9, got {options.quantiles!r}."
            ) from None
        names = ("pred_len", "lookback", "T", "top_k", "top_p", "sample_count", "seed")
        return cls.from_dict({**{name: getattr(options, name) for name in names}, "quantiles": quantiles})

    def check(self, max_context: int | None = None) -> None:
        def integer(name: str, low: int) -> None:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ParamsError(f"{name} must be an integer >= {low}, got {value!r}.")

        for name, low in (("pred_len", 1), ("sample_count", 1), ("batch_size", 1), ("min_history", 1), ("top_k", 0)):
            integer(name, low)
        if self.lookback is not None:
            integer("lookback", 1)
        if not isinstance(self.T, (int, float)) or isinstance(self.T, bool) or self.T <= 0:
            raise ParamsError(f"T must be a number > 0, got {self.T!r}.")
        if not isinstance(self.top_p, (int, float)) or not 0 < self.top_p <= 1:
            raise ParamsError(f"top_p must be in (0, 1], got {self.top_p!r}.")
        if not self.quantiles or any(not 0 < q < 1 for q in self.quantiles):
            raise ParamsError(f"quantiles must be numbers strictly between 0 and 1, got {list(self.quantiles)!r}.")
        if self.seed is not None and (
            isinstance(self.seed, bool) or not isinstance(self.seed, int) or not 0 <= self.seed < 2**63
        ):
            raise ParamsError(f"seed must be an integer in [0, 2**63), got {self.seed!r}.")
        if not isinstance(self.model, str) or not self.model.strip():
            raise ParamsError("model must name an alias (champion) or a version (3).")
        if max_context is not None:
            if self.pred_len > max_context:
                raise ParamsError(f"pred_len {self.pred_len} exceeds the model's max_context {max_context}.")
            if self.window(max_context) < self.min_history:
                raise ParamsError(f"lookback {self.window(max_context)} is below min_history {self.min_history}.")

    def window(self, max_context: int) -> int:
        """History bars given to the model: lookback, or what fits beside pred_len in max_context."""
        return self.lookback if self.lookback is not None else max_context - self.pred_len

    def to_dict(self) -> dict[str, Any]:
        values = asdict(self)
        values["quantiles"] = list(self.quantiles)
        return values


@dataclass(frozen=True)
class WatchItem:
    """One watchlist entry: a symbol at an interval on an exchange, and (optionally) its source file."""

    symbol: str
    exchange: str
    interval: str
    file: str | None = None
    timezone: str = field(default="")

    @classmethod
    def from_dict(cls, values: dict[str, Any], where: str) -> WatchItem:
        missing = [k for k in ("symbol", "exchange", "interval") if not values.get(k)]
        if missing:
            raise ParamsError(f"{where}: missing {missing}; each entry needs symbol, exchange and interval.")
        unknown = sorted(set(values) - {"symbol", "exchange", "interval", "file"})
        if unknown:
            raise ParamsError(f"{where}: unknown key(s) {unknown}; allowed: symbol, exchange, interval, file.")
        try:
            interval = str(Interval.parse(values["interval"]))
            zone = exchange_timezone(values["exchange"])
        except DataError as exc:
            raise ParamsError(f"{where} ({values['symbol']}): {exc}") from None
        return cls(str(values["symbol"]), str(values["exchange"]).upper(), interval, values.get("file"), zone)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def parse_watchlist(raw: Any, where: str = "watchlist") -> list[WatchItem]:
    """Entries from a list of dicts, a {"symbols": [...]} mapping, or YAML/JSON text of either."""
    if isinstance(raw, str):
        try:
            raw = yaml.safe_load(raw)
        except yaml.YAMLError as exc:
            raise ParamsError(f"{where}: not valid YAML or JSON: {exc}") from None
    if isinstance(raw, dict):
        raw = raw.get("symbols")
    if not isinstance(raw, list) or not raw:
        raise ParamsError(f"{where}: expected a non-empty list of entries (symbol, exchange, interval[, file]).")
    items = [
        WatchItem.from_dict(entry if isinstance(entry, dict) else {}, f"{where} entry {i + 1}")
        for i, entry in enumerate(raw)
    ]
    seen: set[tuple[str, str]] = set()
    for item in items:
        if (item.symbol, item.interval) in seen:
            raise ParamsError(f"{where}: {item.symbol} at {item.interval} is listed twice.")
        seen.add((item.symbol, item.interval))
    return items


def load_watchlist(path: Path) -> list[WatchItem]:
    if not path.is_file():
        raise ParamsError(f"watchlist file {path} does not exist; set KRONOS_WATCHLIST or pass a watchlist param.")
    return parse_watchlist(path.read_text(), str(path))


def watchlist_json(items: list[WatchItem]) -> str:
    return json.dumps([item.to_dict() for item in items])
