"""The hospital gateway against a real PACS: Orthanc with DICOMweb and HTTP auth, `producer serve` as a process,
the real LiteMedSAM model (1 OpenVINO thread), real Redis and a real worker process for the fleet path.

Small series (8-12 slices of 64-96 px, RLE-compressed CT built with pydicom) keep the file within a few minutes.
"""

from __future__ import annotations

import io
import json
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import highdicom as hd
import numpy as np
import pytest
import requests

from dicom_factory import SeriesSpec
from orthanc_support import (
    REJECT_SEG_PATIENT,
    GatewayProcess,
    Orthanc,
    free_port,
    make_series,
    orthanc_available,
    phantom,
)
from producer.formats.dicom import read_layout

pytestmark = [pytest.mark.model, pytest.mark.skipif(not orthanc_available(), reason="Orthanc is not installed")]
TOKEN = "gateway-test-token-0123456789abcdef"
REPO = Path(__file__).resolve().parents[1]
JOBS_PAGE_SHOT = REPO / "test-artifacts" / "gateway" / "jobs-page.png"
ENGINE_MAX_VOXELS = 200_000  # the gateway's engine refuses bigger images (the "engine refuses" case)
DOWN_ROOT = f"http://127.0.0.1:{free_port()}/dicom-web"  # allowed (--dicomweb-allow), nothing listens there
PROMPTS = {
    "modality": "CT",
    "boxes": [
        {"label": "organ", "voxel": [30, 34, 2, 62, 64, 7]},
        {"label": "body edge", "voxel": [6, 10, 3, 40, 40, 5]},
    ],
}


def seg_labels(seg_path_or_bytes, series_files) -> np.ndarray:
    data = io.BytesIO(seg_path_or_bytes) if isinstance(seg_path_or_bytes, bytes) else seg_path_or_bytes
    seg = hd.seg.segread(data)
    uids = list(read_layout(series_files).slice_uids)
    return seg.get_pixels_by_source_instance(uids, combine_segments=True)


def folder_run(series_dir: Path, out: Path) -> Path:
    """`producer submit` on the series folder (embedded, 1 thread, the gateway's thread count)."""
    subprocess.run(
        [sys.executable, "-m", "producer.cli", "submit", str(series_dir), "--out", str(out), "--threads", "1"],
        cwd=REPO,
        check=True,
        capture_output=True,
        timeout=300,
    )
    (seg,) = out.glob("*.seg.dcm")
    return seg


def job_body(pacs: Orthanc, spec: SeriesSpec, prompts=PROMPTS, store="source", root: str | None = None) -> dict:
    return {
        "source": {"dicomweb": root or pacs.dicomweb, "study": spec.study_uid, "series": spec.series_uid},
        "prompts": prompts,
        "store": store,
    }


# ------------------------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def pacs(tmp_path_factory):
    server = Orthanc(tmp_path_factory.mktemp("orthanc"))
    server.start()
    yield server
    server.resume()
    server.stop()


@pytest.fixture(scope="module")
def series(tmp_path_factory, pacs):
    """The test series, uploaded into the PACS; each in its own folder with the prompts for the folder run."""
    root = tmp_path_factory.mktemp("series")
    made = {
        "main": make_series(root / "main", 10, 96),
        "big": make_series(root / "big", 16, 128, seed=1),
        "reject": make_series(root / "reject", 8, 96, REJECT_SEG_PATIENT, seed=2),
        "flat": make_series(root / "flat", 1, 96, seed=3),
    }
    for name in made:
        pacs.upload(sorted((root / name).iterdir()))
    (root / "main" / "prompts.json").write_text(json.dumps(PROMPTS))
    return root, made


def credentials(pacs: Orthanc) -> dict:
    """The right password for 127.0.0.1; a wrong one for the same PACS reached as localhost."""
    return {
        pacs.dicomweb: {"username": pacs.user, "password": pacs.password},
        pacs.dicomweb.replace("127.0.0.1", "localhost"): {"username": pacs.user, "password": "wrong-password"},
    }


