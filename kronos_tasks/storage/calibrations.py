"""Stored calibrations: one row per fitted calibration, found by model version and interval or by checksum."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from sqlalchemy import Engine, select

from .db import upsert
from .models import Calibration


def store_calibration(
    engine: Engine, content: dict[str, Any], sha256: str, model_name: str, model_version: str, mlflow_run_id: str | None
) -> None:
    """Store a calibration (``Calibration.describe()``) under its checksum; storing it again changes nothing."""
    row = {
        "sha256": sha256,
        "model_name": model_name,
        "model_version": str(model_version),
        "interval": content["interval"],
        "created_at": datetime.now(timezone.utc),
        "origins": int(content["fitted_on"]["origins"]),
        "content": content,
        "mlflow_run_id": mlflow_run_id,
    }
    with engine.begin() as connection:
        upsert(connection, Calibration.__table__, [row], ["sha256"])


def latest_calibration(engine: Engine, model_name: str, model_version: str, interval: str) -> tuple[str, dict] | None:
    """(sha256, content) of the newest calibration of a model version at an interval, or None."""
    query = (
        select(Calibration.sha256, Calibration.content)
        .where(
            Calibration.model_name == model_name,
            Calibration.model_version == str(model_version),
            Calibration.interval == interval,
        )
        .order_by(Calibration.created_at.desc())
        .limit(1)
    )
    with engine.connect() as connection:
        found = connection.execute(query).first()
    return (found[0], found[1]) if found else None


def calibration_content(engine: Engine, sha256: str) -> dict | None:
    """The stored content of the calibration with this checksum."""
    with engine.connect() as connection:
        return connection.execute(select(Calibration.content).where(Calibration.sha256 == sha256)).scalar()
