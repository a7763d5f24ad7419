"""The deployment files hold together: compose.yaml parses and points at files and stages that exist.

What can be checked without Docker; tests/test_containers.py builds the images and runs the compose fleet.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
import tomllib

yaml = pytest.importorskip("yaml")
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((REPO / "compose.yaml").read_text())


def _stages(dockerfile: Path) -> set[str]:
    return set(re.findall(r"^FROM\s+\S+\s+AS\s+(\S+)", dockerfile.read_text(), re.MULTILINE | re.IGNORECASE))


def test_compose_services_reference_existing_files_and_stages(compose):
    assert {"redis", "worker", "flower"} <= set(compose["services"])
    for name, service in compose["services"].items():
        build = service.get("build")
        if build:
            dockerfile = REPO / build.get("context", ".") / build["dockerfile"]
            assert dockerfile.is_file(), f"{name}: {dockerfile} missing"
            assert build["target"] in _stages(dockerfile), f"{name}: no stage {build['target']}"


def test_redis_persists_and_always_needs_its_password(compose):
    redis = compose["services"]["redis"]
    command = " ".join(redis["command"])
    assert "--appendonly yes" in command and "--requirepass" in command
    assert redis["environment"]["REDIS_PASSWORD"].startswith("${REDIS_PASSWORD:?")  # compose refuses to start without
    assert all(port.startswith("${REDIS_BIND:-127.0.0.1}:") for port in redis["ports"])
    assert "redis-data:/data" in redis["volumes"] and "redis-data" in compose["volumes"]


def test_workers_scale_and_use_the_broker_with_its_password(compose):
    worker = compose["services"]["worker"]
    assert "container_name" not in worker and "ports" not in worker  # `--scale worker=N` needs both absent
    assert worker["environment"]["LITEMEDSAM_BROKER"].startswith("redis://:${REDIS_PASSWORD:?")
    assert worker["command"][:2] == ["worker", "start"]
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["worker"] == "worker.cli:main"
    flower = compose["services"]["flower"]["environment"]
    assert flower["CELERY_BROKER_URL"] == worker["environment"]["LITEMEDSAM_BROKER"]
    assert flower["LITEMEDSAM_NAMESPACE"] == worker["environment"]["LITEMEDSAM_NAMESPACE"]


def test_flower_uses_the_fleets_key_prefix(compose, tmp_path):
    """The Flower image has no project: its mounted celeryconfig.py, beside worker/contract/keys.py, must give the
    prefix the workers' app uses (run here as the container would import it)."""
    import shutil
    import sys

    from worker.app import celery_config
    from worker.contract.settings import FleetSettings

    flower = compose["services"]["flower"]
    mounts = dict(volume.split(":")[:2] for volume in flower["volumes"])
    folder = flower["environment"]["PYTHONPATH"]
    assert set(mounts.values()) == {f"{folder}/celeryconfig.py", f"{folder}/keys.py"}
    for source, target in mounts.items():
        shutil.copy(REPO / source, tmp_path / Path(target).name)
    read = subprocess.run(
        [sys.executable, "-c", "import celeryconfig; print(celeryconfig.broker_transport_options)"],
        cwd=tmp_path,
        env={"PYTHONPATH": str(tmp_path), "LITEMEDSAM_NAMESPACE": "tenantA"},
        capture_output=True,
        text=True,
        check=True,
    )
    expected = celery_config(FleetSettings(namespace="tenantA"))["broker_transport_options"]["global_keyprefix"]
    assert read.stdout.strip() == str({"global_keyprefix": expected})


def test_dockerfile_copies_what_exists_and_never_installs_torch_in_the_worker():
    dockerfile = (REPO / "ops" / "worker.Dockerfile").read_text()
    for source in re.findall(r"^COPY\s+(?!--from)(?:--\S+\s+)*(\S+(?:\s+\S+)*?)\s+\S+$", dockerfile, re.MULTILINE):
        for part in source.split():
            assert (REPO / part).exists(), f"COPY {part}: not in the repository"
    worker_stage = dockerfile.split("AS worker\n")[-1]
    assert "torch" not in worker_stage and 'pip install ".[worker]"' in dockerfile


def test_local_fleet_script_is_valid_bash():
    script = REPO / "ops" / "fleet" / "fleet.sh"
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0


def test_base_and_third_party_images_are_variables_defaulting_to_the_official_ones(compose):
    services = compose["services"]
    assert services["redis"]["image"] == "${REDIS_IMAGE:-redis:7.2-alpine}"
    assert services["flower"]["image"] == "${FLOWER_IMAGE:-mher/flower:2.0}"
    for name in ("worker", "gateway"):
        assert services[name]["build"]["args"]["PYTHON_IMAGE"] == "${PYTHON_IMAGE:-python:3.11-slim}"
        assert services[name]["build"]["network"] == "host"  # apt and pip as the host reaches them
    dockerfile = (REPO / "ops" / "worker.Dockerfile").read_text()
    assert "ARG PYTHON_IMAGE=python:3.11-slim" in dockerfile and "FROM ${PYTHON_IMAGE} AS base" in dockerfile
    printed = re.findall(r'^echo "(\w+)=\$', (REPO / "ops" / "images.sh").read_text(), re.MULTILINE)
    assert sorted(printed) == ["FLOWER_IMAGE", "PYTHON_IMAGE", "REDIS_IMAGE"]  # what ops/images.sh >> .env sets


def test_the_gateway_serves_behind_its_token_with_the_credentials_file_and_a_data_volume(compose):
    gateway, worker = compose["services"]["gateway"], compose["services"]["worker"]
    assert gateway["profiles"] == ["gateway"] and gateway["command"][:2] == ["producer", "serve"]
    flags = dict(arg.split("=", 1) for arg in gateway["command"][2:])
    parsed = (re.fullmatch(r"(.+):(/[^:]+)(?::ro)?", volume) for volume in gateway["volumes"])
    mounts = {found.group(2): found.group(1) for found in parsed if found}
    assert mounts[flags["--data-dir"]] == "gateway-data" and "gateway-data" in compose["volumes"]
    assert flags["--dicomweb-credentials"] in mounts
    assert gateway["environment"]["LITEMEDSAM_API_TOKENS"] == "${LITEMEDSAM_API_TOKENS:-}"  # none: it refuses to start
    assert gateway["environment"]["LITEMEDSAM_BROKER"] == worker["environment"]["LITEMEDSAM_BROKER"]
    assert all(port.startswith("${GATEWAY_BIND:-127.0.0.1}:") for port in gateway["ports"])


def test_every_service_runs_as_a_non_root_user(compose):
    assert compose["services"]["redis"]["user"] == "redis"  # the official image would run `sh -c` as root
    dockerfile = (REPO / "ops" / "worker.Dockerfile").read_text()
    for stage in ("gateway", "worker"):
        body = dockerfile.split(f"AS {stage}\n")[1].split("\nFROM ")[0]
        assert "USER fleet" in body, stage
    for local in ("redis", "flower"):
        assert re.search(r"^USER (redis|flower)$", (REPO / "ops" / "images" / f"{local}.Dockerfile").read_text(), re.M)
