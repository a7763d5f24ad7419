"""How long patient data stays: job folders (uploads, SEGs, NIfTI, thumbnails) and the embedded result store are
purged `--retention-days` after their job ended (default 7); unfinished jobs are never purged. The audit trail is
kept. A purge runs when the service starts and then every hour; each purged job is one audit line."""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

from producer.gateway.audit import AuditLog
from producer.gateway.jobs import UNFINISHED, JobStore

log = logging.getLogger(__name__)
DEFAULT_RETENTION_DAYS = 7.0
PURGE_EVERY_SECONDS = 3600.0


class Retention:
    def __init__(self, jobs: JobStore, results_dir: Path | None, days: float, audit: AuditLog):
        if not days > 0:
            raise ValueError(f"--retention-days must be above 0, got {days}")
        self.jobs, self.results_dir, self.seconds, self.audit = jobs, results_dir, days * 86400.0, audit
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def purge(self, now: float | None = None) -> list[str]:
        """Remove what is older than the retention period; the ids of the purged jobs."""
        cutoff = (time.time() if now is None else now) - self.seconds
        purged = []
        for job in self.jobs.recent(limit=10**9):
            ended = job.finished_at or job.created_at
            if job.state in UNFINISHED or ended >= cutoff:
                continue
            self.jobs.delete(job.id)
            purged.append(job.id)
            self.audit.write(
                actor="service",
                action="job.purged",
                outcome="ok",
                resource="job",
                resource_id=job.id,
                owner=job.owner,
                study_uid=job.source.get("study", ""),
                series_uid=job.source.get("series", ""),
                detail="retention period over",
            )
        if self.results_dir is not None and self.results_dir.is_dir():
            for path in self.results_dir.iterdir():
                try:
                    if path.is_file() and path.stat().st_mtime < cutoff:
                        path.unlink()
                except FileNotFoundError:
                    continue
        return purged

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.purge()
            except Exception:  # a failed purge is retried at the next round; the service goes on
                log.exception("retention purge failed")
            self._stop.wait(PURGE_EVERY_SECONDS)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="gateway-retention", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
