"""Bring up docker/compose.yaml with the machine's container engine, for tests/test_stack.py.

Docker with its compose plugin where a daemon answers; otherwise podman with podman-compose (installed
from Debian's packages and PyPI when missing, run as root with runc and docker/local-bases/containers.conf).
Images that cannot be pulled (no registry reachable) are replaced by the stand-ins in docker/local-bases,
built on a Debian bookworm root made with debootstrap; the test output says so. Every wait is bounded.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCKER = ROOT / "docker"
BASES = DOCKER / "local-bases"
CACHE = Path(os.environ.get("KRONOS_STACK_CACHE", "/var/tmp/kronos-flow-stack"))
STAND_INS = {  # image in compose.yaml / Dockerfile -> its Containerfile in docker/local-bases
    "python:3.11-slim-bookworm": "python.Containerfile",
    "postgres:16-bookworm": "postgres.Containerfile",
    "redis:7-bookworm": "redis.Containerfile",
}
MINBASE = "localhost/kronos-local/bookworm-minbase:latest"
PROJECT_IMAGE = "kronos-flow:cpu"


class StackUnavailable(Exception):
    """No container engine can be had here; the message says why."""


def say(message: str) -> None:
    print(f"[stack] {message}", file=sys.stderr, flush=True)


def run(command: list[str], timeout: float = 600, check: bool = True, **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run(command, capture_output=True, text=True, timeout=timeout, **kwargs)
    if check and result.returncode != 0:
        raise RuntimeError(
            f"{' '.join(command)} failed ({result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
        )
    return result


@dataclass
class Engine:
    """A container engine and its compose command."""

    name: str  # docker or podman
    compose: list[str]
    env: dict[str, str] = field(default_factory=dict)

    def __call__(self, *args: str, timeout: float = 600, check: bool = True) -> subprocess.CompletedProcess:
        return run([self.name, *args], timeout=timeout, check=check, env={**os.environ, **self.env})


def _docker() -> Engine | None:
    if not shutil.which("docker"):
        return None
    if run(["docker", "info"], timeout=20, check=False).returncode != 0:
        return None
    if run(["docker", "compose", "version"], timeout=20, check=False).returncode != 0:
        return None
    return Engine("docker", ["docker", "compose"])


def _podman() -> Engine:
    missing = [tool for tool in ("podman", "runc", "debootstrap", "iptables") if not shutil.which(tool)]
    if missing:
        if os.geteuid() != 0 or not shutil.which("apt-get"):
            raise StackUnavailable(
                f"no Docker daemon answers and {missing} cannot be installed (needs root and apt-get)"
            )
        say(f"installing {missing} from Debian's packages")
        run(
            [
                "apt-get",
                "install",
                "-y",
                "--no-install-recommends",
                "podman",
                "runc",
                "debootstrap",
                "iptables",
                "netavark",
                "aardvark-dns",
            ],
            timeout=900,
        )
    compose = Path(sys.executable).with_name("podman-compose")
    if not compose.exists():
        say("installing podman-compose from PyPI")
        run([sys.executable, "-m", "pip", "install", "--quiet", "-c", str(ROOT / "constraints.txt"), "podman-compose"])
    if os.geteuid() != 0:
        raise StackUnavailable("podman runs the stack as root here (runc, host networking of published ports)")
    return Engine("podman", [str(compose)], {"CONTAINERS_CONF": str(BASES / "containers.conf")})


def engine() -> Engine:
    """Docker where a daemon answers, else podman (installed if needed); StackUnavailable if neither."""
    return _docker() or _podman()


def _minbase(eng: Engine) -> None:
    if eng("image", "exists", MINBASE, check=False).returncode == 0:
        return
    root = CACHE / "bookworm-minbase"
    if not (root / "etc/debian_version").exists():
        mirror = _debian_mirror()
        say(f"building a Debian bookworm root with debootstrap from {mirror}")
        shutil.rmtree(root, ignore_errors=True)
        root.parent.mkdir(parents=True, exist_ok=True)
        run(["debootstrap", "--variant=minbase", "bookworm", str(root), mirror], timeout=900)
    tar = subprocess.Popen(["tar", "-C", str(root), "-c", "."], stdout=subprocess.PIPE)
    run([eng.name, "import", "-", MINBASE], stdin=tar.stdout, timeout=600, env={**os.environ, **eng.env})
    tar.wait(timeout=60)


def _debian_mirror() -> str:
    for path in [Path("/etc/apt/sources.list"), *Path("/etc/apt/sources.list.d").glob("*")]:
        if path.is_file():
            found = re.search(r"(?:URIs:\s*|deb\s+(?:\[[^]]*\]\s+)?)(https?://\S+/debian)\b", path.read_text())
            if found:
                return found.group(1)
    return "http://deb.debian.org/debian"


def base_images(eng: Engine) -> list[str]:
    """Make sure every base image exists: pulled where a registry answers, else the local stand-in.
    Returns the images that are stand-ins."""
    used = []
    for image, containerfile in STAND_INS.items():
        found = eng("image", "inspect", image, check=False)
        stand_in = found.returncode == 0 and bool(
            (json.loads(found.stdout)[0].get("Config", {}).get("Labels") or {}).get("org.kronos-flow.stand-in-for")
        )
        if found.returncode == 0 and not stand_in:
            continue  # the real image
        if not stand_in and eng("pull", image, timeout=60, check=False).returncode == 0:
            continue
        # A stand-in is (re)built every time: the layer cache makes that quick when nothing changed.
        _minbase(eng)
        say(f"{image} cannot be pulled here: building the local stand-in docker/local-bases/{containerfile}")
        context, extra = BASES, []
        if image.startswith("python:"):
            context, prefix = _python_context()
            extra = ["--build-arg", f"PYTHON_PREFIX={prefix}"]
        eng("build", "-t", image, *extra, "-f", str(BASES / containerfile), str(context), timeout=900)
        used.append(image)
    return used


def _python_context() -> tuple[Path, str]:
    """A build context holding this machine's CPython (the one running the tests), without site-packages."""
    prefix = Path(sys.base_prefix)
    if sys.version_info[:2] != (3, 11):
        raise StackUnavailable(
            f"the python stand-in copies the running CPython, which is {sys.version.split()[0]}, not 3.11"
        )
    context = CACHE / "python-context"
    shutil.rmtree(context, ignore_errors=True)
    skip = shutil.ignore_patterns("site-packages", "test", "__pycache__", "idlelib", "tkinter", "turtledemo")
    shutil.copytree(prefix, context / "python", symlinks=True, ignore=skip)
    return context, str(prefix)


