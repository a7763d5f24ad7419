"""The gateway's settings: who may call it, which DICOMweb servers it may use, where jobs and the audit live, how
long data stays, what one identity may do at once, how jobs run.

- Identities (producer.gateway.identity): named tokens from `LITEMEDSAM_API_TOKENS` (`NAME:TOKEN[:SCOPES]`,
  comma-separated) and/or `--tokens-file`, and/or OpenID Connect (`--oidc-issuer`, `--oidc-audience`). The service
  refuses to start without one way in: every endpoint but /v1/health needs it.
- DICOMweb: credentials (`--dicomweb-credentials FILE`, producer.gateway.dicomweb.load_credentials); the roots
  that may be used are the credentials' and `--dicomweb-allow ROOT` ones.
- Data folder (`--data-dir`, default ~/.cache/litemedsam-fleet/gateway, 0700): job records, uploads, results,
  thumbnails, (embedded mode) the content-addressed result store, and the audit trail (`audit/`, or
  `--audit-log PATH`); `--retention-days` (default 7) after a job ended its data is purged, the audit kept.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from producer.gateway.dicomweb import ClientSettings, Credentials
from producer.gateway.identity import Identity, OidcSettings
from producer.gateway.limits import LimitSettings
from producer.gateway.retention import DEFAULT_RETENTION_DAYS
from producer.sessions import SessionLimits
from worker.contract.settings import variable

TOKENS_ENV = variable("api_tokens")


def default_data_dir() -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "litemedsam-fleet" / "gateway"


@dataclass(frozen=True)
class GatewayConfig:
    tokens: dict[str, Identity]  # token -> identity (producer.gateway.identity.read_tokens)
    data_dir: Path = field(default_factory=default_data_dir)
    credentials: dict[str, Credentials] = field(default_factory=dict)
    dicomweb_allow: tuple[str, ...] = ()  # roots allowed without credentials
    dicomweb: ClientSettings = field(default_factory=ClientSettings)
    oidc: OidcSettings | None = None
    audit_log: Path | None = None  # None: <data dir>/audit/audit.jsonl
    retention_days: float = DEFAULT_RETENTION_DAYS
    limits: LimitSettings = field(default_factory=LimitSettings)
    broker: str | None = None  # None: the embedded queue in this process
    concurrency: int = 0  # jobs at once; 0: 1 embedded (one engine), 4 with a fleet
    engine_settings: object | None = None  # worker.engine.engine.EngineSettings for the embedded queue
    max_upload_mb: int = 2048
    fleet_timeout: float | None = None  # seconds a fleet job may take before it is an error; None: no limit
    session_limits: SessionLimits = field(default_factory=SessionLimits)  # open sessions, their bytes, idle time

    @property
    def jobs_at_once(self) -> int:
        if self.concurrency > 0:
            return 1 if self.broker is None else self.concurrency
        return 1 if self.broker is None else 4

    @property
    def audit_path(self) -> Path:
        return self.audit_log or Path(self.data_dir) / "audit" / "audit.jsonl"
