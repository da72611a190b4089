"""The MLflow model registry: registration, pinned resolution, checksums, cache, promote and rollback."""

from __future__ import annotations

import json
import shutil

import pytest

from kronos_tasks.forecasting.engine import pinned_predictor
from kronos_tasks.model.presets import MODEL_PRESETS, random_model
from kronos_tasks.registry import Registry, RegistryError
from kronos_tasks.settings import Settings


def test_register_resolve_promote_and_roll_back(kronos_env, tiny_checkpoints):
    registry = Registry(kronos_env)
    (tok1, model1), (tok2, model2) = tiny_checkpoints
    first = registry.register(tok1, model1, alias="champion", trained=False)
    assert (first.model_version, first.tokenizer_version, first.alias, first.trained) == ("1", "1", "champion", False)
    second = registry.register(tok2, model2)
    assert second.model_version == "2" and second.alias is None
    assert registry.resolve().model_version == "1"

    registry.promote("2", reason="better backtest")
    pinned = registry.resolve("champion")
    assert (pinned.model_version, pinned.tokenizer_version) == ("2", "2")
    move = registry.rollback(reason="misbehaves")
    assert (move.from_version, move.to_version) == ("2", "1")
    assert registry.resolve("kronos-model@champion").model_version == "1"
    history = registry.history("champion")
    assert [(m.action, m.from_version, m.to_version, m.reason) for m in history] == [
        ("promote", None, "1", "registered"),
        ("promote", "1", "2", "better backtest"),
        ("rollback", "2", "1", "misbehaves"),
    ]
    rows = {(r["name"], r["version"]): r for r in registry.versions()}
    assert rows[("kronos-model", "1")]["aliases"] == ["champion"]
    tags = rows[("kronos-model", "2")]["tags"]
    assert tags["tokenizer_version"] == "2" and tags["trained"] == "true" and len(tags["sha256"]) == 64
    assert tags["n_layers"] == "2" and tags["s1_bits"] == "6" and tags["max_context"] == "512"
    # The moves are visible in MLflow: as a table in the registered model's description (newest first) and
    # as runs of kronos-registry; no raw JSON in its tags.
    model = registry.client.get_registered_model("kronos-model")
    table = [line for line in model.description.splitlines() if line.startswith("| 20")]
    assert [line.split(" | ")[1:4] for line in table] == [
        ["rollback", "2", "1"],
        ["promote", "1", "2"],
        ["promote", "-", "1"],
    ]
    assert not any(key.startswith("kronos.alias_history") for key in model.tags)
    # Each version comes from an MLflow 3 logged model that holds the checkpoint and points at its run.
    version = registry.client.get_model_version("kronos-model", "2")
    logged = registry.client.get_logged_model(pinned.model_logged_id)
    assert version.source == f"models:/{pinned.model_logged_id}" and logged.source_run_id == version.run_id
    assert logged.params["n_layers"] == "2" and logged.status.to_proto() == logged.status.READY.to_proto()
    assert json.loads(logged.tags["mlflow.modelVersions"]) == [{"name": "kronos-model", "version": "2"}]
    runs = registry.client.search_runs(
        [registry.client.get_experiment_by_name("kronos-registry").experiment_id], "tags.`kronos.action` = 'rollback'"
    )
    assert runs[0].data.params["from_version"] == "2" and runs[0].data.params["reason"] == "misbehaves"


def test_identical_tokenizer_is_registered_once(kronos_env, tiny_checkpoints, tmp_path):
    registry = Registry(kronos_env)
    (tok1, model1), (_, model2) = tiny_checkpoints
    registry.register(tok1, model1)
    again = registry.register(tok1, model2)
    assert again.model_version == "2" and again.tokenizer_version == "1"


def test_model_whose_bits_do_not_match_the_tokenizer_is_refused(kronos_env, tiny_checkpoints, tmp_path):
    (tok1, _), _ = tiny_checkpoints
    other = random_model({**MODEL_PRESETS["tiny"], "s2_bits": 5}).save_pretrained(tmp_path / "other")
    with pytest.raises(RegistryError, match="refusing to register.*s2_bits=5"):
        Registry(kronos_env).register(tok1, other)


def test_unknown_alias_and_version_say_what_to_do(kronos_env, tiny_checkpoints):
    registry = Registry(kronos_env)
    with pytest.raises(RegistryError, match="no alias @champion.*kronos-flow register"):
        registry.resolve()
    registry.register(*tiny_checkpoints[0])
    with pytest.raises(RegistryError, match=r"no version 7 \(versions: \[1\]\)"):
        registry.resolve("7")
    with pytest.raises(RegistryError, match="nothing to roll back"):
        registry.rollback()
    registry.promote("1")
    with pytest.raises(RegistryError, match="no earlier holder"):
        registry.rollback()


