"""The command-line options `producer` and `producer serve` share: the fleet's broker and the in-process engine's
options (one table, worker.contract.engine_options), so the gateway's command takes them from here and not from
producer.cli, which registers it.
"""

from __future__ import annotations

import click

from worker.contract.engine_options import engine_config
from worker.contract.engine_options import engine_options as engine_option_table
from worker.contract.settings import variable

engine_options = engine_option_table("models_dir", "precision", "threads", "cache_mb", "routing_file")
"""The in-process engine's options (the embedded default): those of worker.contract.engine_options."""


def engine_settings(**options):
    """The in-process engine's settings: the command line's engine options over the environment's (EngineConfig,
    the type a fleet worker builds its engine from too)."""
    from worker.engine.engine import EngineSettings

    return EngineSettings.from_config(engine_config(**options))


def broker_option(command):
    return click.option(
        "--broker",
        envvar=variable("broker"),
        default=None,
        help="Redis broker of a worker fleet (env LITEMEDSAM_BROKER); none: run in-process.",
    )(command)


def broker_required(broker: str | None) -> str:
    if not broker:
        raise click.UsageError("this command talks to a fleet: give --broker redis://... or set LITEMEDSAM_BROKER")
    return broker