@pytest.fixture(scope="module")
def gateway(tmp_path_factory, pacs, real_models_dir):
    service = GatewayProcess(
        tmp_path_factory.mktemp("gateway"),
        TOKEN,
        credentials(pacs),
        "--threads",
        "1",
        "--dicomweb-timeout",
        "3",
        "--dicomweb-retries",
        "1",
        "--dicomweb-allow",
        DOWN_ROOT,
        env={"LITEMEDSAM_MODELS_DIR": str(real_models_dir), "LITEMEDSAM_MAX_VOXELS": str(ENGINE_MAX_VOXELS)},
    )
    try:
        service.wait_ready()
        yield service
    finally:
        service.stop()


@pytest.fixture(scope="module")
def reference(tmp_path_factory, series):
    root, _ = series
    return folder_run(root / "main", tmp_path_factory.mktemp("folder-run"))


# ------------------------------------------------------------------------------------------------ tests


def test_dicomweb_job_stores_seg_equal_to_folder_run(gateway, pacs, series, reference):
    root, made = series
    spec, files = made["main"], sorted((root / "main").glob("IM*"))
    accepted = gateway.post(job_body(pacs, spec))
    assert accepted["status_url"].endswith(f"/v1/jobs/{accepted['id']}")
    job = gateway.wait(accepted["id"])
    assert job["state"] == "ok", job
    assert job["progress"]["done"] == job["progress"]["total"] == 6  # the slices the boxes span (z 2..7)
    assert job["metrics"]["provenance"]["precision"] == "f32" and job["metrics"]["counts"]["slices_encoded"] > 0
    stored = job["stored"]
    assert stored["study_uid"] == spec.study_uid and not stored["already_present"]

    found = pacs.seg_series(spec.study_uid)  # QIDO-RS finds the SEG in the source's study, its own series
    assert [s["0020000E"]["Value"][0] for s in found] == [stored["series_uid"]]
    assert stored["series_uid"] != spec.series_uid
    pacs_labels = seg_labels(wado_instance(pacs, spec.study_uid, stored["series_uid"], stored["sop_uid"]), files)
    folder_labels = seg_labels(reference, files)
    assert pacs_labels.any() and set(np.unique(pacs_labels)) == {0, 1, 2}
    np.testing.assert_array_equal(pacs_labels, folder_labels)  # bit for bit at f32

    npz = requests.get(
        f"{gateway.url}/v1/jobs/{job['id']}/result", params={"format": "npz"}, headers=gateway.headers, timeout=30
    )
    with np.load(io.BytesIO(npz.content), allow_pickle=False) as data:
        np.testing.assert_array_equal(data["segs"], folder_labels)
    seg = requests.get(
        f"{gateway.url}/v1/jobs/{job['id']}/result", params={"format": "seg"}, headers=gateway.headers, timeout=30
    )
    assert seg.headers["content-type"] == "application/dicom"
    np.testing.assert_array_equal(seg_labels(seg.content, files), folder_labels)
    nifti = requests.get(
        f"{gateway.url}/v1/jobs/{job['id']}/result", params={"format": "nifti"}, headers=gateway.headers, timeout=30
    )
    assert nifti.status_code == 200 and nifti.content[:2] == b"\x1f\x8b"

    # the same job again: the stored result is reused and the PACS gets nothing new
    before = pacs.instance_count()
    again = gateway.wait(gateway.post(job_body(pacs, spec))["id"])
    assert again["state"] == "ok" and again["stored"]["already_present"]
    assert again["stored"]["sop_uid"] == stored["sop_uid"] and again["metrics"]["extra"]["cached"]
    assert pacs.instance_count() == before


