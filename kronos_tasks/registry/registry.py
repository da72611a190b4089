"""Versioned tokenizer and model pairs in the MLflow Model Registry.

A registration is one MLflow run in the ``kronos-registry`` experiment that logs each checkpoint folder
(config.json + model.safetensors, unchanged) as an MLflow 3 logged model and registers it as a version
of ``kronos-tokenizer`` (reused when an identical one exists) or ``kronos-model`` with the source
``models:/<model id>``: the version page links to its logged model, and the logged model's page lists
the runs that used it (forecast runs log their metrics against it). Versions carry the SHA-256 of their
files, their architecture and, for a model, the tokenizer version it pairs with. An alias (``champion``
by default) points at the model version forecasts use; every move of an alias is an MLflow run in
``kronos-registry`` (the record a rollback reads) and a row of the table in the registered model's
description, where the MLflow UI shows it.
"""

from __future__ import annotations

import getpass
import json
import os
import shutil
import tempfile
from datetime import datetime, timezone
from pathlib import Path

from mlflow import MlflowClient
from mlflow.artifacts import download_artifacts
from mlflow.entities import LoggedModelStatus
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException

import kronos_tasks
from kronos_tasks.hashing import sha256_file
from kronos_tasks.settings import Settings

from .cache import CONFIG_FILE, WEIGHTS_FILE, cache_folder, intact
from .listing import Move
from .mlflow_setup import client, ensure_experiment
from .pinned import (
    DEFAULT_MAX_CONTEXT,
    TAG_PREFIX,
    PinnedPair,
    RegistryError,
    kronos_tags,
    missing_version,
    pair_of,
    parse_ref,
)
from .runs import finish_run, record_run, start_run

REGISTRY_EXPERIMENT = "kronos-registry"
LEGACY_HISTORY_TAG = TAG_PREFIX + "alias_history."  # raw JSON kept by earlier releases; removed on the next move
MODEL_VERSIONS_TAG = "mlflow.modelVersions"
HISTORY_RUNS = 500  # the most alias moves read back per alias
HISTORY_SHOWN = 20  # moves per alias in the registered model's description
MODEL_DESCRIPTIONS = {
    "tokenizer": "Kronos tokenizers (BSQ), safetensors + JSON.",
    "model": "Kronos predictors, safetensors + JSON.",
}


def identity() -> str:
    """Who is acting: the MLflow user the server authenticates (MLFLOW_TRACKING_USERNAME), else the OS user."""
    user = os.environ.get("MLFLOW_TRACKING_USERNAME")
    if user:
        return f"mlflow:{user}"
    try:
        return getpass.getuser()
    except Exception:  # no user database entry in some containers
        return os.environ.get("USER", "unknown")


def _describe(kind: str, folder: Path) -> tuple[dict, dict[str, str]]:
    """Validate a checkpoint folder -> (its config, its registry tags). Loads it once to check every tensor."""
    from kronos_tasks.model import Kronos, KronosConfig, KronosTokenizer, TokenizerConfig, load_pretrained
    from kronos_tasks.model.checkpoint import CheckpointError, read_config, weights_path
    from kronos_tasks.model.config import ConfigError

    values = read_config(folder)
    source = str(folder / CONFIG_FILE)
    try:
        config = (TokenizerConfig if kind == "tokenizer" else KronosConfig).from_dict(values, source=source)
    except ConfigError as exc:
        raise RegistryError(f"{kind} folder {folder}: {exc}") from None
    try:
        module = load_pretrained(KronosTokenizer if kind == "tokenizer" else Kronos, folder)
    except CheckpointError as exc:
        raise RegistryError(f"{kind} folder {folder}: {exc}") from None
    tags = {
        "kind": kind,
        "sha256": sha256_file(weights_path(folder)),
        "config_sha256": sha256_file(folder / CONFIG_FILE),
        "parameters": str(sum(p.numel() for p in module.parameters())),
        "s1_bits": str(config.s1_bits),
        "s2_bits": str(config.s2_bits),
        "d_model": str(config.d_model),
        "n_heads": str(config.n_heads),
        "ff_dim": str(config.ff_dim),
        "source_folder": str(folder.resolve()),
        "kronos_flow_version": kronos_tasks.__version__,
    }
    if kind == "model":
        tags["n_layers"] = str(config.n_layers)
    else:
        tags["n_enc_layers"], tags["n_dec_layers"] = str(config.n_enc_layers), str(config.n_dec_layers)
    return values, tags


