"""`producer serve`: the gateway over uvicorn (click wiring; producer/cli.py registers the command).

TLS: give uvicorn's --ssl-certfile/--ssl-keyfile here, or put the service behind the site's reverse proxy.
"""

from __future__ import annotations

import logging
import os
from dataclasses import replace
from pathlib import Path

import click

from producer.cli_options import broker_option, engine_options, engine_settings
from producer.formats.npz import max_voxels
from producer.gateway.config import TOKENS_ENV, GatewayConfig, default_data_dir, read_tokens
from producer.gateway.dicomweb import ClientSettings, load_credentials

log = logging.getLogger(__name__)


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=int, default=8000, show_default=True)
@broker_option
@click.option(
    "--tokens-file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help=f"API bearer tokens, one a line (also ${TOKENS_ENV}, comma-separated).",
)
@click.option(
    "--dicomweb-credentials",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help='JSON {"<DICOMweb root>": {"username": .., "password": ..} or {"token": ..}}.',
)
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Job records, uploads and results (default ~/.cache/litemedsam-fleet/gateway).",
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
    dicomweb_credentials: Path | None,
    data_dir: Path | None,
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

    try:
        tokens = read_tokens(os.environ.get(TOKENS_ENV), tokens_file)
        credentials = load_credentials(dicomweb_credentials) if dicomweb_credentials else {}
        config = GatewayConfig(
            tokens=tokens,
            data_dir=data_dir or default_data_dir(),
            credentials=credentials,
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
