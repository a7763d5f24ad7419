"""Helpers for the container tests: a Docker daemon (the running one, or one the test starts and stops), the
images (ops/images.sh's local bases, then compose's builds) and one compose project per test module."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
COMPOSE = shutil.which("docker-compose")
DOCKER = shutil.which("docker")
DOCKERD = shutil.which("dockerd") or ("/usr/sbin/dockerd" if Path("/usr/sbin/dockerd").is_file() else None)


def docker_answers() -> bool:
    if DOCKER is None:
        return False
    return subprocess.run([DOCKER, "info"], capture_output=True, timeout=30).returncode == 0


class DockerDaemon:
    """The Docker daemon the tests use: the one already running, else `dockerd` started here (root only) and
    stopped by stop() with everything it started (its containerd too)."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.process: subprocess.Popen | None = None

    @staticmethod
    def unavailable() -> str | None:
        """Why no daemon can be had (None if one answers or can be started)."""
        if DOCKER is None or COMPOSE is None:
            return "docker and docker-compose are not installed (Debian: docker.io, docker-compose)"
        if docker_answers():
            return None
        if DOCKERD is None:
            return "no Docker daemon answers and dockerd is not installed"
        if os.geteuid() != 0:
            return "no Docker daemon answers and starting dockerd needs root"
        return None

    def ensure(self, timeout: float = 90.0) -> None:
        if docker_answers():
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        self.log = open(self.folder / "dockerd.log", "wb")
        # No iptables rules, no forwarding switch, no docker0: a default dockerd sets the host's FORWARD policy to
        # DROP (and keeps it after it stops), which cuts the bridges other tests build between network namespaces.
        # Compose's own network still joins its containers, published ports go through docker-proxy, and builds
        # and the gateway use the host's network.
        self.process = subprocess.Popen(
            [
                DOCKERD,
                "--pidfile",
                str(self.folder / "dockerd.pid"),
                "--iptables=false",
                "--ip-forward=false",
                "--bridge=none",
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"dockerd exited:\n{self.log_tail()}")
            if docker_answers():
                return
            time.sleep(0.5)
        self.stop()
        raise TimeoutError(f"dockerd did not answer in {timeout} s:\n{self.log_tail()}")

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join((self.folder / "dockerd.log").read_text(errors="replace").splitlines()[-lines:])

    def stop(self) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)  # dockerd stops its containers and its containerd
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(10)
        self.log.close()
        self.process = None


def local_base_images() -> dict[str, str]:
    """ops/images.sh: the local stand-ins for python:3.11-slim, redis and flower (built once, then reused)."""
    done = subprocess.run(
        [str(REPO / "ops" / "images.sh")], cwd=REPO, capture_output=True, text=True, timeout=900, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"ops/images.sh failed:\n{done.stderr[-3000:]}")
    return dict(line.split("=", 1) for line in done.stdout.split())


class ComposeProject:
    """compose.yaml under a project name of its own, with its own .env (passwords, free ports, the host's exported
    models mounted read-only), run from a copy in which only the gateway differs: on the host's network, to reach
    a PACS on 127.0.0.1 (its published ports dropped, which compose refuses beside network_mode host, and its
    --host/--port replaced). down() removes its containers, networks and volumes."""

    def __init__(self, folder: Path, images: dict[str, str], models_dir: Path, ports: dict[str, int]):
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self.name = f"lmstest{secrets.token_hex(4)}"
        self.redis_password = secrets.token_hex(16)
        self.flower_password = secrets.token_hex(8)
        self.gateway_token = secrets.token_hex(16)
        self.namespace = "lms"
        self.ports = ports
        self.credentials = folder / "dicomweb.json"
        self.credentials.write_text("{}")
        self.credentials.chmod(0o644)  # the gateway runs as uid 10001
        env = {
            "REDIS_PASSWORD": self.redis_password,
            "FLOWER_PASSWORD": self.flower_password,
            "LITEMEDSAM_API_TOKENS": f"tester:{self.gateway_token}",  # NAME:TOKEN: scopes submit and read
            "REDIS_PORT": str(ports["redis"]),
            "FLOWER_PORT": str(ports["flower"]),
            "GATEWAY_PORT": str(ports["gateway"]),
            "GATEWAY_DICOMWEB_CREDENTIALS": str(self.credentials),
            "LITEMEDSAM_MODELS": str(models_dir),
            "WORKER_THREADS": "1",
            "WORKER_CPUS": "1",
            **images,
        }
        self.env_file = folder / "compose.env"
        self.env_file.write_text("".join(f"{key}={value}\n" for key, value in env.items()))
        self.compose_file = folder / "compose.yaml"
        self.compose_file.write_text(json.dumps(self._gateway_on_host()))

    def _gateway_on_host(self) -> dict:
        import yaml

        config = yaml.safe_load((REPO / "compose.yaml").read_text())
        gateway = config["services"]["gateway"]
        port = self.ports["gateway"]
        gateway["command"] = [
            "--host=127.0.0.1" if a.startswith("--host=") else f"--port={port}" if a.startswith("--port=") else a
            for a in gateway["command"]
        ]
        del gateway["ports"]
        gateway["network_mode"] = "host"
        gateway["environment"]["LITEMEDSAM_BROKER"] = self.host_broker
        return config

    @property
    def host_broker(self) -> str:
        return f"redis://:{self.redis_password}@127.0.0.1:{self.ports['redis']}/0"

    def compose(self, *args: str, timeout: float = 900, check: bool = True) -> subprocess.CompletedProcess:
        command = [
            str(COMPOSE),
            "--project-directory",
            str(REPO),
            "--env-file",
            str(self.env_file),
            "-p",
            self.name,
            "-f",
            str(self.compose_file),
            "--profile",
            "gateway",
            *args,
        ]
        done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=timeout)
        if check and done.returncode != 0:
            raise RuntimeError(f"{' '.join(args)} failed ({done.returncode}):\n{done.stderr[-4000:]}")
        return done

    def containers(self, service: str | None = None) -> list[str]:
        args = ["ps", "-q"] + ([service] if service else [])
        return self.compose(*args).stdout.split()

    def logs(self, *services: str, tail: int = 40) -> str:
        return self.compose("logs", "--no-color", f"--tail={tail}", *services, check=False).stdout

    def down(self) -> None:
        self.compose("down", "-v", "--remove-orphans", "-t", "30", check=False)


def docker(*args: str, timeout: float = 120) -> str:
    done = subprocess.run([str(DOCKER), *args], capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        raise RuntimeError(f"docker {' '.join(args)} failed:\n{done.stderr[-2000:]}")
    return done.stdout
