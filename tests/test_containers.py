"""The fleet in real containers: ops/images.sh's local bases, compose's images, `compose up` with 2 workers, a
batch from the host, Redis restarted with work queued, workers scaled while a batch runs, Flower's password, the
gateway container against an Orthanc on the host, non-root containers, no torch in the worker image.

Needs a Docker daemon (the running one, or `dockerd` started here as root and stopped at the end) and
docker-compose (Debian: docker.io, docker-compose); skipped with the reason otherwise. Models: the host's
exported models folder mounted read-only (no export in a container here). Select with `-m containers`.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import requests

from container_support import ComposeProject, DockerDaemon, docker, local_base_images
from fleet_support import many_boxes, mirrored_copy, read_segs, wait_until
from orthanc_support import Orthanc, free_port, make_series, orthanc_available
from producer import api
from producer.phantoms import write_phantoms
from worker.contract.settings import FleetSettings

WHY_NOT = DockerDaemon.unavailable()
pytestmark = [pytest.mark.containers, pytest.mark.skipif(WHY_NOT is not None, reason=str(WHY_NOT))]
REPO = Path(__file__).resolve().parents[1]
TIMEOUT = 600.0
IMAGES = ("litemedsam-fleet-worker:latest", "litemedsam-fleet-gateway:latest")


@pytest.fixture(scope="module")
def daemon(tmp_path_factory):
    started = DockerDaemon(tmp_path_factory.mktemp("dockerd"))
    started.ensure()
    yield started
    started.stop()


@pytest.fixture(scope="module")
def project(daemon, tmp_path_factory, real_models_dir):
    """compose.yaml built and up with 2 workers (1 CPU, 1 OpenVINO thread each), Redis and Flower."""
    ports = {"redis": free_port(), "flower": free_port(), "gateway": free_port()}
    fleet = ComposeProject(tmp_path_factory.mktemp("compose"), local_base_images(), real_models_dir, ports)
    try:
        fleet.compose("build", "worker", "gateway", timeout=1800)
        fleet.compose("up", "-d", "--scale", "worker=2", "redis", "worker", "flower")
        yield fleet
    finally:
        fleet.down()


def settings_of(fleet: ComposeProject) -> FleetSettings:
    return FleetSettings(broker_url=fleet.host_broker, namespace=fleet.namespace)


def answering_workers(fleet: ComposeProject) -> set[str]:
    """The worker nodes that answer a ping (none while the broker connection fails: after Redis restarted, a
    pooled connection of this process is closed by the server once, and the next try opens a new one)."""
    import redis
    from kombu.exceptions import OperationalError

    from worker.app import make_app

    app = make_app(settings_of(fleet))
    try:
        return {node for reply in app.control.ping(timeout=2.0) for node in reply}
    except (redis.exceptions.ConnectionError, OperationalError, OSError):
        return set()
    finally:
        app.close()


def wait_for_workers(fleet: ComposeProject, count: int, timeout: float = 180.0) -> set[str]:
    return wait_until(
        lambda: (nodes := answering_workers(fleet)) and len(nodes) == count and nodes,
        f"{count} worker containers answering",
        timeout,
        lambda: fleet.logs("worker"),
        interval=1.0,
    )


def scale_workers(fleet: ComposeProject, count: int) -> None:
    fleet.compose("up", "-d", "--no-recreate", "--scale", f"worker={count}", "worker")


@pytest.fixture(scope="module")
def studies(tmp_path_factory):
    """Three batches of challenge npz studies (2D and 3D phantoms, variants with new content each) and the
    embedded run's masks for all of them (1 OpenVINO thread, as the worker containers run)."""
    root = tmp_path_factory.mktemp("studies")
    phantoms = {path.stem: path for path in write_phantoms(root / "phantoms", with_gts=False)}
    batches = {name: root / name for name in ("first", "restart", "scale")}
    for folder in batches.values():
        folder.mkdir()
    ct2d = phantoms["2DBox_CT_phantom"]
    (batches["first"] / ct2d.name).write_bytes(ct2d.read_bytes())
    (batches["first"] / "3DBox_MR_phantom.npz").write_bytes(phantoms["3DBox_MR_phantom"].read_bytes())
    mirrored_copy(ct2d, batches["first"] / "2DBox_CT_mirrorx.npz", "x")
    mirrored_copy(ct2d, batches["first"] / "2DBox_CT_mirrory.npz", "y")
    for shift in range(1, 5):
        many_boxes(ct2d, batches["restart"] / f"2DBox_CT_restart{shift}.npz", copies=2, shift=shift)
    for shift in range(11, 19):  # 30 boxes each: tens of seconds on a 1-CPU container, the batch outlasts the scaling
        many_boxes(ct2d, batches["scale"] / f"2DBox_CT_scale{shift}.npz", copies=10, shift=shift)
    everything = root / "all"
    everything.mkdir()
    for folder in batches.values():
        for path in folder.iterdir():
            (everything / path.name).write_bytes(path.read_bytes())
    expected = root / "expected"
    subprocess.run(
        [sys.executable, "-m", "producer.cli", "submit", str(everything), "--out", str(expected), "--threads", "1"],
        cwd=REPO,
        check=True,
        capture_output=True,
        timeout=900,
    )
    return batches, expected


