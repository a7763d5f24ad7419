"""Gateway pieces without a PACS or a model: tokens, URL redaction, credentials, job records, restart recovery,
and a DICOMweb server that is not there (a real closed port)."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from orthanc_support import free_port
from producer.gateway.dicomweb import (
    ClientSettings,
    Credentials,
    DicomwebError,
    DicomwebServer,
    load_credentials,
    normalise_root,
    redact,
)
from producer.gateway.identity import Authenticator, AuthError, TokenCheck, read_tokens
from producer.gateway.jobs import Job, JobStore, new_job_id
from producer.gateway.queue import JobQueue

TOKEN = "a-long-enough-token-0123456789"


def test_tokens_constant_time_check_and_rules(tmp_path: Path):
    table = read_tokens(f"ris:{TOKEN}, viewer:another-token-abcdefghij:read", None)
    check = TokenCheck(table)
    assert check.identify(TOKEN).name == "ris" and check.identify("another-token-abcdefghij").name == "viewer"
    assert check.identify(TOKEN[:-1]) is None and check.identify("") is None
    with pytest.raises(ValueError, match="no API tokens"):
        Authenticator({})
    with pytest.raises(AuthError, match="required"):
        Authenticator(table).identify(None)
    (tmp_path / "tokens").write_text(f"# site tokens\nris:{TOKEN}\n\n")
    assert set(read_tokens("other:" + "x" * 20, tmp_path / "tokens")) == {"x" * 20, TOKEN}
    with pytest.raises(ValueError, match="shorter than 16"):
        read_tokens("a:short", None)


def test_urls_never_carry_credentials_into_messages():
    assert redact("https://user:pw@pacs.example:8443/dicom-web?token=abc#x") == "https://pacs.example:8443/dicom-web"
    assert normalise_root("http://pacs:8042/dicom-web/") == "http://pacs:8042/dicom-web"
    with pytest.raises(DicomwebError) as error:
        normalise_root("http://user:hunter2@pacs:8042/dicom-web")
    assert "hunter2" not in str(error.value) and "carries credentials" in str(error.value)
    for bad in ("ftp://pacs/dicom-web", "", "http://pacs/dw?key=1"):
        with pytest.raises(DicomwebError):
            normalise_root(bad)


def test_credentials_file(tmp_path: Path):
    path = tmp_path / "creds.json"
    path.write_text(
        json.dumps(
            {
                "http://pacs:8042/dicom-web/": {"username": "u", "password": "hunter2"},
                "https://cloud/dicomweb": {"token": "bearer-secret"},
            }
        )
    )
    table = load_credentials(path)
    assert table["http://pacs:8042/dicom-web"] == Credentials("u", "hunter2")
    assert table["https://cloud/dicomweb"].token == "bearer-secret"
    assert "hunter2" not in repr(table) and "bearer-secret" not in repr(table)
    path.write_text(json.dumps({"http://pacs/dw": {"username": "u", "token": "t"}}))
    with pytest.raises(ValueError, match="either"):
        load_credentials(path)


def test_unreachable_server_is_a_clear_error_without_secrets(tmp_path: Path):
    root = f"http://127.0.0.1:{free_port()}/dicom-web"
    server = DicomwebServer(
        root, Credentials("user", "hunter2"), ClientSettings(connect_timeout=1, read_timeout=1, retries=1, backoff=0.05)
    )
    with pytest.raises(DicomwebError) as error:
        server.fetch_series("1.2.3", "1.2.3.4", tmp_path / "series")
    assert "is unreachable" in str(error.value) and "2 attempts" in str(error.value)
    assert "hunter2" not in str(error.value) and "user" not in str(error.value)
    assert not (tmp_path / "series").exists()


class RecordingPipeline:
    """Stands in for producer.gateway.pipeline.JobPipeline: records which jobs it was asked to run."""

    def __init__(self, jobs: JobStore):
        self.jobs, self.ran, self.done = jobs, [], threading.Event()

    def run(self, job_id: str):
        self.ran.append(job_id)
        self.jobs.update(job_id, state="ok")
        if len(self.ran) >= 2:
            self.done.set()


def test_restart_requeues_unfinished_jobs_once(tmp_path: Path):
    jobs = JobStore(tmp_path)
    made = {
        state: jobs.create(Job(new_job_id(), "dicomweb", "ris", {"boxes": []}, None, state=state))
        for state in ("queued", "running", "ok", "error")
    }
    pipeline = RecordingPipeline(jobs)
    queue = JobQueue(jobs, pipeline, threads=1)
    assert queue.resume() == 2
    assert pipeline.done.wait(10)
    queue.shutdown()
    assert sorted(pipeline.ran) == sorted([made["queued"].id, made["running"].id])
    assert jobs.get(made["error"].id).state == "error"
    with pytest.raises(KeyError):
        jobs.get("../../etc")  # a job id is 32 hex characters, nothing else reaches the file system


def test_audit_rotates_keeps_every_file_and_reads_across_them(tmp_path: Path):
    import stat

    from producer.gateway.audit import AuditLog

    audit = AuditLog(tmp_path / "audit" / "audit.jsonl")
    audit.write(actor="alice", action="POST /v1/jobs", outcome="202", resource_id="a" * 32)
    audit._handler.doRollover()  # what midnight UTC does
    audit.write(actor="carol", action="GET /v1/jobs", outcome="200")
    audit._handler.doRollover()  # a second rotation named for the same day (a restart) must not delete the first
    audit.write(actor="bob", action="GET /v1/jobs", outcome="200")
    files = audit.files()
    assert len(files) == 3 and all(stat.S_IMODE(path.stat().st_mode) == 0o600 for path in files)
    assert [event["actor"] for event in audit.read(10)] == ["bob", "carol", "alice"]  # newest first, across files
    assert [event["actor"] for event in audit.read(10, resource_id="a" * 32)] == ["alice"]
    with pytest.raises(ValueError):  # only the trail's own fields: nothing else can slip into a line
        audit.write(actor="x", action="y", outcome="z", token="secret")
    audit.close()


def test_a_job_record_is_checked_when_read_and_one_of_another_version_left_out(tmp_path: Path, caplog):
    jobs = JobStore(tmp_path)
    job = jobs.create(Job(new_job_id(), "upload", "alice", None, None, {"files": 1}))
    record = jobs.folder(job.id) / "job.json"
    written = json.loads(record.read_text())
    assert written["version"] == 1 and jobs.get(job.id) == job
    assert "version" not in job.public()  # the record's, not the API document's

    before_versions = {key: value for key, value in written.items() if key not in ("version", "owner")}
    record.write_text(json.dumps(before_versions))  # a record written before owners and versions
    assert jobs.get(job.id).owner == "" and jobs.get(job.id).version == 1

    for changed, said in (
        ({"version": 2}, "record is version 2, this gateway reads version 1: left out"),
        ({"progress": "half"}, "record does not fit (progress: Input should be a valid dictionary): left out"),
        ({"state": "paused"}, "record does not fit (state: Input should be 'queued', 'running', 'ok' or 'error')"),
    ):
        record.write_text(json.dumps({**written, **changed}))
        caplog.clear()
        with pytest.raises(KeyError):
            jobs.get(job.id)
        assert jobs.recent() == [] and said in caplog.text, caplog.text