def test_cache_is_used_and_a_corrupted_entry_is_replaced(kronos_env, tiny_checkpoints):
    registry = Registry(kronos_env)
    pinned = registry.register(*tiny_checkpoints[0], alias="champion")
    weights = f"{pinned.model_path}/model.safetensors"
    before = (kronos_env.model_cache / "kronos-model").stat().st_mtime_ns
    assert registry.resolve().model_path == pinned.model_path  # served from the cache
    with open(weights, "r+b") as handle:  # damage the cached copy
        handle.seek(100)
        handle.write(b"\x00\xff\x00\xff")
    repaired = registry.resolve()
    assert repaired.model_path == pinned.model_path
    from kronos_tasks.hashing import sha256_file

    assert sha256_file(weights) == pinned.model_sha256
    assert (kronos_env.model_cache / "kronos-model").stat().st_mtime_ns >= before
    pinned_predictor(repaired, "cpu", 1)  # and it loads


def test_checksum_mismatch_of_the_stored_artifacts_fails_loudly(kronos_env, tiny_checkpoints):
    registry = Registry(kronos_env)
    pinned = registry.register(*tiny_checkpoints[0], alias="champion")
    stored = registry.client.get_model_version_download_uri("kronos-model", "1").removeprefix("file://")
    stored += "/model.safetensors"
    with open(stored, "r+b") as handle:
        handle.seek(200)
        handle.write(b"tampered")
    shutil.rmtree(pinned.model_path)  # force a download
    with pytest.raises(RegistryError, match="checksum mismatch for kronos-model version 1"):
        registry.resolve()


def test_missing_artifacts_say_what_to_do(kronos_env, tiny_checkpoints):
    registry = Registry(kronos_env)
    pinned = registry.register(*tiny_checkpoints[0], alias="champion")
    shutil.rmtree(registry.client.get_model_version_download_uri("kronos-model", "1").removeprefix("file://"))
    shutil.rmtree(pinned.model_path)
    with pytest.raises(RegistryError, match="cannot be downloaded.*register the checkpoint again"):
        registry.resolve()


def test_unreachable_server_fails_fast_with_advice(kronos_env):
    from conftest import free_port

    settings = Settings.from_env(
        {"KRONOS_HOME": str(kronos_env.home), "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{free_port()}"}
    )
    with pytest.raises(RegistryError, match="cannot reach the MLflow server.*MLFLOW_TRACKING_URI"):
        Registry(settings)


@pytest.mark.slow
def test_registry_through_a_real_mlflow_server(kronos_env, tiny_checkpoints, mlflow_server, tmp_path):
    settings = Settings.from_env(
        {
            "KRONOS_HOME": str(kronos_env.home),
            "MLFLOW_TRACKING_URI": mlflow_server,
            "KRONOS_MODEL_CACHE": str(tmp_path / "cache"),
        }
    )
    registry = Registry(settings)
    registry.register(*tiny_checkpoints[0], alias="champion")
    registry.register(*tiny_checkpoints[1])
    registry.promote("2")
    pinned = registry.resolve("champion")
    assert pinned.model_version == "2"
    # Downloaded through the server's artifact proxy, checksums verified, loaded.
    assert pinned_predictor(pinned, "cpu", 1).model.config.n_layers == 2
    assert registry.rollback().to_version == "1"
    # No local file:// root was configured, so the weights went to the server's own artifact store,
    # where a worker on another machine finds them too.
    experiments = registry.client.search_experiments()
    assert all(
        e.tags.get("mlflow.experimentKind") == "custom_model_development" for e in experiments if e.name != "Default"
    )
    stored = {p.name for p in (tmp_path / "server-artifacts").rglob("model.safetensors")}
    assert stored == {"model.safetensors"} and not (kronos_env.home / "mlartifacts").exists()


def test_alias_moves_record_the_authenticated_mlflow_user(kronos_env, tiny_checkpoints, monkeypatch):
    registry = Registry(kronos_env)
    (tok1, model1), (tok2, model2) = tiny_checkpoints
    registry.register(tok1, model1, alias="champion", trained=False)
    registry.register(tok2, model2)
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "alice")
    registry.promote("2", reason="better backtest", actor="airflow:manual__1")
    registry.rollback(reason="misbehaves")
    moves = registry.history("champion")
    assert [m.by for m in moves[1:]] == ["airflow:manual__1 as mlflow:alice", "mlflow:alice"]
