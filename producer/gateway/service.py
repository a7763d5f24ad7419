"""The gateway's parts, wired once per service: job records, DICOMweb servers, the segmenter, the queue and its
pipeline, telemetry, the audit trail, identities, limits and retention. Routes reach it as `request.app.state`'s
`gateway`; nothing else holds state."""

from __future__ import annotations

import shutil
from pathlib import Path

from producer.gateway.audit import AuditLog
from producer.gateway.config import GatewayConfig
from producer.gateway.dicomweb import ServerDirectory
from producer.gateway.identity import Authenticator
from producer.gateway.jobs import Job, JobStore
from producer.gateway.limits import FailedAuthLimits, IdentityLimits
from producer.gateway.pipeline import JobPipeline
from producer.gateway.queue import JobQueue
from producer.gateway.retention import Retention
from producer.gateway.segmenters import make_segmenter, make_session_engine
from producer.gateway.telemetry import GatewayTelemetry
from producer.sessions import SessionStore


class Gateway:
    def __init__(self, config: GatewayConfig, segmenter=None):
        self.config = config
        self.auth = Authenticator(config.tokens, config.oidc)
        self.limits = IdentityLimits(config.limits)
        self.failed_auth = FailedAuthLimits(config.limits)
        data_dir = Path(config.data_dir)
        data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        data_dir.chmod(0o700)
        self.audit = AuditLog(config.audit_path)
        self.jobs = JobStore(data_dir)
        self.servers = ServerDirectory(config.credentials, config.dicomweb, config.dicomweb_allow)
        self.segmenter = segmenter or make_segmenter(
            config.broker, config.engine_settings, data_dir, config.fleet_timeout
        )
        self.queue: JobQueue | None = None
        self.telemetry = GatewayTelemetry(lambda: self.queue.pending if self.queue else 0)
        self.telemetry.mode = self.segmenter.mode
        self.pipeline = JobPipeline(self.jobs, self.segmenter, self.servers, self.audit, self.telemetry)
        self.queue = JobQueue(self.jobs, self.pipeline, config.jobs_at_once)
        results = data_dir / "results" if config.broker is None else None
        self.retention = Retention(self.jobs, results, config.retention_days, self.audit)
        self.sessions_dir = data_dir / "sessions"
        shutil.rmtree(self.sessions_dir, ignore_errors=True)  # sessions live in memory: a restart closes them all
        self.sessions_dir.mkdir(mode=0o700)
        self.sessions = SessionStore(config.session_limits, on_close=self._closed)
        self.session_engine = make_session_engine(config.broker, config.engine_settings)

    # ---------------------------------------------------------------- interactive sessions
    def session_dir(self, session_id: str) -> Path:
        folder = self.sessions_dir / session_id if session_id else self.sessions_dir
        folder.mkdir(mode=0o700, exist_ok=True)
        return folder

    def _closed(self, session, why: str) -> None:
        shutil.rmtree(self.sessions_dir / session.id, ignore_errors=True)
        self.audit.write(
            actor="service",
            action="session.close",
            outcome=why,
            resource="session",
            resource_id=session.id,
            owner=session.owner,
        )

    def accept(self, job: Job) -> Job:
        self.telemetry.created.inc()
        self.queue.submit(job.id)
        return job

    def start(self) -> None:
        self.retention.start()
        self.queue.resume()

    def stop(self) -> None:
        self.retention.stop()
        self.queue.shutdown()
        self.audit.close()
