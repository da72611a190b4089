"""The production compose file and images, checked without a Docker engine: structure, settings, secrets."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from kronos_tasks.settings import VARIABLES

DOCKER = Path(__file__).resolve().parents[1] / "docker"
COMPOSE = yaml.safe_load((DOCKER / "compose.yaml").read_text())
SERVICES = COMPOSE["services"]
LONG_RUNNING = [name for name in SERVICES if name != "airflow-init"]
SECRET_NAME = re.compile(r"PASSWORD|SECRET|FERNET|TOKEN|_KEY\b|KEY$")
REQUIRED = re.compile(r"^\$\{(\w+):\?[^}]+\}$")


def environment(service: dict) -> dict[str, str]:
    env = service.get("environment", {})
    return dict(env) if isinstance(env, dict) else dict(item.split("=", 1) for item in env)


def references(text: str) -> set[str]:
    return set(re.findall(r"\$\{(\w+)", text))


def test_every_component_of_the_topology_is_there():
    assert {
        "postgres",
        "redis",
        "mlflow",
        "airflow-init",
        "airflow-apiserver",
        "airflow-scheduler",
        "airflow-dag-processor",
        "airflow-triggerer",
        "airflow-worker",
        "airflow-worker-gpu",
    } <= set(SERVICES)


@pytest.mark.parametrize("name", list(SERVICES))
def test_services_have_an_image_a_command_and_valid_dependencies(name):
    service = SERVICES[name]
    assert service.get("image") or service.get("build"), f"{name}: no image or build"
    if name.startswith(("airflow", "mlflow")):
        assert service.get("command"), f"{name}: no command"
    for dependency, condition in service.get("depends_on", {}).items():
        assert dependency in SERVICES, f"{name} depends on unknown {dependency}"
        assert condition["condition"] in {"service_healthy", "service_completed_successfully"}
        if condition["condition"] == "service_healthy":
            assert "healthcheck" in SERVICES[dependency], f"{name} waits for {dependency}, which has no health check"


@pytest.mark.parametrize("name", LONG_RUNNING)
def test_long_running_services_have_health_checks_and_restart(name):
    service = SERVICES[name]
    assert service["healthcheck"]["test"], name
    assert service["restart"] in {"unless-stopped", "always"}, name


def test_airflow_runs_celery_on_redis_with_postgres_metadata_and_routes_gpu_work():
    env = environment(SERVICES["airflow-scheduler"])
    assert env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
    assert env["AIRFLOW__CELERY__BROKER_URL"].endswith("@redis:6379/0")
    assert (
        env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].startswith("postgresql")
        and "/airflow" in env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"]
    )
    assert env["KRONOS_DB_URL"].endswith("@postgres:5432/kronos") and env["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
    assert "@postgres:5432/mlflow" in " ".join(SERVICES["mlflow"]["command"])
    cpu, gpu = SERVICES["airflow-worker"]["command"], SERVICES["airflow-worker-gpu"]["command"]
    assert cpu[cpu.index("--queues") + 1] == "default"
    assert gpu[gpu.index("--queues") + 1] == "${KRONOS_GPU_QUEUE:-gpu}"
    devices = SERVICES["airflow-worker-gpu"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"]
    assert SERVICES["airflow-worker-gpu"]["build"]["args"]["TORCH_INDEX_URL"].endswith("/cu128")
    init = "\n".join(SERVICES["airflow-init"]["command"])
    assert (
        "airflow db migrate" in init
        and "kronos-flow init" in init
        and 'airflow pools set "$${KRONOS_GPU_POOL}" "$${KRONOS_GPU_POOL_SLOTS}"' in init
    )
    assert {"postgres-data", "mlflow-artifacts", "redis-data"} <= set(COMPOSE["volumes"])
    assert any(v.startswith("mlflow-artifacts:") for v in SERVICES["mlflow"]["volumes"])


def test_kronos_variables_in_compose_are_the_ones_the_settings_module_reads():
    known = {v.env for v in VARIABLES} | {"MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"}  # MLflow's client
    for name, service in SERVICES.items():
        if name in ("postgres", "mlflow"):  # not kronos-flow processes: their variables are the servers' own
            continue
        for key in environment(service):
            if key.startswith("KRONOS_") or key.startswith("MLFLOW_"):
                assert key in known, f"{name}: {key} is not read by kronos_tasks.settings"
    used = set(environment(SERVICES["airflow-scheduler"]))
    assert {"KRONOS_DB_URL", "MLFLOW_TRACKING_URI", "KRONOS_GPU_QUEUE", "KRONOS_GPU_POOL", "KRONOS_HOME"} <= used


def test_no_secret_has_a_default():
    text = (DOCKER / "compose.yaml").read_text()
    for name, service in SERVICES.items():
        for key, value in environment(service).items():
            value = str(value)
            if SECRET_NAME.search(key) and not key.endswith("_FILE"):  # *_FILE names a path, not a secret
                assert REQUIRED.match(value), f"{name}: {key} must come from docker/.env as ${{{key}:?...}}"
            for password in re.findall(r"://[^:/@]*:([^@]+)@", value):
                assert REQUIRED.match(password), f"{name}: {key} embeds a password that is not a required variable"
    # A password-like variable never appears with a default value anywhere in the file.
    assert not re.search(r"\$\{\w*(PASSWORD|SECRET|FERNET|KEY)\w*:-", text)
    example = dict(
        line.split("=", 1)
        for line in (DOCKER / ".env.example").read_text().splitlines()
        if line and not line.startswith("#")
    )
    for key, value in example.items():
        if SECRET_NAME.search(key):
            assert value == "", f".env.example ships a value for the secret {key}"
    assert references(text) - {"HOSTNAME"} <= set(example), "every variable compose reads is in .env.example"


def test_images_install_pinned_torch_first_and_carry_no_secrets():
    dockerfile = (DOCKER / "Dockerfile").read_text()
    torch_line = dockerfile.index('pip install "torch==2.13.0" --index-url "${TORCH_INDEX_URL}"')
    assert torch_line < dockerfile.index("pip install -c constraints.txt")
    assert not re.search(r"(PASSWORD|SECRET|TOKEN)\s*=", dockerfile)
    template = yaml.safe_load((DOCKER / "pod_template_gpu.yaml").read_text())
    container = template["spec"]["containers"][0]
    assert container["name"] == "base" and container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert "COPY docker/pod_template_gpu.yaml" in dockerfile


def test_broker_and_databases_need_passwords_and_publish_on_loopback_by_default():
    env = environment(SERVICES["airflow-worker-gpu"])
    assert env["AIRFLOW__CELERY__BROKER_URL"].startswith("redis://:${REDIS_PASSWORD:?")
    assert "--requirepass" in SERVICES["redis"]["command"]
    assert int(env["AIRFLOW__CELERY_BROKER_TRANSPORT_OPTIONS__VISIBILITY_TIMEOUT"]) > 2 * 3600
    for name in ("postgres", "redis"):
        assert all(port.startswith("${KRONOS_PUBLISH_ADDRESS:-127.0.0.1}:") for port in SERVICES[name]["ports"]), name


def test_extra_gpu_host_override_reaches_every_service_the_worker_talks_to():
    override = yaml.safe_load((DOCKER / "compose.gpu-host.yaml").read_text())
    assert set(override["services"]) == {"airflow-worker-gpu"}
    mapped = {entry.split(":", 1)[0] for entry in override["services"]["airflow-worker-gpu"]["extra_hosts"]}
    env = environment(SERVICES["airflow-worker-gpu"])
    hosts = {host for value in env.values() for host in re.findall(r"://(?:[^@]*@)?([a-z][\w-]*):\d+", str(value))}
    assert hosts == {"postgres", "redis", "mlflow", "airflow-apiserver"}, hosts
    assert hosts <= mapped, f"the override does not map {hosts - mapped} to the main host"


def test_kubernetes_executor_accepts_the_gpu_pod_template_and_the_tasks_executor_config():
    from airflow.providers.cncf.kubernetes.pod_generator import PodGenerator

    from kronos_tasks.settings import Settings, gpu_task_arguments

    path = DOCKER / "pod_template_gpu.yaml"
    pod = PodGenerator.deserialize_model_file(str(path))
    base = pod.spec.containers[0]
    assert base.name == "base" and base.resources.limits["nvidia.com/gpu"] == "1"
    assert {e.name for e in base.env} >= {"KRONOS_DEVICE", "KRONOS_DB_URL", "MLFLOW_TRACKING_URI"}
    assert all(e.value_from for e in base.env if e.name != "KRONOS_DEVICE"), "secrets come from the cluster"
    config = gpu_task_arguments(Settings.from_env({"KRONOS_GPU_POD_TEMPLATE": str(path)}))["executor_config"]
    PodGenerator.from_obj(config)  # what the executor does with a task's executor_config; raises if invalid
    assert config["pod_template_file"] == str(path)


def test_mlflow_requires_a_user_and_is_published_on_loopback_by_default():
    mlflow = SERVICES["mlflow"]
    assert "--app-name=basic-auth" in mlflow["command"]
    env = environment(mlflow)
    assert env["MLFLOW_AUTH_CONFIG_PATH"] == "/opt/kronos-flow/docker/mlflow-auth.ini"
    assert REQUIRED.match(env["MLFLOW_AUTH_ADMIN_PASSWORD"]) and REQUIRED.match(env["MLFLOW_FLASK_SERVER_SECRET_KEY"])
    assert all(port.startswith("${KRONOS_PUBLISH_ADDRESS:-127.0.0.1}:") for port in mlflow["ports"])
    assert all(p.startswith("${KRONOS_PUBLISH_ADDRESS:-127.0.0.1}:") for p in SERVICES["airflow-apiserver"]["ports"])
    hosts = next(a for a in mlflow["command"] if a.startswith("--allowed-hosts="))
    assert "${MLFLOW_PUBLIC_HOST:-localhost}" in hosts
    for name in ("airflow-worker", "airflow-worker-gpu", "airflow-scheduler"):
        worker = environment(SERVICES[name]) if name in SERVICES else {}
        if worker:
            assert REQUIRED.match(worker["MLFLOW_TRACKING_PASSWORD"]), name
    ini = (DOCKER / "mlflow-auth.ini").read_text()
    assert "admin_password" not in ini.replace("MLFLOW_AUTH_ADMIN_PASSWORD", "")
    assert "/mlflow-auth.ini" in (DOCKER / "Dockerfile").read_text()


def test_each_service_connects_as_its_own_database_role_and_only_init_migrates():
    common = environment(SERVICES["airflow-scheduler"])
    assert "://airflow:${AIRFLOW_DB_PASSWORD:?" in common["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"]
    assert "://kronos_worker:${KRONOS_WORKER_DB_PASSWORD:?" in common["KRONOS_DB_URL"]
    assert "://kronos_owner:${KRONOS_OWNER_DB_PASSWORD:?" in environment(SERVICES["airflow-init"])["KRONOS_DB_URL"]
    mlflow_store = next(a for a in SERVICES["mlflow"]["command"] if a.startswith("--backend-store-uri="))
    assert "://mlflow:${MLFLOW_DB_PASSWORD:?" in mlflow_store
    text = (DOCKER / "compose.yaml").read_text()
    assert text.count("${POSTGRES_PASSWORD") == 1  # the superuser's password reaches the PostgreSQL container only
    assert environment(SERVICES["postgres"])["POSTGRES_USER"] == "postgres"
    for name, service in SERVICES.items():
        if name.startswith("airflow"):
            assert "SIMPLE_AUTH_MANAGER" not in " ".join(environment(service)), name
    assert common["AIRFLOW__CORE__AUTH_MANAGER"].endswith("fab_auth_manager.FabAuthManager")
    init = " ".join(SERVICES["airflow-init"]["command"])
    assert "airflow fab-db migrate" in init and "airflow users create" in init and "--role Admin" in init


def test_worker_health_checks_work_without_a_hostname_variable_and_artifacts_go_through_the_server():
    # podman's exec sessions (which run health checks) carry no HOSTNAME; $(hostname) works under both engines.
    for name in ("airflow-worker", "airflow-worker-gpu"):
        check = " ".join(SERVICES[name]["healthcheck"]["test"])
        assert "$$(hostname)" in check and "HOSTNAME" not in check, name
    assert environment(SERVICES["airflow-scheduler"])["KRONOS_MLFLOW_ARTIFACT_ROOT"] == "mlflow-artifacts:/"
    assert "--serve-artifacts" in SERVICES["mlflow"]["command"]
    ignored = (DOCKER.parent / ".gitignore").read_text().splitlines()
    assert "docker/.env" in ignored  # the secrets file made by `cp docker/.env.example docker/.env`