def _torch_index() -> Path | None:
    """A local package index holding the CPU build of torch 2.13.0 and its dependencies, where pip on this
    machine resolves torch to a CPU wheel (as on these CI machines); None elsewhere (use the real index)."""
    index = CACHE / "torch-index"
    wheels = index / "wheels"
    if not any(wheels.glob("torch-2.13.0+cpu-*.whl")):
        wheels.mkdir(parents=True, exist_ok=True)
        run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--quiet",
                "-d",
                str(wheels),
                "torch==2.13.0",
                "setuptools>=77.0.3",
            ],
            timeout=900,
        )
        if not any(wheels.glob("torch-2.13.0+cpu-*.whl")):
            shutil.rmtree(index)
            return None
    for wheel in wheels.glob("*.whl"):
        project = re.sub(r"[-_.]+", "-", wheel.name.split("-")[0]).lower()
        folder = index / "simple" / project
        folder.mkdir(parents=True, exist_ok=True)
        links = "".join(
            f'<a href="../../wheels/{w.name}">{w.name}</a>\n' for w in wheels.glob(f"{wheel.name.split('-')[0]}-*.whl")
        )
        (folder / "index.html").write_text(f"<html><body>\n{links}</body></html>\n")
    return index


def project_image(eng: Engine) -> None:
    """Build the project's image with its own Dockerfile (torch from the local index where needed)."""
    command = ["build", "-t", PROJECT_IMAGE, "-f", str(DOCKER / "Dockerfile")]
    index = _torch_index()
    if index is not None:
        say(f"torch's own index cannot be used here: installing its CPU wheel from {index}")
        command += ["--build-arg", "TORCH_INDEX_URL=file:///torch-index/simple", "--volume", f"{index}:/torch-index:ro"]
    bundle = Path("/etc/ssl/certs/ca-certificates.crt")
    if eng.name == "podman" and bundle.is_file():  # this machine's CA bundle, for pip behind its TLS proxy
        command += ["--volume", f"{bundle}:{bundle}:ro", "--env", f"PIP_CERT={bundle}"]
    started = time.monotonic()
    eng(*command, str(ROOT), timeout=2400)
    say(f"built {PROJECT_IMAGE} in {time.monotonic() - started:.0f} s")


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def write_env(path: Path) -> dict[str, str]:
    """A docker/.env for a test stack: fresh secrets, free loopback ports, forecasts on the CPU worker."""
    from cryptography.fernet import Fernet

    values = {
        name: secrets.token_urlsafe(24)
        for name in (
            "POSTGRES_PASSWORD",
            "AIRFLOW_DB_PASSWORD",
            "MLFLOW_DB_PASSWORD",
            "KRONOS_OWNER_DB_PASSWORD",
            "KRONOS_WORKER_DB_PASSWORD",
            "REDIS_PASSWORD",
            "AIRFLOW_JWT_SECRET",
            "AIRFLOW_API_SECRET_KEY",
            "AIRFLOW_ADMIN_PASSWORD",
            "MLFLOW_ADMIN_PASSWORD",
            "MLFLOW_FLASK_SECRET_KEY",
        )
    }
    values.update(
        {
            "AIRFLOW_FERNET_KEY": Fernet.generate_key().decode(),
            "AIRFLOW_ADMIN_USER": "admin",
            "MLFLOW_ADMIN_USER": "admin",
            "MLFLOW_PUBLIC_HOST": "mlflow.kronos.test",
            "KRONOS_PUBLISH_ADDRESS": "127.0.0.1",
            "KRONOS_POSTGRES_PORT": str(free_port()),
            "KRONOS_REDIS_PORT": str(free_port()),
            "KRONOS_MLFLOW_PORT": str(free_port()),
            "KRONOS_AIRFLOW_PORT": str(free_port()),
            "KRONOS_DATA_HOST_DIR": str(ROOT / "kronos_tasks" / "sample_data"),
            "KRONOS_SCHEDULE": "none",  # only the runs the test triggers
            "KRONOS_GPU_QUEUE": "default",  # no GPU here: forecast tasks go to the CPU worker
        }
    )
    path.write_text("".join(f"{k}={v}\n" for k, v in values.items()))
    path.chmod(0o600)
    return values