def wado_instance(pacs: Orthanc, study: str, series: str, sop: str) -> bytes:
    """WADO-RS retrieve of one instance, as a Part 10 file's bytes."""
    from dicomweb_client.api import DICOMwebClient

    session = requests.Session()
    session.auth = pacs.auth
    dataset = DICOMwebClient(pacs.dicomweb, session=session).retrieve_instance(study, series, sop)
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def test_bad_cases_are_one_jobs_clear_error(gateway, pacs, series):
    root, made = series
    spec = made["main"]
    before = pacs.instance_count()
    cases = {
        "series not in the PACS": (
            job_body(pacs, SeriesSpec(stored=np.zeros((1, 1, 1), np.int16), study_uid=spec.study_uid)),
            "is not on the DICOMweb",
        ),
        "PACS down": (job_body(pacs, spec, root=DOWN_ROOT), "is unreachable"),
        "wrong PACS password": (
            job_body(pacs, spec, root=pacs.dicomweb.replace("127.0.0.1", "localhost")),
            "refused the credentials",
        ),
        "prompt outside the image": (
            job_body(pacs, spec, {"boxes": [{"voxel": [10, 10, 2, 200, 40, 5]}]}),
            "lies outside the image",
        ),
        "series the engine refuses": (job_body(pacs, made["big"]), "above the limit"),
        "STOW rejected": (
            job_body(pacs, made["reject"], {"boxes": [{"voxel": [30, 34, 2, 62, 64, 5]}]}),
            "rejected the SEG",
        ),
    }
    ids = {name: gateway.post(body)["id"] for name, (body, _) in cases.items()}
    for name, (_, reason) in cases.items():
        job = gateway.wait(ids[name])
        assert job["state"] == "error" and reason in job["error"], (name, job["error"])
        assert job["stored"] is None
        assert "wrong-password" not in job["error"] and pacs.password not in job["error"]
    assert pacs.instance_count() == before  # nothing half-stored
    assert requests.get(f"{gateway.url}/v1/health", timeout=5).json()["status"] == "ok"
    assert gateway.process.poll() is None


def test_slow_pacs_times_out_with_bounded_retries(gateway, pacs, series):
    _, made = series
    pacs.pause()  # the real PACS stops answering (its socket still accepts connections)
    try:
        started = time.monotonic()
        job = gateway.wait(gateway.post(job_body(pacs, made["main"]))["id"], timeout=60)
        elapsed = time.monotonic() - started
    finally:
        pacs.resume()
    assert job["state"] == "error" and "did not answer within 3 s (2 attempts)" in job["error"], job["error"]
    assert elapsed < 30
    ok = gateway.wait(gateway.post(job_body(pacs, made["main"]))["id"])  # the service carries on
    assert ok["state"] == "ok"


def test_tokens(gateway):
    assert requests.get(f"{gateway.url}/v1/health", timeout=5).status_code == 200
    for headers in ({}, {"Authorization": "Bearer wrong-token-wrong-token"}, {"Authorization": f"Basic {TOKEN}"}):
        for method, path in (
            ("get", "/v1/jobs"),
            ("post", "/v1/jobs"),
            ("get", "/metrics"),
            ("get", "/v1/jobs/" + "0" * 32),
            ("get", f"/v1/jobs/{'0' * 32}/result"),
        ):
            response = requests.request(method, f"{gateway.url}{path}", headers=headers, timeout=5)
            assert response.status_code == 401, (headers, method, path)
            assert response.headers["www-authenticate"] == "Bearer"
    metrics = requests.get(f"{gateway.url}/metrics", headers=gateway.headers, timeout=5)
    assert "litemedsam_gateway_jobs_finished_total" in metrics.text


def test_job_requests_are_checked_at_once(gateway, pacs, series):
    _, made = series
    spec = made["main"]
    bad = [
        job_body(pacs, spec, {"boxes": []}),
        job_body(pacs, spec, root="http://u:secret@127.0.0.1:1/dicom-web"),
        {**job_body(pacs, spec), "source": {"dicomweb": pacs.dicomweb, "study": "x", "series": "1.2"}},
        job_body(pacs, spec, root=f"http://127.0.0.1:{free_port()}/dicom-web"),  # not a configured root
        job_body(pacs, spec, store=f"http://127.0.0.1:{free_port()}/dicom-web"),
    ]
    for body in bad:
        response = requests.post(f"{gateway.url}/v1/jobs", json=body, headers=gateway.headers, timeout=10)
        assert response.status_code == 422, response.text
        assert "secret" not in response.text


