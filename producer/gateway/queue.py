"""Runs jobs in background threads: one at a time with the embedded engine, a few at once with a fleet.

A job id enters the queue once, when it is created (or, on start, when its record says it never finished), and
a job thread runs it to `ok` or `error`; nothing else starts it, so a job runs once per service life.
"""

from __future__ import annotations

import logging
import threading
from concurrent.futures import ThreadPoolExecutor

from producer.gateway.jobs import JobStore
from producer.gateway.pipeline import JobPipeline

log = logging.getLogger(__name__)


class JobQueue:
    def __init__(self, jobs: JobStore, pipeline: JobPipeline, threads: int):
        self.jobs, self.pipeline = jobs, pipeline
        self.executor = ThreadPoolExecutor(max_workers=max(1, threads), thread_name_prefix="gateway-job")
        self._lock = threading.Lock()
        self._pending: set[str] = set()

    def submit(self, job_id: str) -> None:
        with self._lock:
            if job_id in self._pending:
                return
            self._pending.add(job_id)
        self.executor.submit(self._run, job_id)

    def resume(self) -> int:
        """Queue again the jobs a previous service life left unfinished (oldest first)."""
        unfinished = self.jobs.unfinished()
        for job in unfinished:
            self.jobs.update(job.id, state="queued")
            self.submit(job.id)
        return len(unfinished)

    @property
    def pending(self) -> int:
        with self._lock:
            return len(self._pending)

    def _run(self, job_id: str) -> None:
        try:
            self.pipeline.run(job_id)
        except Exception:  # the pipeline records its own failures; this is the last guard of the thread
            log.exception("job %s: unexpected failure outside the pipeline", job_id)
        finally:
            with self._lock:
                self._pending.discard(job_id)

    def shutdown(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)