def assert_exactly_once_and_identical(fleet, batch, out: Path, expected: Path) -> None:
    assert batch.failed == 0 and batch.ok == len(batch.names), [o.error for o in batch.outcomes if not o.ok]
    assert sorted(o.name for o in batch.outcomes) == sorted(batch.names)  # one outcome per study
    runs = api.client_for(settings=settings_of(fleet)).ledger.runs(batch.batch_id)
    assert runs == dict.fromkeys(batch.names, 1), runs  # each study ran once: no duplicate, no redelivery
    for name in batch.names:
        assert np.array_equal(read_segs(out / f"{name}.npz"), read_segs(expected / f"{name}.npz")), name


# ------------------------------------------------------------------------------------------------------- tests


def test_every_container_runs_as_a_non_root_user_and_the_worker_image_holds_no_torch(project):
    wait_for_workers(project, 2)
    containers = project.containers()
    assert len(containers) == 4  # redis, flower, 2 workers
    for container in containers:
        uid = docker("exec", container, "id", "-u").strip()
        assert uid != "0", docker("inspect", "--format", "{{.Name}}", container)
    for image in IMAGES:
        assert docker("image", "inspect", "--format", "{{.Config.User}}", image).strip() == "fleet"
    probe = "import importlib.util as u; print([m for m in ('torch', 'torchvision', 'timm') if u.find_spec(m)])"
    assert docker("run", "--rm", "--entrypoint", "python", IMAGES[0], "-c", probe).strip() == "[]"


def test_a_batch_from_the_host_gives_the_embedded_runs_masks_bit_for_bit(project, studies, tmp_path):
    batches, expected = studies
    wait_for_workers(project, 2)
    batch = api.submit(batches["first"], out_dir=tmp_path, settings=settings_of(project), timeout=TIMEOUT)
    assert_exactly_once_and_identical(project, batch, tmp_path, expected)


def test_restarting_redis_with_work_queued_loses_nothing(project, studies, tmp_path):
    batches, expected = studies
    scale_workers(project, 0)
    settings = settings_of(project)
    batch = api.submit(batches["restart"], wait=False, settings=settings)
    assert {row.state for row in api.status(batch.batch_id, settings=settings).studies} == {"queued"}
    project.compose("restart", "-t", "30", "redis")
    wait_until(lambda: _redis_answers(project), "Redis back after its restart", 60, interval=0.5)
    assert {row.state for row in api.status(batch.batch_id, settings=settings).studies} == {"queued"}
    scale_workers(project, 2)
    done = api.results(batch.batch_id, tmp_path, settings=settings, timeout=TIMEOUT)
    assert_exactly_once_and_identical(project, done, tmp_path, expected)


def _redis_answers(fleet: ComposeProject) -> bool:
    import redis

    try:
        return bool(redis.Redis.from_url(fleet.host_broker, socket_connect_timeout=1).ping())
    except redis.exceptions.RedisError:
        return False