def test_twenty_jobs_at_once_finish_exactly_once(gateway, pacs, series):
    _, made = series
    spec = made["flat"]
    bodies = [job_body(pacs, spec, {"boxes": [{"voxel": [20 + k, 22, 60 + k, 70]}]}) for k in range(20)]
    accepted: list[dict] = []
    threads = [threading.Thread(target=lambda b=b: accepted.append(gateway.post(b))) for b in bodies]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    ids = [a["id"] for a in accepted]
    assert len(set(ids)) == 20
    jobs = [gateway.wait(job_id, timeout=300) for job_id in ids]
    assert all(job["state"] == "ok" for job in jobs), [job["error"] for job in jobs]
    assert all(job["runs"] == 1 for job in jobs)
    sops = {job["stored"]["sop_uid"] for job in jobs}
    listed = requests.get(
        f"{pacs.dicomweb}/studies/{spec.study_uid}/instances", params={"Modality": "SEG"}, auth=pacs.auth, timeout=10
    ).json()
    assert {item["00080018"]["Value"][0] for item in listed} == sops  # one SEG per distinct result, none twice


def test_upload_runs_like_the_dicomweb_job(gateway, series, reference):
    root, _ = series
    files = sorted((root / "main").glob("IM*"))
    parts = [("files", (path.name, path.read_bytes(), "application/dicom")) for path in files]
    parts.append(("prompts", (None, json.dumps(PROMPTS))))
    response = requests.post(f"{gateway.url}/v1/jobs", files=parts, headers=gateway.headers, timeout=30)
    assert response.status_code == 202, response.text
    job = gateway.wait(response.json()["id"])
    assert job["state"] == "ok" and job["stored"] is None, job
    seg = requests.get(f"{gateway.url}/v1/jobs/{job['id']}/result", headers=gateway.headers, timeout=30)
    np.testing.assert_array_equal(seg_labels(seg.content, files), seg_labels(reference, files))
    data = gateway.folder / "data"  # the service's umask: its folders and files are its user's only
    written = [path for path in data.rglob("*") if path.is_file()]
    assert written and all(stat.S_IMODE(path.stat().st_mode) == 0o600 for path in written), written
    assert all(stat.S_IMODE(path.stat().st_mode) == 0o700 for path in [data, *data.rglob("*")] if path.is_dir())


def test_npz_and_bad_uploads(gateway, tmp_path):
    image = phantom(1, 64)[0].astype(np.uint8)
    buffer = io.BytesIO()
    np.savez_compressed(buffer, imgs=np.repeat(image[..., None], 3, axis=2), boxes=np.array([[10, 12, 40, 44]]))
    response = requests.post(
        f"{gateway.url}/v1/jobs",
        headers=gateway.headers,
        timeout=30,
        files=[("files", ("2DBox_CT_upload.npz", buffer.getvalue()))],
    )
    job = gateway.wait(response.json()["id"])
    assert job["state"] == "ok" and sorted(job["results"]) == ["npz"], job
    seg = requests.get(f"{gateway.url}/v1/jobs/{job['id']}/result", headers=gateway.headers, timeout=30)
    assert seg.status_code == 404 and "no seg result" in seg.text
    stored = requests.post(
        f"{gateway.url}/v1/jobs",
        headers=gateway.headers,
        timeout=30,
        files=[
            ("files", ("2DBox_CT_upload.npz", buffer.getvalue())),
            ("store", (None, DOWN_ROOT)),
        ],
    )
    job = gateway.wait(stored.json()["id"])
    assert job["state"] == "error" and "only a DICOM series gives a SEG to store" in job["error"]
    garbage = requests.post(
        f"{gateway.url}/v1/jobs",
        headers=gateway.headers,
        timeout=30,
        files=[("files", ("scan.dcm", b"DICM" * 100)), ("prompts", (None, json.dumps(PROMPTS)))],
    )
    job = gateway.wait(garbage.json()["id"])
    assert job["state"] == "error" and "holds 0 studies" in job["error"]


