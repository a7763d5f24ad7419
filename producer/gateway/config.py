"""The gateway's settings: API tokens, DICOMweb credentials, where jobs live, how jobs run.

- API tokens: `LITEMEDSAM_API_TOKENS` (comma-separated) and/or `--tokens-file` (one a line, `#` comments). The
  service refuses to start without at least one: every endpoint but /v1/health needs one.
- DICOMweb credentials: `--dicomweb-credentials FILE` (producer.gateway.dicomweb.load_credentials).
- Data folder (`--data-dir`, default ~/.cache/litemedsam-fleet/gateway): job records, uploads, results,
  thumbnails and (embedded mode) the content-addressed result store.
"""

from __future__ import annotations

import hmac
import os
from dataclasses import dataclass, field
from pathlib import Path

from producer.gateway.dicomweb import ClientSettings, Credentials

TOKENS_ENV = "LITEMEDSAM_API_TOKENS"
MIN_TOKEN_LENGTH = 16


def default_data_dir() -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "litemedsam-fleet" / "gateway"


def read_tokens(env_value: str | None, tokens_file: Path | None) -> tuple[str, ...]:
    tokens = [t.strip() for t in (env_value or "").split(",") if t.strip()]
    if tokens_file is not None:
        lines = Path(tokens_file).read_text(encoding="utf-8").splitlines()
        tokens += [line.strip() for line in lines if line.strip() and not line.strip().startswith("#")]
    short = [t for t in tokens if len(t) < MIN_TOKEN_LENGTH]
    if short:
        raise ValueError(
            f"{len(short)} API token(s) shorter than {MIN_TOKEN_LENGTH} characters: use long random "
            "tokens, e.g. `openssl rand -hex 24`"
        )
    return tuple(dict.fromkeys(tokens))


class TokenCheck:
    """Constant-time comparison against every configured token (no early exit on the first match)."""

    def __init__(self, tokens: tuple[str, ...]):
        if not tokens:
            raise ValueError(f"no API tokens: set {TOKENS_ENV} or give --tokens-file (one token a line)")
        self._tokens = tuple(t.encode() for t in tokens)

    def accepts(self, presented: str | None) -> bool:
        if not presented:
            return False
        candidate = presented.encode()
        matched = False
        for token in self._tokens:
            matched |= hmac.compare_digest(candidate, token)
        return matched


@dataclass(frozen=True)
class GatewayConfig:
    tokens: tuple[str, ...]
    data_dir: Path = field(default_factory=default_data_dir)
    credentials: dict[str, Credentials] = field(default_factory=dict)
    dicomweb: ClientSettings = field(default_factory=ClientSettings)
    broker: str | None = None  # None: the embedded queue in this process
    concurrency: int = 0  # jobs at once; 0: 1 embedded (one engine), 4 with a fleet
    engine_settings: object | None = None  # worker.engine.engine.EngineSettings for the embedded queue
    max_upload_mb: int = 2048
    fleet_timeout: float | None = None  # seconds a fleet job may take before it is an error; None: no limit

    @property
    def jobs_at_once(self) -> int:
        if self.concurrency > 0:
            return 1 if self.broker is None else self.concurrency
        return 1 if self.broker is None else 4
