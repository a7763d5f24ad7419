"""The audit trail: one append-only JSON line per action, who did what to which study and where its result went.

Written for every HTTP request (producer.gateway.app's middleware: who, route, status, client address, plus what the
route adds: job id, study/series UIDs, source root, where the SEG goes) and for every step of a job's life that
reaches outside the service (producer.gateway.pipeline: series fetched from, SEG stored to, finished) and for
every purge (producer.gateway.retention). A line holds only the fields of `AuditEvent`: never a token, a password,
a prompt or image data. The file (`<data dir>/audit/audit.jsonl`, or `--audit-log PATH`) is rotated at midnight UTC
(`audit.jsonl.YYYY-MM-DD`) and every rotated file is kept: retention purges job data, never the audit.
"""

from __future__ import annotations

import json
import logging
import logging.handlers
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

AUDIT_FILE = "audit.jsonl"


class AuditEvent(BaseModel):
    """One line of the trail; unknown fields are refused, so nothing else can slip in."""

    model_config = ConfigDict(extra="forbid")

    time: str = Field(description="UTC, ISO 8601")
    actor: str = Field(description="the identity's name ('anonymous' before authentication, 'service' for its own)")
    via: str = Field("", description="token, oidc, or empty")
    action: str = Field(description='"GET /v1/jobs/{job_id}" for a request; "job.fetch", "job.store", ... for a job')
    outcome: str = Field(description="the HTTP status, or ok / error / refused")
    client: str = ""
    resource: str = Field("", description='"job" (later: "session")')
    resource_id: str = ""
    owner: str = ""
    study_uid: str = ""
    series_uid: str = ""
    source: str = Field("", description="the DICOMweb root read from (redacted), or 'upload'")
    stored_to: str = Field("", description="the DICOMweb root the result was stored to (redacted)")
    stored_uid: str = Field("", description="the SOP Instance UID of the stored result")
    detail: str = Field("", description="an error's reason (no secrets: DICOMweb errors name servers redacted)")


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


class _PrivateRotatingFile(logging.handlers.TimedRotatingFileHandler):
    """Daily rotation at midnight UTC, every file kept, each created readable by the service's user only."""

    def _open(self):
        fd = os.open(self.baseFilename, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        return os.fdopen(fd, "a", encoding="utf-8")

    def rotation_filename(self, default_name: str) -> str:
        """The day's name, or the day's name .001, .002, ... if it is taken: the standard handler would delete an
        existing file of that name (a second rotation the same day, after a restart), and the trail loses nothing."""
        name, number = default_name, 0
        while os.path.exists(name):
            number += 1
            name = f"{default_name}.{number:03d}"
        return name


class AuditLog:
    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._handler = _PrivateRotatingFile(self.path, when="midnight", utc=True, backupCount=0, encoding="utf-8")
        self._handler.setFormatter(logging.Formatter("%(message)s"))

    def write(self, **fields: Any) -> AuditEvent:
        fields.setdefault("time", now_iso())
        event = AuditEvent(**{key: ("" if value is None else value) for key, value in fields.items()})
        record = logging.LogRecord("audit", logging.INFO, __file__, 0, event.model_dump_json(), None, None)
        self._handler.handle(record)  # the handler's own lock serialises the writers
        return event

    def files(self) -> list[Path]:
        """The current file and the rotated ones, newest first."""
        rotated = sorted(self.path.parent.glob(self.path.name + ".*"), reverse=True)
        return ([self.path] if self.path.exists() else []) + rotated

    def read(self, limit: int, **match: str) -> list[dict[str, Any]]:
        """The newest `limit` events whose fields equal every given `match` value (empty values ignored)."""
        wanted = {key: value for key, value in match.items() if value}
        found: list[dict[str, Any]] = []
        for path in self.files():
            lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
            for line in reversed(lines):
                try:
                    event = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if all(event.get(key) == value for key, value in wanted.items()):
                    found.append(event)
                    if len(found) >= limit:
                        return found
        return found

    def close(self) -> None:
        self._handler.close()
