"""Registered versions and alias moves read straight from an MLflow SQL store, without importing MLflow.

``kronos-flow models`` on a local store would spend two and a half seconds importing MLflow to run three
queries; this module runs them with SQLAlchemy on MLflow's own tables (registry: ``model_versions``,
``model_version_tags``, ``registered_model_aliases``; tracking: ``experiments``, ``runs``, ``params``).
Read only. A tracking server (http) is read through ``Registry`` instead.
"""

from __future__ import annotations

import os
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime, timezone

from sqlalchemy import MetaData, Table, create_engine, inspect, select

TAG_PREFIX = "kronos."
SQL_SCHEMES = ("sqlite:", "postgresql", "mysql", "mssql")


@dataclass(frozen=True)
class Move:
    """One move of an alias: who moved it, when, from which version to which, and why."""

    at: str
    by: str
    action: str
    from_version: str | None
    to_version: str
    reason: str


def is_sql_store(uri: str) -> bool:
    return uri.startswith(SQL_SCHEMES)


def _tables(uri: str, *names: str):
    """(engine, the tables) of an MLflow store, or (None, []) where the store was never created."""
    if uri.startswith("sqlite:///") and not os.path.exists(uri.removeprefix("sqlite:///")):
        return None, []
    engine = create_engine(uri)
    if not all(inspect(engine).has_table(name) for name in names):
        engine.dispose()
        return None, []
    metadata = MetaData()
    return engine, [Table(name, metadata, autoload_with=engine) for name in names]


def sql_versions(registry_uri: str, names: tuple[str, ...]) -> list[dict]:
    """Every version of ``names`` with its aliases and kronos tags (as ``Registry.versions`` returns them)."""
    engine, tables = _tables(registry_uri, "model_versions", "model_version_tags", "registered_model_aliases")
    if engine is None:
        return []
    versions, tags, aliases = tables
    with engine.connect() as connection:
        found = connection.execute(
            select(versions.c.name, versions.c.version, versions.c.run_id, versions.c.creation_time)
            .where(versions.c.name.in_(names), versions.c.current_stage != "Deleted_Internal")
            .order_by(versions.c.name, versions.c.version)
        ).all()
        tag_rows = connection.execute(
            select(tags.c.name, tags.c.version, tags.c.key, tags.c.value).where(tags.c.name.in_(names))
        ).all()
        alias_rows = connection.execute(select(aliases.c.name, aliases.c.version, aliases.c.alias)).all()
    engine.dispose()
    by_version: dict[tuple[str, int], dict[str, str]] = defaultdict(dict)
    for name, version, key, value in tag_rows:
        if key.startswith(TAG_PREFIX):
            by_version[(name, int(version))][key[len(TAG_PREFIX) :]] = value
    held: dict[tuple[str, int], list[str]] = defaultdict(list)
    for name, version, alias in alias_rows:
        held[(name, int(version))].append(alias)
    order = {name: i for i, name in enumerate(names)}
    rows = [
        {
            "name": name,
            "version": str(version),
            "aliases": sorted(held[(name, int(version))]),
            "run_id": run_id,
            "created": datetime.fromtimestamp(created / 1000, timezone.utc).isoformat(timespec="seconds"),
            "tags": by_version[(name, int(version))],
        }
        for name, version, run_id, created in found
    ]
    return sorted(rows, key=lambda r: (order[r["name"]], int(r["version"])))


def sql_moves(tracking_uri: str, experiment: str, model_name: str) -> dict[str, list[Move]]:
    """Alias moves of ``model_name`` recorded as runs of ``experiment``, per alias, oldest first."""
    engine, tables = _tables(tracking_uri, "experiments", "runs", "params")
    if engine is None:
        return {}
    experiments, runs, params = tables
    with engine.connect() as connection:
        ids = connection.execute(select(experiments.c.experiment_id).where(experiments.c.name == experiment)).scalars()
        wanted = list(ids)
        rows = connection.execute(
            select(runs.c.run_uuid, runs.c.start_time, params.c.key, params.c.value)
            .join(params, params.c.run_uuid == runs.c.run_uuid)
            .where(runs.c.experiment_id.in_(wanted), runs.c.lifecycle_stage == "active")
        ).all()
    engine.dispose()
    by_run: dict[str, dict] = defaultdict(dict)
    started: dict[str, int] = {}
    for run_id, start_time, key, value in rows:
        by_run[run_id][key] = value
        started[run_id] = start_time
    moves: dict[str, list[Move]] = defaultdict(list)
    for run_id in sorted(by_run, key=lambda r: started[r]):
        p = by_run[run_id]
        if p.get("model_name") != model_name or "alias" not in p:
            continue
        moves[p["alias"]].append(
            Move(p["at"], p["actor"], p["action"], p["from_version"] or None, p["to_version"], p["reason"])
        )
    return dict(moves)
