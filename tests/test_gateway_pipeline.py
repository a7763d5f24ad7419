"""A gateway job hands its prompts and its SEG on in memory (producer.gateway.pipeline), without a PACS or the model:
the real pipeline, job store, audit log and writers, with a segmenter that fills each box.

- The study is built from the job's HTTP prompts; nothing is written into the job's input, and a prompts file found
  there is never read (nor overwritten).
- The SEG sent to the PACS is the object the writer made, not the file read back; the files on disk keep the bytes
  the folder run (prompts from a sidecar) writes.
"""

from __future__ import annotations

import io
import json
import shutil
from contextlib import contextmanager
from pathlib import Path

import highdicom as hd
import nibabel as nib
import numpy as np
import pydicom
import pytest

from gateway_support import BoxFillSegmenter
from orthanc_support import make_series
from producer.discovery import discover
from producer.gateway.audit import AuditLog
from producer.gateway.dicomweb import StoredInstance
from producer.gateway.jobs import UNFINISHED, Job, JobStore, new_job_id
from producer.gateway.pipeline import JobPipeline
from producer.loading import load_study_and_context
from producer.outputs import OutputWriter

ROOT = "https://pacs.example/dicom-web"
HTTP_PROMPTS = {"modality": "CT", "boxes": [{"label": "organ", "voxel": [20, 22, 2, 50, 54, 6]}]}
STRAY_PROMPTS = {"modality": "CT", "boxes": [{"label": "stray", "voxel": [1, 1, 0, 8, 8, 1]}]}


class RecordingServer:
    """Stands in for a DICOMweb server: keeps what STOW-RS would have sent."""

    root = ROOT

    def __init__(self) -> None:
        self.stored: list = []

    def store_instance(self, dataset) -> StoredInstance:
        self.stored.append(dataset)
        return StoredInstance(
            str(dataset.StudyInstanceUID), str(dataset.SeriesInstanceUID), str(dataset.SOPInstanceUID), False
        )


class OneServer:
    def __init__(self) -> None:
        self.server = RecordingServer()

    @contextmanager
    def open(self, root: str):
        assert root == ROOT
        yield self.server


def pipeline(tmp_path: Path) -> tuple[JobPipeline, JobStore, OneServer]:
    jobs, servers = JobStore(tmp_path / "jobs"), OneServer()
    return JobPipeline(jobs, BoxFillSegmenter(), servers, AuditLog(tmp_path / "audit.log")), jobs, servers


def upload_job(jobs: JobStore, files: list[Path], prompts, store: str | None = None) -> Job:
    job = jobs.create(Job(new_job_id(), "upload", "alice", prompts, store, {"files": len(files)}))
    folder = jobs.input_dir(job.id)
    folder.mkdir(parents=True, exist_ok=True)
    for path in files:
        shutil.copy(path, folder / path.name)
    return job


CLOCK = ("InstanceCreationDate", "InstanceCreationTime", "ContentDate", "ContentTime")  # when it was written


def same_bytes_but_the_clock(a: Path, b: Path) -> bool:
    """Whether two DICOM files are the same bytes once the date and time they were made are set equal."""
    first, second = pydicom.dcmread(a), pydicom.dcmread(b)
    for name in CLOCK:
        setattr(second, name, getattr(first, name))
    for mine, theirs in zip(first.ContributingEquipmentSequence, second.ContributingEquipmentSequence):
        if "ContributionDateTime" in mine:
            theirs.ContributionDateTime = mine.ContributionDateTime
    buffers = io.BytesIO(), io.BytesIO()
    first.save_as(buffers[0])
    second.save_as(buffers[1])
    return buffers[0].getvalue() == buffers[1].getvalue() and len(a.read_bytes()) == len(b.read_bytes())


def snapshot(folder: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(folder.iterdir())}


@pytest.fixture(scope="module")
def series_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("series") / "ct"
    make_series(folder, 8, 64)
    return folder


def test_a_dicom_job_uses_its_http_prompts_and_stores_the_seg_it_wrote(tmp_path, series_dir):
    run, jobs, servers = pipeline(tmp_path)
    job = upload_job(jobs, sorted(series_dir.iterdir()), HTTP_PROMPTS, store=ROOT)
    stray = jobs.input_dir(job.id) / "prompts.json"  # a file beside the series, as a folder run would read it
    stray.write_text(json.dumps(STRAY_PROMPTS))
    uploaded = snapshot(jobs.input_dir(job.id))

    done = run.run(job.id)
    assert done.state == "ok", done.error
    assert snapshot(jobs.input_dir(job.id)) == uploaded  # nothing written into the input, the stray file as it was
    with np.load(jobs.result_dir(job.id) / done.results["npz"]) as data:
        labels = data["segs"]
    assert labels[2:7, 22:55, 20:51].all() and labels.sum() == 5 * 33 * 31  # the HTTP box, not the stray one

    (sent,) = servers.server.stored  # the object the writer made, not a dataset read back from the file
    assert isinstance(sent, hd.seg.Segmentation)
    seg_file = jobs.result_dir(job.id) / done.results["seg"]
    buffer = io.BytesIO()
    sent.save_as(buffer)
    assert buffer.getvalue() == seg_file.read_bytes()
    assert done.stored == {
        "dicomweb": ROOT,
        "study_uid": sent.StudyInstanceUID,
        "series_uid": sent.SeriesInstanceUID,
        "sop_uid": sent.SOPInstanceUID,
        "already_present": False,
    }

    # the files on disk are those of the folder run with the same prompts in its sidecar
    folder = tmp_path / "folder-run"
    shutil.copytree(series_dir, folder)
    (folder / "prompts.json").write_text(json.dumps(HTTP_PROMPTS))
    (source,) = discover(folder).studies
    study, context = load_study_and_context(source)
    outcome = BoxFillSegmenter().segment(source.name, study, lambda done, total: None)
    outcome.context = context
    OutputWriter(tmp_path / "folder-out").write(source, outcome)
    assert same_bytes_but_the_clock(tmp_path / "folder-out" / f"{source.name}.seg.dcm", seg_file)
    assert outcome.written == {}  # a folder run keeps no objects once they are written