@pytest.mark.skipif(not Path("/usr/bin/chromium").is_file(), reason="chromium is not installed")
def test_page_and_docs_in_headless_chromium(gateway, pacs, series):
    _, made = series
    job = gateway.wait(gateway.post(job_body(pacs, made["main"], store=None))["id"])
    assert job["state"] == "ok"

    def dom(url: str) -> str:
        offline = "MAP * ~NOTFOUND, EXCLUDE 127.0.0.1"  # nothing outside this service can load
        result = subprocess.run(
            [
                "/usr/bin/chromium",
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                f"--host-resolver-rules={offline}",
                "--virtual-time-budget=15000",
                "--dump-dom",
                url,
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
        return result.stdout

    page = dom(f"{gateway.url}/#token={TOKEN}")
    assert f'id="job-{job["id"]}"' in page and 'data-state="ok"' in page
    assert 'data-loaded="1"' in page  # the thumbnail image arrived and decoded
    # the jobs page as a person sees it: test-artifacts/gateway/jobs-page.png, which the docs site shows
    # (ops/docs/hooks.py; docs/images/jobs-page.png is the committed copy)
    JOBS_PAGE_SHOT.parent.mkdir(parents=True, exist_ok=True)
    JOBS_PAGE_SHOT.unlink(missing_ok=True)
    subprocess.run(
        [
            "/usr/bin/chromium",
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
            "--hide-scrollbars",
            "--window-size=1280,480",
            "--virtual-time-budget=15000",
            f"--screenshot={JOBS_PAGE_SHOT}",
            f"{gateway.url}/#token={TOKEN}",
        ],
        capture_output=True,
        timeout=120,
    )
    assert JOBS_PAGE_SHOT.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", "chromium wrote no screenshot of the jobs page"
    docs = dom(f"{gateway.url}/docs")
    assert "/v1/jobs/{job_id}/result" in docs and "opblock" in docs
    html = requests.get(f"{gateway.url}/docs", timeout=5).text + requests.get(f"{gateway.url}/", timeout=5).text
    assert "http://" not in html.replace(gateway.url, "") and "https://" not in html


def test_submit_from_dicomweb_stows(gateway, pacs, series, reference, tmp_path):
    """`producer submit --dicomweb ... --stow`: the folder path of the CLI on a PACS series."""
    root, made = series
    spec, files = made["main"], sorted((root / "main").glob("IM*"))
    (tmp_path / "prompts.json").write_text(json.dumps(PROMPTS))
    (tmp_path / "creds.json").write_text(json.dumps(credentials(pacs)))
    before = pacs.instance_count()
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "producer.cli",
            "submit",
            "--dicomweb",
            pacs.dicomweb,
            "--study",
            spec.study_uid,
            "--series",
            spec.series_uid,
            "--prompts",
            str(tmp_path / "prompts.json"),
            "--dicomweb-credentials",
            str(tmp_path / "creds.json"),
            "--stow",
            "--out",
            str(tmp_path / "out"),
            "--threads",
            "1",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    (seg,) = (tmp_path / "out").glob("*.seg.dcm")
    np.testing.assert_array_equal(seg_labels(seg, files), seg_labels(reference, files))
    said = " ".join(result.stderr.split())  # the console wraps long lines
    if "already in the PACS" not in said:  # the gateway test before stored the same (deterministic) SEG, or not
        assert "stored in the PACS" in said and pacs.instance_count() == before + 1


@pytest.mark.fleet
def test_fleet_gateway_job(tmp_path_factory, pacs, series, reference, real_models_dir):
    """With --broker the job runs on a real worker process; the same masks as the folder run, the SEG in the PACS."""
    import socket

    from fleet_support import WorkerProcess, claim_redis, fleet_env

    slot = claim_redis()
    if slot is None:
        pytest.skip("no free Redis database at 127.0.0.1:6379")
    root, made = series
    spec, files = made["main"], sorted((root / "main").glob("IM*"))
    folder = tmp_path_factory.mktemp("fleet-gateway")
    env = fleet_env(slot.url, slot.namespace, real_models_dir)
    worker = WorkerProcess(f"gw-{slot.namespace}@{socket.gethostname()}", env, folder / "worker.log")
    service = GatewayProcess(
        folder / "service",
        TOKEN,
        credentials(pacs),
        "--broker",
        slot.url,
        "--fleet-timeout",
        "240",
        env={"LITEMEDSAM_NAMESPACE": slot.namespace},
    )
    try:
        service.wait_ready()
        assert requests.get(f"{service.url}/v1/health", timeout=5).json()["mode"] == "fleet"
        job = service.wait(service.post(job_body(pacs, spec))["id"], timeout=300)
        assert job["state"] == "ok", (job, worker.log_tail())
        assert job["metrics"]["extra"]["batch_id"] and job["metrics"]["provenance"]["precision"] == "f32"
        seg = requests.get(f"{service.url}/v1/jobs/{job['id']}/result", headers=service.headers, timeout=30)
        np.testing.assert_array_equal(seg_labels(seg.content, files), seg_labels(reference, files))
        stored = job["stored"]
        pacs_seg = wado_instance(pacs, spec.study_uid, stored["series_uid"], stored["sop_uid"])
        np.testing.assert_array_equal(seg_labels(pacs_seg, files), seg_labels(reference, files))
        again = service.wait(service.post(job_body(pacs, spec))["id"], timeout=120)
        assert again["state"] == "ok" and again["stored"]["already_present"]
        assert again["metrics"]["extra"]["cached"]  # served from the fleet's store, no task
    finally:
        service.stop()
        worker.stop()
        slot.release()


def test_nifti_upload(gateway, tmp_path):
    import nibabel as nib

    volume = phantom(6, 64, seed=5).astype(np.float32) - 1024.0  # HU, (z, y, x)
    affine = np.diag([-0.8, -0.8, 2.5, 1.0])
    path = tmp_path / "scan.nii.gz"
    nib.save(nib.Nifti1Image(np.transpose(volume, (2, 1, 0)), affine), str(path))
    prompts = {"modality": "CT", "boxes": [{"label": "organ", "voxel": [20, 22, 1, 42, 44, 4]}]}
    response = requests.post(
        f"{gateway.url}/v1/jobs",
        headers=gateway.headers,
        timeout=30,
        files=[("files", ("scan.nii.gz", path.read_bytes())), ("prompts", (None, json.dumps(prompts)))],
    )
    job = gateway.wait(response.json()["id"])
    assert job["state"] == "ok" and sorted(job["results"]) == ["nifti", "npz"], job
    nifti = requests.get(
        f"{gateway.url}/v1/jobs/{job['id']}/result", params={"format": "nifti"}, headers=gateway.headers, timeout=30
    )
    (tmp_path / "labels.nii.gz").write_bytes(nifti.content)
    labels = nib.load(str(tmp_path / "labels.nii.gz"))
    np.testing.assert_allclose(labels.affine, affine)
    npz = requests.get(
        f"{gateway.url}/v1/jobs/{job['id']}/result", params={"format": "npz"}, headers=gateway.headers, timeout=30
    )
    with np.load(io.BytesIO(npz.content), allow_pickle=False) as data:
        segs = data["segs"]
    np.testing.assert_array_equal(np.transpose(np.asarray(labels.dataobj), (2, 1, 0)), segs)
    assert segs[1:5].any() and not segs[0].any() and not segs[5].any()  # the box's slices only
