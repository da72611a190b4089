"""What the daily forecast's tasks hand each other: typed, and serialisable to Airflow's XCom.

Each payload turns into plain JSON (``serialize``) and back (``deserialize``), the protocol of
Airflow's own serialiser, so tasks receive these types, not dicts. Airflow only rebuilds classes it
allows; where Airflow is loaded (a DAG file imports this module after ``airflow.sdk``) the payloads
register themselves. This module imports neither torch, pandas nor MLflow.
"""

from __future__ import annotations

import sys
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar

from kronos_tasks.forecasting.params import ForecastParams
from kronos_tasks.registry.pinned import PinnedPair


@dataclass(frozen=True)
class Failure:
    """Why one symbol has no forecast: the stage that failed (ingest, window, forecast) and the reason."""

    stage: str
    reason: str


def _failures(values: dict[str, dict[str, str]]) -> dict[str, Failure]:
    return {symbol: Failure(**failure) for symbol, failure in values.items()}


@dataclass(frozen=True)
class RunPlan:
    """A daily run as its plan task fixed it: identity, resolved parameters, pinned weights, and how many
    entries its watchlist has in how many shards (the entries themselves are in the run_items table)."""

    __version__: ClassVar[int] = 2

    run_id: str
    dag_id: str
    dag_run_id: str | None
    origin: str  # ISO time in UTC: the run's logical time, the latest bar a forecast may read
    started_at: str
    params: ForecastParams  # resolved: no empty values
    pinned: PinnedPair
    max_failed_share: float
    max_staleness: int | None = None  # bars a symbol may lag its calendar (None: the interval's default)
    shards: int = 1
    symbols: int = 0
    calibrations: dict[str, str] = field(default_factory=dict)  # interval -> sha256 of the calibration applied

    @property
    def seed(self) -> int:
        return self.params.seed

    def serialize(self) -> dict[str, Any]:
        return {**asdict(self), "params": self.params.to_dict()}

    @staticmethod
    def deserialize(data: dict[str, Any], version: int) -> RunPlan:
        return RunPlan(
            **{
                **data,
                "params": ForecastParams.from_dict(data["params"]),
                "pinned": PinnedPair.from_dict(data["pinned"]),
            }
        )


@dataclass(frozen=True)
class IngestSummary:
    """The ingest of one shard: its entries, how many failed, bars written, files skipped as unchanged."""

    __version__: ClassVar[int] = 1

    shard: int
    entries: int
    failed: int
    bars_written: int
    unchanged: int

    def serialize(self) -> dict[str, Any]:
        return asdict(self)

    @staticmethod
    def deserialize(data: dict[str, Any], version: int) -> IngestSummary:
        return IngestSummary(**data)


@dataclass(frozen=True)
class BatchResult:
    """The forecast of one shard: how many symbols were forecast and staged and how many failed (which, and
    why, is in the database), and where and how fast it ran."""

    __version__: ClassVar[int] = 2

    shard: int
    ok: int
    failed: int
    bars: int  # bars generated: symbols x sample paths x pred_len
    forecast_seconds: float
    load_seconds: float
    read_seconds: float
    device: str
    host: str
    threads: int

    def serialize(self) -> dict[str, Any]:
        return asdict(self)

    @staticmethod
    def deserialize(data: dict[str, Any], version: int) -> BatchResult:
        return BatchResult(**data)


@dataclass(frozen=True)
class RunSummary:
    """A stored run: its status, counts, the first failures (all are in the database), speed, and the share
    of failures it may have."""

    __version__: ClassVar[int] = 1

    run_id: str
    status: str  # success, partial or failed
    symbols_ok: int
    symbols_failed: int
    failures: dict[str, Failure]
    forecast_rows: int
    forecast_seconds: float
    bars_per_second: float | None
    failed_share: float
    max_failed_share: float
    devices: tuple[str, ...] = ()

    def serialize(self) -> dict[str, Any]:
        values = asdict(self)
        values["devices"] = list(self.devices)
        return values

    @staticmethod
    def deserialize(data: dict[str, Any], version: int) -> RunSummary:
        return RunSummary(**{**data, "failures": _failures(data["failures"]), "devices": tuple(data["devices"])})


# PinnedPair travels too (the rollout DAG passes the candidate and the champion): a flat dataclass,
# which Airflow's serialiser rebuilds from its fields.
PAYLOADS = (RunPlan, IngestSummary, BatchResult, RunSummary, PinnedPair)
__all__ = ["BatchResult", "Failure", "IngestSummary", "PinnedPair", "RunPlan", "RunSummary"]


def _allow_in_xcom() -> None:
    """Let Airflow's XCom rebuild the payloads in this process, where Airflow is already loaded."""
    if "airflow.sdk" not in sys.modules:
        return  # not in an Airflow process: nothing here reads XCom
    from airflow.sdk.serde import allow_class

    for cls in PAYLOADS:
        allow_class(cls)


_allow_in_xcom()
