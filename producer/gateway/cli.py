"""`producer serve`: the gateway over uvicorn (click wiring; producer/cli.py registers the command).

TLS: give uvicorn's --ssl-certfile/--ssl-keyfile here, or put the service behind the site's reverse proxy.
The process's umask is 077: every folder and file it writes (job data, audit) is its user's only.
"""

from __future__ import annotations

import logging
import os
from dataclasses import replace
from pathlib import Path

import click

from producer.cli_options import broker_option, engine_options, engine_settings
from producer.gateway.config import TOKENS_ENV, GatewayConfig, default_data_dir
from producer.gateway.dicomweb import ClientSettings, load_credentials
from producer.gateway.identity import OidcSettings, read_tokens
from producer.gateway.limits import (
    DEFAULT_ACTIVE,
    DEFAULT_FAILED_AUTH,
    DEFAULT_FAILED_AUTH_CLIENTS,
    DEFAULT_RATE,
    LimitSettings,
)
from producer.gateway.retention import DEFAULT_RETENTION_DAYS
from worker.contract.settings import environment, max_voxels

log = logging.getLogger(__name__)


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=int, default=8000, show_default=True)
@broker_option
@click.option(
    "--tokens-file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help=f"Named API tokens, NAME:TOKEN[:SCOPE+SCOPE] one a line, or JSON {{NAME: {{token, scopes}}}} (also "
    f"${TOKENS_ENV}, comma-separated). Scopes: submit, read (the default), admin.",
)
@click.option(
    "--oidc-issuer", default=None, metavar="URL", help="OpenID Connect issuer whose bearer JWTs are accepted."
)
@click.option("--oidc-audience", default=None, help="The audience (aud) those JWTs must name (this service).")
@click.option("--oidc-jwks-url", default=None, metavar="URL", help="The issuer's JWKS (default: from its discovery).")
@click.option(
    "--dicomweb-credentials",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help='JSON {"<DICOMweb root>": {"username": .., "password": ..} or {"token": ..}}; these roots may be used.',
)
@click.option(
    "--dicomweb-allow",
    multiple=True,
    metavar="ROOT",
    help="A DICOMweb root jobs may read from and store to without credentials (repeat for several).",
)
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Job records, uploads, results and the audit trail (default ~/.cache/litemedsam-fleet/gateway).",
)
@click.option(
    "--audit-log",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="The audit trail's file, rotated daily, never purged (default DATA_DIR/audit/audit.jsonl).",
)
@click.option(
    "--retention-days",
    type=float,
    default=DEFAULT_RETENTION_DAYS,
    show_default=True,
    help="Days a job's data (uploads, SEG, NIfTI, thumbnail) is kept after it ended.",
)
@click.option(
    "--rate-limit", default=DEFAULT_RATE, show_default=True, help="Requests per identity (N/second|minute|hour)."
)
@click.option(
    "--failed-auth-limit",
    default=DEFAULT_FAILED_AUTH,
    show_default=True,
    help="Requests without a valid credential per client address (an IPv6 one by its /64; N/second|minute|hour); "
    "past it, 429 before any credential is checked, except for a credential that was valid before.",
)
@click.option(
    "--failed-auth-clients",
    type=click.IntRange(min=1),
    default=DEFAULT_FAILED_AUTH_CLIENTS,
    show_default=True,
    help="Client addresses the failed-credential table remembers (least recently failing forgotten first).",
)
@click.option(
    "--max-active-jobs",
    type=click.IntRange(min=1),
    default=DEFAULT_ACTIVE,
    show_default=True,
    help="Unfinished jobs one identity may have at once.",
)
@click.option("--concurrency", type=int, default=0, help="Fleet jobs followed at once (default 4); embedded: 1.")
@click.option(
    "--dicomweb-timeout",
    type=float,
    default=60.0,
    show_default=True,
    help="Seconds a DICOMweb server may take to answer one request.",
)
@click.option(
    "--dicomweb-retries",
    type=int,
    default=2,
    show_default=True,
    help="Further attempts after a connection error, timeout or 429/502/503/504.",
)
@click.option("--fleet-timeout", type=float, default=None, help="Seconds a fleet job may take (default: no limit).")
@click.option("--max-upload-mb", type=int, default=2048, show_default=True)
@click.option("--ssl-certfile", type=click.Path(exists=True, dir_okay=False), default=None, help="TLS certificate.")
@click.option("--ssl-keyfile", type=click.Path(exists=True, dir_okay=False), default=None, help="TLS key.")
@engine_options
def serve(
    host: str,
    port: int,
    broker: str | None,
    tokens_file: Path | None,
    oidc_issuer: str | None,
    oidc_audience: str | None,
    oidc_jwks_url: str | None,
    dicomweb_credentials: Path | None,
    dicomweb_allow: tuple[str, ...],
    data_dir: Path | None,
    audit_log: Path | None,
    retention_days: float,
    rate_limit: str,
    failed_auth_limit: str,
    failed_auth_clients: int,
    max_active_jobs: int,
    concurrency: int,
    dicomweb_timeout: float,
    dicomweb_retries: int,
    fleet_timeout: float | None,
    max_upload_mb: int,
    ssl_certfile: str | None,
    ssl_keyfile: str | None,
    **engine,
) -> None:
    """Serve the hospital gateway: jobs over HTTP, series from DICOMweb, the DICOM SEG stored back.

    With --broker (or LITEMEDSAM_BROKER) jobs run on the fleet; without, in this process, one at a time.
    """
    import uvicorn

    from producer.gateway.app import create_app

    os.umask(0o077)
    try:
        tokens = read_tokens(environment().api_tokens, tokens_file, f"${TOKENS_ENV}")
        credentials = load_credentials(dicomweb_credentials) if dicomweb_credentials else {}
        if bool(oidc_issuer) != bool(oidc_audience):
            raise ValueError("OpenID Connect needs both --oidc-issuer and --oidc-audience")
        config = GatewayConfig(
            tokens=tokens,
            data_dir=data_dir or default_data_dir(),
            credentials=credentials,
            dicomweb_allow=dicomweb_allow,
            oidc=OidcSettings(oidc_issuer, oidc_audience, oidc_jwks_url) if oidc_issuer and oidc_audience else None,
            audit_log=audit_log,
            retention_days=retention_days,
            limits=LimitSettings(rate_limit, max_active_jobs, failed_auth_limit, failed_auth_clients),
            dicomweb=ClientSettings(read_timeout=dicomweb_timeout, retries=max(0, dicomweb_retries)),
            broker=broker or None,
            concurrency=concurrency,
            engine_settings=None if broker else replace(engine_settings(**engine), max_voxels=max_voxels()),
            max_upload_mb=max_upload_mb,
            fleet_timeout=fleet_timeout,
        )
        app = create_app(config)
    except (ValueError, OSError) as error:
        raise click.ClickException(str(error)) from None
    mode = "fleet" if broker else "embedded"
    click.echo(
        f"gateway ({mode}) on {'https' if ssl_certfile else 'http'}://{host}:{port}; data in {config.data_dir}",
        err=True,
    )
    uvicorn.run(app, host=host, port=port, ssl_certfile=ssl_certfile, ssl_keyfile=ssl_keyfile, log_level="info")