def _prefixed(tags: dict[str, str]) -> dict[str, str]:
    return {TAG_PREFIX + key: value for key, value in tags.items()}


def _tags(version: ModelVersion) -> dict[str, str]:
    return kronos_tags(version.tags)


def _fields(version: ModelVersion) -> dict:
    return {
        "name": version.name,
        "version": version.version,
        "run_id": version.run_id,
        "source": version.source,
        "tags": version.tags or {},
    }


def _flat_params(values: dict) -> dict[str, str]:
    return {k: str(v) for k, v in values.items() if isinstance(v, (str, int, float, bool))}


def _ensure_registered_model(mlflow_client: MlflowClient, name: str, description: str) -> None:
    try:
        mlflow_client.get_registered_model(name)
    except MlflowException:
        try:
            mlflow_client.create_registered_model(name, description=description)
        except MlflowException:
            mlflow_client.get_registered_model(name)  # created meanwhile by another process


class Registry:
    """Register, resolve, promote and roll back tokenizer/model pairs in MLflow."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.client = client(settings)
        self.model_name = settings.model_name
        self.tokenizer_name = settings.tokenizer_name

    # -- registration ----------------------------------------------------------------------------------------

    def register(
        self,
        tokenizer_dir: str | Path,
        model_dir: str | Path,
        alias: str | None = None,
        max_context: int = DEFAULT_MAX_CONTEXT,
        trained: bool = True,
        description: str = "",
        reason: str = "registered",
        lineage: dict[str, str] | None = None,
        note: str | None = None,
    ) -> PinnedPair:
        """Register a tokenizer and a model from local checkpoint folders; optionally point ``alias`` at the model.

        ``lineage`` (for example the base versions, data window and training run of a fine-tuned pair) is
        added to the model version's tags under ``kronos.lineage.``; ``note`` (a short warning such as
        "demonstration model") is shown wherever the version's forecasts are (charts, CLI).
        """
        from kronos_tasks.model import KronosConfig, TokenizerConfig, check_pair
        from kronos_tasks.model.config import ConfigError

        tokenizer_dir, model_dir = Path(tokenizer_dir), Path(model_dir)
        tokenizer_values, tokenizer_tags = _describe("tokenizer", tokenizer_dir)
        model_values, model_tags = _describe("model", model_dir)
        try:
            check_pair(
                TokenizerConfig.from_dict(tokenizer_values),
                KronosConfig.from_dict(model_values),
                f"tokenizer {tokenizer_dir}",
                f"model {model_dir}",
            )
        except ConfigError as exc:
            raise RegistryError(f"refusing to register: {exc}") from None
        if max_context < 1:
            raise RegistryError(f"max_context must be positive, got {max_context}.")

        experiment = ensure_experiment(self.client, REGISTRY_EXPERIMENT, self.settings.mlflow_artifact_root)
        run_id = start_run(
            self.client,
            experiment,
            f"register {model_dir.name}",
            {
                "action": "register",
                "actor": identity(),
                **model_tags,
                "max_context": max_context,
                "trained": str(trained).lower(),
            },
        )
        try:
            _ensure_registered_model(self.client, self.tokenizer_name, MODEL_DESCRIPTIONS["tokenizer"])
            _ensure_registered_model(self.client, self.model_name, MODEL_DESCRIPTIONS["model"])
            tokenizer = self._find_tokenizer(tokenizer_tags["sha256"]) or self._create_version(
                self.tokenizer_name,
                tokenizer_dir,
                experiment,
                run_id,
                tokenizer_values,
                _prefixed({**tokenizer_tags, "trained": str(trained).lower()}),
                description,
            )
            model = self._create_version(
                self.model_name,
                model_dir,
                experiment,
                run_id,
                model_values,
                _prefixed(
                    {
                        **model_tags,
                        "trained": str(trained).lower(),
                        "max_context": str(max_context),
                        "tokenizer_name": self.tokenizer_name,
                        "tokenizer_version": str(tokenizer.version),
                        **({"note": note} if note else {}),
                        **{f"lineage.{k}": str(v) for k, v in (lineage or {}).items()},
                    }
                ),
                description,
            )
            finish_run(
                self.client, run_id, params={"model_version": model.version, "tokenizer_version": tokenizer.version}
            )
        except Exception:
            self.client.set_terminated(run_id, status="FAILED")
            raise
        if alias:
            self.promote(model.version, alias, reason=reason)
            return self.resolve(f"{self.model_name}@{alias}")
        return self.resolve(f"{self.model_name}/{model.version}")

    def _create_version(
        self,
        name: str,
        folder: Path,
        experiment: str,
        run_id: str,
        config: dict,
        tags: dict[str, str],
        description: str,
    ) -> ModelVersion:
        """A logged model holding ``folder`` (the registration run is its source), registered as a version."""
        logged = self.client.create_logged_model(
            experiment, name=name, source_run_id=run_id, params=_flat_params(config), tags=tags
        )
        try:
            self.client.log_model_artifacts(logged.model_id, str(folder))
        except Exception:
            self.client.finalize_logged_model(logged.model_id, LoggedModelStatus.FAILED)
            raise
        self.client.finalize_logged_model(logged.model_id, LoggedModelStatus.READY)
        version = self.client.create_model_version(
            name,
            source=f"models:/{logged.model_id}",
            run_id=run_id,
            tags=tags,
            description=description,
            model_id=logged.model_id,
        )
        # The logged model's page lists the versions named in this tag. A tracking server adds the entry
        # itself; a local store does not (MLflow's own mlflow.register_model adds it client-side).
        listed = json.loads(self.client.get_logged_model(logged.model_id).tags.get(MODEL_VERSIONS_TAG) or "[]")
        if not any(e["name"] == name and str(e["version"]) == str(version.version) for e in listed):
            entry = {"name": name, "version": str(version.version)}
            self.client.set_logged_model_tags(logged.model_id, {MODEL_VERSIONS_TAG: json.dumps([*listed, entry])})
        return version

    def _find_tokenizer(self, sha256: str) -> ModelVersion | None:
        """An existing tokenizer version with exactly these weights (tokenizers are shared by models)."""
        versions = self._versions(self.tokenizer_name)
        same = [v for v in versions if _tags(v).get("sha256") == sha256]
        return max(same, key=lambda v: int(v.version)) if same else None

    def _versions(self, name: str) -> list[ModelVersion]:
        try:
            return list(self.client.search_model_versions(f"name = '{name}'"))
        except MlflowException:
            return []

    # -- resolution ------------------------------------------------------------------------------------------

    def _version(self, name: str, ref: str) -> tuple[ModelVersion, str | None]:
        """(model version, alias or None) for a version number or an alias of ``name``."""
        try:
            if ref.isdigit():
                return self.client.get_model_version(name, ref), None
            return self.client.get_model_version_by_alias(name, ref), ref
        except MlflowException as exc:
            known = sorted(int(v.version) for v in self._versions(name)) if ref.isdigit() else None
            raise missing_version(name, ref, known) from exc

    def parse_ref(self, ref: str) -> tuple[str, str]:
        """``champion``, ``@champion``, ``3``, ``NAME@alias``, ``NAME/3``, ``models:/NAME@alias`` -> (name, ref)."""
        return parse_ref(ref, self.model_name)

    def resolve(self, ref: str | None = None) -> PinnedPair:
        """Pin a model reference (default: the configured alias) to versions with verified local copies."""
        name, which = self.parse_ref(ref or self.settings.model_alias)
        model, alias = self._version(name, which)
        tags = _tags(model)
        if "tokenizer_version" not in tags:
            raise RegistryError(f"{name} version {model.version} names no tokenizer version; register it again.")
        tokenizer, _ = self._version(tags["tokenizer_name"], tags["tokenizer_version"])
        return pair_of(
            _fields(model), _fields(tokenizer), alias, str(self._download(model)), str(self._download(tokenizer))
        )

    def _download(self, version: ModelVersion) -> Path:
        """A verified local copy of a version's folder, from the cache or freshly downloaded."""
        tags = _tags(version)
        folder = cache_folder(self.settings.model_cache, version.name, str(version.version), tags["sha256"])
        if folder.is_dir() and self._verified(folder, tags):
            return folder
        folder.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".download-", dir=folder.parent))
        try:
            try:
                # The version's storage location (a logged model's artifacts, or a run's for older versions).
                location = self.client.get_model_version_download_uri(version.name, version.version)
                fetched = Path(
                    download_artifacts(
                        artifact_uri=location, dst_path=str(staging), tracking_uri=self.settings.mlflow_tracking_uri
                    )
                )
            except (MlflowException, OSError) as exc:
                detail = " ".join(str(exc).split())
                raise RegistryError(
                    f"the artifacts of {version.name} version {version.version} at {version.source} cannot be "
                    f"downloaded ({detail}); they may have been deleted: register the checkpoint again."
                ) from None
            if not self._verified(fetched, tags):
                raise RegistryError(
                    f"checksum mismatch for {version.name} version {version.version}: the downloaded "
                    f"{WEIGHTS_FILE} or {CONFIG_FILE} differs from the SHA-256 recorded at registration. "
                    "The stored artifacts were changed or damaged; register the checkpoint again."
                )
            if folder.exists():  # a damaged cache entry, replaced
                shutil.rmtree(folder)
            try:
                os.replace(fetched, folder)
            except OSError:
                if not (folder.is_dir() and self._verified(folder, tags)):  # another process won the race
                    raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return folder

    @staticmethod
    def _verified(folder: Path, tags: dict[str, str]) -> bool:
        return intact(folder, tags.get("sha256"), tags.get("config_sha256"))

    # -- aliases ---------------------------------------------------------------------------------------------

    def holder(self, alias: str) -> str | None:
        try:
            return str(self.client.get_model_version_by_alias(self.model_name, alias).version)
        except MlflowException:
            return None

    def history(self, alias: str) -> list[Move]:
        """Every recorded move of ``alias`` (the latest ``HISTORY_RUNS``), oldest first."""
        return self._moves(alias).get(alias, [])

    def _moves(self, alias: str | None = None) -> dict[str, list[Move]]:
        """Alias moves of the model from the ``kronos-registry`` runs, per alias, oldest first."""
        experiment = self.client.get_experiment_by_name(REGISTRY_EXPERIMENT)
        if experiment is None:
            return {}
        wanted = f"params.model_name = '{self.model_name}'" + (f" and params.alias = '{alias}'" if alias else "")
        runs = self.client.search_runs(
            [experiment.experiment_id], wanted, max_results=HISTORY_RUNS, order_by=["attributes.start_time DESC"]
        )
        moves: dict[str, list[Move]] = {}
        for run in reversed(runs):
            p = run.data.params
            moves.setdefault(p["alias"], []).append(
                Move(p["at"], p["actor"], p["action"], p["from_version"] or None, p["to_version"], p["reason"])
            )
        return moves

    def _describe_history(self) -> None:
        """The registered model's description: what it holds, and a table of each alias's latest moves."""
        lines = [MODEL_DESCRIPTIONS["model"], ""]
        for alias, moves in sorted(self._moves().items()):
            lines += [
                f"**@{alias}**: moves, newest first (`kronos-flow models` lists them too)",
                "",
                "| when (UTC) | action | from | to | by | reason |",
                "| --- | --- | --- | --- | --- | --- |",
            ]
            for m in reversed(moves[-HISTORY_SHOWN:]):
                cells = [m.at, m.action, m.from_version or "-", m.to_version, m.by, m.reason]
                lines.append("| " + " | ".join(str(c).replace("|", "/").replace("\n", " ") for c in cells) + " |")
            lines.append("")
        self.client.update_registered_model(self.model_name, description="\n".join(lines))
        legacy = self.client.get_registered_model(self.model_name).tags or {}
        for key in [k for k in legacy if k.startswith(LEGACY_HISTORY_TAG)]:
            self.client.delete_registered_model_tag(self.model_name, key)

    def _move(self, alias: str, to_version: str, action: str, reason: str, actor: str | None) -> Move:
        previous = self.holder(alias)
        self.client.set_registered_model_alias(self.model_name, alias, to_version)
        move = Move(
            at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
            by=f"{actor} as {identity()}" if actor else identity(),
            action=action,
            from_version=previous,
            to_version=str(to_version),
            reason=reason,
        )
        experiment = ensure_experiment(self.client, REGISTRY_EXPERIMENT, self.settings.mlflow_artifact_root)
        record_run(
            self.client,
            experiment,
            f"{action} @{alias}: {previous or '-'} -> {to_version}",
            tags={"action": action, "actor": move.by, "alias": alias},
            params={
                "action": action,
                "alias": alias,
                "model_name": self.model_name,
                "from_version": previous or "",
                "to_version": str(to_version),
                "actor": move.by,
                "reason": reason,
                "at": move.at,
            },
        )
        self._describe_history()
        return move

    def promote(
        self,
        version: str | int,
        alias: str = "champion",
        reason: str = "promoted",
        actor: str | None = None,
        action: str = "promote",
    ) -> Move:
        """Point ``alias`` at model ``version`` (checked to exist and to name its tokenizer)."""
        model, _ = self._version(self.model_name, str(version))
        if "tokenizer_version" not in _tags(model):
            raise RegistryError(f"{self.model_name} version {version} names no tokenizer version; register it again.")
        return self._move(alias, str(model.version), action, reason, actor)

    def rollback(self, alias: str = "champion", reason: str = "rolled back", actor: str | None = None) -> Move:
        """Move ``alias`` back to the version it pointed at before its last move."""
        current = self.holder(alias)
        if current is None:
            raise RegistryError(f"{self.model_name} has no alias @{alias}; nothing to roll back.")
        for move in reversed(self.history(alias)):
            if move.to_version == current and move.from_version:
                return self._move(alias, move.from_version, "rollback", reason, actor)
        raise RegistryError(
            f"no earlier holder of @{alias} is recorded (it points at version {current}); promote an explicit "
            "version instead: kronos-flow promote VERSION"
        )

    # -- listing ---------------------------------------------------------------------------------------------

    def versions(self) -> list[dict]:
        """Every registered version of the model and the tokenizer, with aliases and kronos tags."""
        rows = []
        for name in (self.model_name, self.tokenizer_name):
            try:
                aliases = self.client.get_registered_model(name).aliases or {}
            except MlflowException:
                continue
            for version in sorted(self._versions(name), key=lambda v: int(v.version)):
                held = sorted(a for a, v in aliases.items() if str(v) == str(version.version))
                rows.append(
                    {
                        "name": name,
                        "version": str(version.version),
                        "aliases": held,
                        "run_id": version.run_id,
                        "created": datetime.fromtimestamp(version.creation_timestamp / 1000, timezone.utc).isoformat(
                            timespec="seconds"
                        ),
                        "tags": _tags(version),
                    }
                )
        return rows