def test_a_nifti_job_never_reads_a_prompts_sidecar_in_its_upload(tmp_path):
    volume = np.zeros((48, 48, 6), np.float32)
    volume[10:30, 10:30, 1:5] = 300
    source = tmp_path / "scan.nii.gz"
    nib.save(nib.Nifti1Image(volume, np.diag([0.8, 0.8, 2.5, 1.0])), str(source))
    sidecar = tmp_path / "scan.prompts.json"  # uploaded with the image: the HTTP prompts win, the file stays
    sidecar.write_text(json.dumps(STRAY_PROMPTS))
    prompts = {"modality": "CT", "boxes": [{"label": "organ", "voxel": [10, 12, 1, 30, 32, 4]}]}

    run, jobs, _ = pipeline(tmp_path / "service")
    job = upload_job(jobs, [source, sidecar], prompts)
    uploaded = snapshot(jobs.input_dir(job.id))
    done = run.run(job.id)
    assert done.state == "ok", done.error
    assert snapshot(jobs.input_dir(job.id)) == uploaded
    with np.load(jobs.result_dir(job.id) / done.results["npz"]) as data:
        labels = data["segs"]
    assert labels.shape == (6, 48, 48) and labels[1:5, 12:33, 10:31].all() and labels.sum() == 4 * 21 * 21


def test_a_job_without_a_seg_to_store_says_so(tmp_path):
    run, jobs, servers = pipeline(tmp_path)
    image = np.zeros((16, 16, 3), np.uint8)
    np.savez(tmp_path / "2DBox_CT_x.npz", imgs=image, boxes=np.array([[1, 1, 5, 5]]))
    job = upload_job(jobs, [tmp_path / "2DBox_CT_x.npz"], {"boxes": [{"voxel": [1, 1, 5, 5]}]})
    done = run.run(job.id)
    assert done.state == "error" and "an npz upload carries its own boxes" in done.error
    assert servers.server.stored == []


def test_the_job_document_is_typed_in_the_openapi_and_answered_as_typed(tmp_path, series_dir):
    """GET /v1/jobs/{id} and GET /v1/jobs answer JobDocument, which the OpenAPI document describes (so generated
    clients and schemathesis check every field)."""
    import time

    from fastapi.testclient import TestClient

    from gateway_support import ADMIN, bearer, fuzz_app
    from producer.gateway.schemas import JobDocument

    app = fuzz_app(tmp_path / "data")
    document = app.openapi()
    one = document["paths"]["/v1/jobs/{job_id}"]["get"]["responses"]["200"]["content"]["application/json"]["schema"]
    many = document["paths"]["/v1/jobs"]["get"]["responses"]["200"]["content"]["application/json"]["schema"]
    assert one == {"$ref": "#/components/schemas/JobDocument"} and many["items"] == one
    schema = document["components"]["schemas"]["JobDocument"]
    assert set(schema["required"]) == set(JobDocument.model_fields)
    assert schema["properties"]["state"]["enum"] == ["queued", "running", "ok", "error"]

    with TestClient(app) as client:
        files = [("files", (path.name, path.read_bytes())) for path in sorted(series_dir.iterdir())]
        files.append(("prompts", (None, json.dumps(HTTP_PROMPTS))))
        accepted = client.post("/v1/jobs", files=files, headers=bearer(ADMIN))
        assert accepted.status_code == 202, accepted.text
        job_id = accepted.json()["id"]
        deadline = time.monotonic() + 30
        while (answer := client.get(f"/v1/jobs/{job_id}", headers=bearer(ADMIN)).json())["state"] in UNFINISHED:
            assert time.monotonic() < deadline, answer
            time.sleep(0.05)
        listed = client.get("/v1/jobs", headers=bearer(ADMIN)).json()
    job = JobDocument.model_validate(answer)
    assert job.state == "ok" and job.progress.done == job.progress.total > 0 and job.stored is None
    assert set(job.results) == {"seg", "nifti", "npz"} == set(job.result_urls)
    assert job.result_urls["seg"].endswith(f"/v1/jobs/{job_id}/result?format=seg")
    assert [JobDocument.model_validate(item) for item in listed] == [job]