def test_scaling_the_workers_to_3_and_back_while_a_batch_runs_loses_and_repeats_nothing(project, studies, tmp_path):
    batches, expected = studies
    settings = settings_of(project)
    first_two = wait_for_workers(project, 2)
    batch = api.submit(batches["scale"], wait=False, settings=settings)
    scale_workers(project, 3)
    third = wait_for_workers(project, 3) - first_two

    def nodes_that_ran() -> set[str]:
        outcomes = api.results(batch.batch_id, settings=settings, wait=False).outcomes
        return {o.metrics.get("extra", {}).get("node") for o in outcomes}

    wait_until(lambda: third & nodes_that_ran(), "the third worker finishing a study", TIMEOUT, interval=1.0)
    scale_workers(project, 2)  # the third container stops warm: a study it runs finishes first
    assert len(wait_for_workers(project, 2)) == 2
    done = api.results(batch.batch_id, tmp_path, settings=settings, timeout=TIMEOUT)
    assert_exactly_once_and_identical(project, done, tmp_path, expected)
    assert third and third <= {o.metrics["extra"]["node"] for o in done.outcomes}


def test_flower_answers_only_with_its_password(project):
    url = f"http://127.0.0.1:{project.ports['flower']}/api/workers"

    def status(auth) -> int | None:
        try:
            return requests.get(url, auth=auth, timeout=10).status_code
        except requests.RequestException:
            return None

    wait_until(lambda: status(None) is not None, "Flower answering", 60, lambda: project.logs("flower"), 0.5)
    assert status(None) == 401
    assert status(("admin", "wrong-password")) == 401
    assert status(("admin", project.flower_password)) == 200


@pytest.mark.skipif(not orthanc_available(), reason="Orthanc is not installed")
def test_the_gateway_container_takes_a_job_from_a_pacs_on_the_host_and_stores_the_seg_back(project, tmp_path_factory):
    from test_gateway import PROMPTS, folder_run, seg_labels

    root = tmp_path_factory.mktemp("gateway-case")
    pacs = Orthanc(root / "orthanc")
    pacs.start()
    try:
        spec = make_series(root / "series", 10, 96)
        pacs.upload(sorted((root / "series").iterdir()))
        project.credentials.write_text(json.dumps({pacs.dicomweb: {"username": pacs.user, "password": pacs.password}}))
        project.compose("up", "-d", "gateway")
        (container,) = project.containers("gateway")
        assert docker("exec", container, "id", "-u").strip() != "0"
        url = f"http://127.0.0.1:{project.ports['gateway']}"
        headers = {"Authorization": f"Bearer {project.gateway_token}"}

        def healthy() -> bool:
            try:
                return requests.get(f"{url}/v1/health", timeout=2).json().get("mode") == "fleet"
            except (requests.RequestException, ValueError):
                return False

        wait_until(healthy, "the gateway container answering", 120, lambda: project.logs("gateway"), 0.5)
        assert requests.get(f"{url}/v1/jobs", timeout=10).status_code == 401
        body = {
            "source": {"dicomweb": pacs.dicomweb, "study": spec.study_uid, "series": spec.series_uid},
            "prompts": PROMPTS,
            "store": "source",
        }
        posted = requests.post(f"{url}/v1/jobs", json=body, headers=headers, timeout=30)
        assert posted.status_code == 202, posted.text
        job_id = posted.json()["id"]

        def finished() -> dict | None:
            job = requests.get(f"{url}/v1/jobs/{job_id}", headers=headers, timeout=30).json()
            return job if job["state"] in ("ok", "error") else None

        job = wait_until(finished, "the gateway's job", TIMEOUT, lambda: project.logs("gateway", "worker"), 0.5)
        assert job["state"] == "ok", job.get("error")
        stored = job["stored"]
        assert [s["0020000E"]["Value"][0] for s in pacs.seg_series(spec.study_uid)] == [stored["series_uid"]]
        seg = requests.get(f"{url}/v1/jobs/{job_id}/result", params={"format": "seg"}, headers=headers, timeout=30)
        assert seg.status_code == 200
        (root / "series" / "prompts.json").write_text(json.dumps(PROMPTS))
        series_files = sorted(p for p in (root / "series").iterdir() if p.suffix != ".json")
        reference = folder_run(root / "series", root / "folder-run")
        assert np.array_equal(seg_labels(seg.content, series_files), seg_labels(reference, series_files))
    finally:
        project.compose("stop", "-t", "30", "gateway", check=False)
        pacs.stop()
