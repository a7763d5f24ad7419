"""`worker start` (a thin wrapper over `celery worker` with the fleet's app) and `worker ping`.

Every option becomes the environment variable the app reads (worker.contract.settings), so `worker start ...` and
`LITEMEDSAM_...=... celery -A worker.app worker ...` start the same worker.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from worker.contract.engine_options import engine_config, engine_options
from worker.contract.settings import DEFAULT_BROKER, DEFAULT_QUEUE, thread_plan, variable
from worker.cpu_affinity import plan


def _export(name: str, value) -> None:
    if value is not None and value != "":
        os.environ[name] = str(value)


def check_models(models_dir: Path, routing: Path | None, precision: str = "f32") -> tuple[list[str], str]:
    """Names of the registered models and the precision profile they will run (a `fast` request resolved for
    this host, saying which and why); exits with a clear message if none can run."""
    from models.registry import load_registry
    from worker.calibration import choose_profile
    from worker.contract.routing import RoutingTable
    from worker.contract.settings import routing_file

    registry = load_registry(models_dir)
    if not registry:
        raise click.ClickException(
            f"no exported models in {models_dir}: run `python -m models.export` "
            "(or mount the models volume) before starting a worker"
        )
    try:
        table = RoutingTable.load(routing_file(routing))  # a broken routing table fails here, not in every child
        choice = choose_profile(precision, table, models_dir, registry)
    except ValueError as error:
        raise click.BadParameter(str(error), param_hint="--precision/--routing") from None
    described = f"{choice.name} ({choice.profile.describe()})"
    return sorted(registry), described + (f"; {choice.reason}" if choice.reason else "")


@click.group()
def cli() -> None:
    """LiteMedSAM fleet worker."""


@cli.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@click.option("--broker", envvar=variable("broker"), default=DEFAULT_BROKER, show_default=True)
@click.option("--store", envvar=variable("store"), default="", help="Blob store URL (default: the broker's Redis).")
@click.option(
    "--concurrency",
    "-c",
    type=click.IntRange(1),
    default=1,
    show_default=True,
    help="Prefork child processes (each compiles its own models).",
)
@engine_options(
    "threads",
    "cpus",
    "models_dir",
    "precision",
    "cache_mb",
    "routing_file",
    help_of={"threads": "OpenVINO threads per process (0: cores // concurrency)."},
)
@click.option("--queues", "-Q", default=DEFAULT_QUEUE, show_default=True, help="Comma-separated queues to consume.")
@click.option(
    "--memory-mb",
    type=click.IntRange(0),
    default=None,
    help="Memory guard per process in MB (default: 80% of RAM / concurrency; 0: off).",
)
@click.option("--metrics-port", type=int, default=None, help="Serve Prometheus metrics on this port.")
@click.option("--hostname", "-n", default=None, help="Node name (default: litemedsam-<pid>@<host>).")
@click.option("--loglevel", "-l", default="INFO", show_default=True)
@click.pass_context
def start(
    ctx: click.Context,
    broker: str,
    store: str,
    concurrency: int,
    threads: int,
    cpus: str,
    queues: str,
    models_dir: Path | None,
    precision: str,
    cache_mb: int,
    memory_mb: int | None,
    routing: Path | None,
    metrics_port: int | None,
    hostname: str | None,
    loglevel: str,
) -> None:
    """Start a worker: `celery worker` with the prefork pool; extra arguments go to celery as they are."""
    from models.paths import default_models_dir

    try:
        config = engine_config(
            threads=threads, cpus=cpus, models_dir=models_dir, precision=precision, cache_mb=cache_mb, routing=routing
        )
    except ValueError as error:  # a bad LITEMEDSAM_* value
        raise click.ClickException(str(error)) from None
    models_dir = config.models_dir or default_models_dir()
    models, running = check_models(models_dir, config.routing_file, config.precision)
    threads, warning = thread_plan(concurrency, config.threads)
    if warning:
        click.echo(f"warning: {warning}", err=True)
    try:
        bindings = [plan(config.cpus, slot, threads).describe() for slot in range(concurrency)]
    except ValueError as error:
        raise click.BadParameter(str(error), param_hint="--cpus") from None
    for name, value in (  # the environment its children build their EngineConfig from (EngineConfig.from_env)
        (variable("broker"), broker),
        (variable("store"), store),
        (variable("models_dir"), models_dir),
        (variable("precision"), config.precision),
        (variable("threads"), threads),
        (variable("cache_mb"), config.cache_mb),
        (variable("routing"), config.routing_file),
        (variable("metrics_port"), metrics_port),
        (variable("task_memory_mb"), memory_mb),
        (variable("cpus"), config.cpus),
    ):
        _export(name, value)
    from worker.presence import sessions_note

    click.echo(
        f"models {', '.join(models)} | precision {running} | {concurrency} x {threads} thread(s) | "
        f"queues {queues} | {'; '.join(dict.fromkeys(bindings))} | {sessions_note(concurrency)}",
        err=True,
    )
    from worker.app import app

    argv = [
        "worker",
        "--pool=prefork",
        f"--concurrency={concurrency}",
        f"--queues={queues}",
        f"--hostname={hostname or f'litemedsam-{os.getpid()}@%h'}",
        f"--loglevel={loglevel}",
        *ctx.args,
    ]
    app.worker_main(argv=argv)


@cli.command()
@engine_options("models_dir", "threads", "routing_file")
@click.option(
    "--cases",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    default=None,
    help="Cases with ground truth (imgs/ + gts/) to derive evaluation cases from (default: "
    "../shared/data/cases beside the checkout when present, else the project's phantoms).",
)
@click.option("--profiles", default="", help="Comma-separated profiles to check (default: every profile but f32).")
@click.option("--quick", is_flag=True, help="Only the smallest few cases (a smoke run, not a verdict to trust).")
@click.option("--max-cases", type=click.IntRange(1), default=None, help="At most this many (smallest) cases.")
@click.option("--json", "as_json", is_flag=True, help="Print the verdict as JSON.")
def calibrate(
    models_dir: Path | None,
    threads: int,
    routing: Path | None,
    cases: Path | None,
    profiles: str,
    quick: bool,
    max_cases: int | None,
    as_json: bool,
) -> None:
    """Check each precision profile against f32 on this host, per case, and record the verdict for `fast`."""
    import json

    from models.paths import default_models_dir
    from worker.calibrate import run, summary_lines

    models_dir = models_dir or default_models_dir()
    check_models(models_dir, routing)
    names = [name.strip() for name in profiles.split(",") if name.strip()] or None
    try:
        verdict, path = run(
            models_dir,
            cases,
            names,
            threads,
            quick,
            max_cases,
            routing,
            lambda message: click.echo(message, err=True),
            " ".join(["worker", *sys.argv[1:]]),
        )
    except ValueError as error:
        raise click.ClickException(str(error)) from None
    if as_json:
        click.echo(json.dumps(verdict, indent=1))
    else:
        for line in summary_lines(verdict):
            click.echo(line)
    click.echo(f"recorded in {path}", err=True)


@cli.command()
@click.option("--broker", envvar=variable("broker"), default=DEFAULT_BROKER, show_default=True)
@click.option("--timeout", type=float, default=2.0, show_default=True)
@click.option("--node", default=None, help="Ping only this node (e.g. worker@$(hostname) in a health check).")
def ping(broker: str, timeout: float, node: str | None) -> None:
    """Ping the workers on the broker; list the engines published per queue. Exit 1 if none answers."""
    from worker.app import make_app
    from worker.contract.keys import Keys
    from worker.contract.settings import FleetSettings, redis_client
    from worker.directory import IdentityDirectory

    settings = FleetSettings.from_env(broker)
    app = make_app(settings)
    if node:
        replies = app.control.ping(destination=[node], timeout=timeout, limit=1)
    else:
        replies = app.control.ping(timeout=timeout)
    for reply in replies:
        for name, answer in reply.items():
            click.echo(f"{name}: {answer.get('ok', answer)}")
    if not node:
        directory = IdentityDirectory(redis_client(settings.broker_url), Keys(settings.namespace))
        for queue in sorted(_active_queues(settings, timeout)):
            for entry in directory.published(queue)[:3]:
                click.echo(
                    f"queue {queue}: engine {entry.identity.fingerprint()} ({entry.identity.precision}, "
                    f"models {', '.join(sorted(entry.identity.models))}) from {entry.node}"
                )
    if not replies:
        click.echo("no worker answered", err=True)
        sys.exit(1)


def _active_queues(settings, timeout: float) -> set[str]:
    from worker.app import make_app

    answers = make_app(settings).control.inspect(timeout=timeout).active_queues() or {}
    return {queue["name"] for queues in answers.values() for queue in queues} or {settings.default_queue}


def main() -> None:
    cli()


if __name__ == "__main__":
    main()
