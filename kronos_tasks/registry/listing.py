"""The registry read without importing MLflow: versions, alias moves and the pinning of a reference.

Importing MLflow takes two and a half seconds, more than the queries `kronos-flow models` and a daily
run's plan make. On a local store this module runs them with SQLAlchemy on MLflow's own tables
(registry: ``model_versions``, ``model_version_tags``, ``registered_model_aliases``; tracking:
``experiments``, ``runs``, ``params``); against a tracking server ``pin`` uses its REST API. Read only.
"""

from __future__ import annotations

import os
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime, timezone

from sqlalchemy import MetaData, Table, create_engine, inspect, select

from kronos_tasks.settings import redact

from .pinned import TAG_PREFIX, PinnedPair, RegistryError, kronos_tags, missing_version, pair_of, parse_ref

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


def pin(settings, ref: str | None = None) -> PinnedPair:
    """The versions and checksums a reference (default: the configured alias) points at, without fetching
    the weights or importing MLflow: SQL on a local store, the REST API of a tracking server (MLflow's
    client for any other registry). The paths are empty: ``Registry.resolve`` fetches and verifies the
    weights where they are used."""
    name, which = parse_ref(ref or settings.model_alias, settings.model_name)
    uri = settings.mlflow_registry_uri
    if is_sql_store(uri):
        reader = _SqlVersions(uri)
    elif uri.startswith(("http://", "https://")):
        reader = _RestVersions(uri)
    else:
        from .registry import Registry

        return Registry(settings).resolve(ref)
    model, alias = reader.version(name, which)
    tags = kronos_tags(model["tags"])
    if "tokenizer_version" not in tags:
        raise RegistryError(f"{name} version {model['version']} names no tokenizer version; register it again.")
    tokenizer, _ = reader.version(tags["tokenizer_name"], tags["tokenizer_version"])
    return pair_of(model, tokenizer, alias)


class _SqlVersions:
    """Model versions from MLflow's registry tables."""

    def __init__(self, uri: str):
        self.uri = uri

    def version(self, name: str, ref: str) -> tuple[dict, str | None]:
        engine, tables = _tables(self.uri, "model_versions", "model_version_tags", "registered_model_aliases")
        if engine is None:
            raise missing_version(name, ref, [])
        versions, tags, aliases = tables
        alias = None if ref.isdigit() else ref
        with engine.connect() as connection:
            if alias:
                number = connection.execute(
                    select(aliases.c.version).where(aliases.c.name == name, aliases.c.alias == alias)
                ).scalar()
            else:
                number = int(ref)
            row = None
            if number is not None:
                row = (
                    connection.execute(
                        select(versions.c.name, versions.c.version, versions.c.run_id, versions.c.source).where(
                            versions.c.name == name,
                            versions.c.version == number,
                            versions.c.current_stage != "Deleted_Internal",
                        )
                    )
                    .mappings()
                    .first()
                )
            if row is None:
                known = connection.execute(select(versions.c.version).where(versions.c.name == name)).scalars()
                engine.dispose()
                raise missing_version(name, ref, sorted(int(v) for v in known))
            found = dict(
                connection.execute(
                    select(tags.c.key, tags.c.value).where(tags.c.name == name, tags.c.version == number)
                ).all()
            )
        engine.dispose()
        return {**row, "tags": found}, alias


class _RestVersions:
    """Model versions from a tracking server's REST API (credentials as MLflow's client takes them)."""

    def __init__(self, uri: str):
        from kronos_tasks.settings import split_userinfo

        self.base, user, password = split_userinfo(uri)
        self.base = self.base.rstrip("/")
        self.user = user or os.environ.get("MLFLOW_TRACKING_USERNAME")
        self.password = password if user else os.environ.get("MLFLOW_TRACKING_PASSWORD")
        self.token = os.environ.get("MLFLOW_TRACKING_TOKEN")

    def _get(self, path: str, **query) -> dict | None:
        import base64
        import json
        import ssl
        import urllib.error
        import urllib.parse
        import urllib.request

        request = urllib.request.Request(f"{self.base}/api/2.0/mlflow/{path}?{urllib.parse.urlencode(query)}")
        if self.token:
            request.add_header("Authorization", f"Bearer {self.token}")
        elif self.user:
            secret = base64.b64encode(f"{self.user}:{self.password or ''}".encode()).decode()
            request.add_header("Authorization", f"Basic {secret}")
        certificate = os.environ.get("MLFLOW_TRACKING_SERVER_CERT_PATH")
        context = ssl.create_default_context(cafile=certificate) if certificate else None
        try:
            with urllib.request.urlopen(request, timeout=30, context=context) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                return None
            raise RegistryError(
                f"the MLflow server at {redact(self.base)} answered {exc.code} to {path}: check "
                "MLFLOW_TRACKING_USERNAME/PASSWORD and your permission on the registered model."
            ) from None
        except (urllib.error.URLError, OSError) as exc:
            raise RegistryError(f"cannot reach the MLflow server at {redact(self.base)}: {exc}") from None

    def version(self, name: str, ref: str) -> tuple[dict, str | None]:
        alias = None if ref.isdigit() else ref
        if alias:
            found = self._get("registered-models/alias", name=name, alias=alias)
        else:
            found = self._get("model-versions/get", name=name, version=ref)
        if not found:
            listed = self._get("model-versions/search", filter=f"name='{name}'") or {}
            raise missing_version(name, ref, sorted(int(v["version"]) for v in listed.get("model_versions", [])))
        version = found["model_version"]
        tags = {t["key"]: t["value"] for t in version.get("tags", [])}
        fields = {"name": version["name"], "version": version["version"], "run_id": version.get("run_id")}
        return {**fields, "source": version.get("source"), "tags": tags}, alias