@dataclass
class Stack:
    """A running compose project."""

    eng: Engine
    env_file: Path
    project: str

    def compose(self, *args: str, timeout: float = 900, check: bool = True) -> subprocess.CompletedProcess:
        command = [
            *self.eng.compose,
            "-f",
            str(DOCKER / "compose.yaml"),
            "--env-file",
            str(self.env_file),
            "-p",
            self.project,
            *args,
        ]
        return run(command, timeout=timeout, check=check, env={**os.environ, **self.eng.env}, cwd=DOCKER)

    def container(self, service: str) -> str:
        names = self.eng("ps", "-a", "--format", "{{.Names}}").stdout.split()
        found = [
            n
            for n in names
            if n.startswith(f"{self.project}") and service in n and re.search(rf"[-_]{re.escape(service)}[-_]\d+$", n)
        ]
        if not found:
            raise RuntimeError(f"no container of service {service} in {names}")
        return found[0]

    def healthy(self, service: str) -> bool:
        name = self.container(service)
        if self.eng.name == "podman":  # podman 4 without systemd runs no health checks by itself
            return self.eng("healthcheck", "run", name, timeout=120, check=False).returncode == 0
        state = json.loads(self.eng("inspect", name).stdout)[0]["State"]
        return state.get("Health", {}).get("Status") == "healthy"

    def wait_healthy(self, services: list[str], timeout: float) -> None:
        deadline, waiting = time.monotonic() + timeout, list(services)
        while waiting:
            waiting = [s for s in waiting if not self.healthy(s)]
            if waiting and time.monotonic() > deadline:
                logs = "\n".join(self.logs(s, 40) for s in waiting)
                raise RuntimeError(f"not healthy after {timeout:.0f} s: {waiting}\n{logs}")
            if waiting:
                time.sleep(3)

    def wait_exit(self, service: str, timeout: float) -> int:
        name, deadline = self.container(service), time.monotonic() + timeout
        while time.monotonic() < deadline:
            state = json.loads(self.eng("inspect", name).stdout)[0]["State"]
            if state.get("Status") == "exited" or state.get("Running") is False and state.get("Status") != "created":
                return int(state.get("ExitCode", 1))
            time.sleep(3)
        raise RuntimeError(f"{service} still running after {timeout:.0f} s\n{self.logs(service, 80)}")

    def logs(self, service: str, lines: int = 60) -> str:
        try:
            name = self.container(service)
        except RuntimeError as exc:
            return str(exc)
        out = self.eng("logs", "--tail", str(lines), name, check=False)
        return f"--- {service} ---\n{out.stdout}{out.stderr}"

    def down(self) -> None:
        self.compose("down", "-v", "--timeout", "20", timeout=600, check=False)
