"""`producer`: find studies, segment them, write masks and metrics, evaluate."""
from __future__ import annotations

import logging
from pathlib import Path

import click

from producer.console import BatchProgress, console, summary_table
from producer.discovery import discover
from producer.outcome import StudyOutcome
from producer.outputs import OutputWriter

SHARED_CASES = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "cases"


def engine_options(command):
    """Options of the in-process engine (the embedded default)."""
    options = [
        click.option("--models-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
                     help="Exported models (default: $LITEMEDSAM_MODELS_DIR or ~/.cache/litemedsam-fleet/models)."),
        click.option("--precision", default="f32", show_default=True,
                     help="Precision profile of the routing table (f32, bf16, bf16-encoder, ...), an int8 profile, "
                          "or `fast`: the fastest profile that passed `worker calibrate` on this host, else f32."),
        click.option("--threads", type=int, default=0, show_default=True, help="OpenVINO threads (0: all cores)."),
        click.option("--cache-mb", type=int, default=2048, show_default=True, help="Embedding cache bound."),
        click.option("--routing", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
                     help="Routing table (default: worker/routing.toml or $LITEMEDSAM_ROUTING)."),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def engine_settings(models_dir, precision, threads, cache_mb, routing):
    from worker.engine.engine import EngineSettings

    base = EngineSettings()
    return EngineSettings(
        models_dir=models_dir or base.models_dir, precision=precision, threads=threads,
        cache_bytes=cache_mb << 20, routing_file=routing,
    )


def print_skipped(skipped) -> None:
    for note in skipped:
        console.print(f"[yellow]skipped {note.path}: {note.reason}")


def run_embedded(study_dir: Path, out_dir: Path, settings) -> list[StudyOutcome]:
    from producer.embedded import EmbeddedRunner

    found = discover(study_dir)
    sources = found.studies
    if not sources:
        print_skipped(found.skipped)
        raise click.ClickException(f"no studies found in {study_dir}")
    try:
        runner = EmbeddedRunner(settings)
    except ValueError as error:  # an unknown precision profile or a broken routing table
        raise click.ClickException(str(error)) from None
    choice = runner.engine.precision
    if choice.reason:
        console.print(f"precision {choice.requested}: {choice.reason}")
    writer = OutputWriter(out_dir)
    outcomes = []
    with BatchProgress(len(sources)) as bar:
        for source in sources:
            outcome = runner.run_one(source, bar.slices)
            writer.write(source, outcome)
            bar.finished(outcome)
            outcomes.append(outcome)
    console.print(summary_table(outcomes))
    print_skipped(found.skipped)
    failed = sum(not o.ok for o in outcomes)
    skipped = f", {len(found.skipped)} file(s) skipped (listed above)" if found.skipped else ""
    console.print(f"{len(outcomes) - failed} ok, {failed} failed{skipped}; masks and {writer.metrics_path.name} "
                  f"in {out_dir}")
    return outcomes


def exit_if_all_failed(outcomes: list[StudyOutcome]) -> None:
    """Exit status 1 when a batch produced no result at all (each failure is already reported)."""
    if outcomes and not any(o.ok for o in outcomes):
        raise SystemExit(1)


@click.group()
@click.option("-v", "--verbose", is_flag=True)
def cli(verbose: bool) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")


def broker_option(command):
    return click.option("--broker", envvar="LITEMEDSAM_BROKER", default=None,
                        help="Redis broker of a worker fleet (env LITEMEDSAM_BROKER); none: run in-process.")(command)


def broker_required(broker: str | None) -> str:
    if not broker:
        raise click.UsageError("this command talks to a fleet: give --broker redis://... or set LITEMEDSAM_BROKER")
    return broker


@cli.command()
@click.argument("study_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=Path("results"),
              show_default=True)
@broker_option
@click.option("--no-wait", is_flag=True, help="Fleet: enqueue, print the batch id and return.")
@click.option("--force", is_flag=True, help="Fleet: recompute even when the result is already stored.")
@click.option("--queue", default=None, help="Fleet: send every study to this queue (default: by modality route).")
@click.option("--route", "routes", multiple=True, metavar="MODALITY=QUEUE",
              help="Fleet: send a modality's studies to a queue, e.g. --route PET=pet (repeatable).")
@click.option("--timeout", type=float, default=None, help="Fleet: give up waiting after this many seconds.")
@engine_options
def submit(study_dir: Path, out_dir: Path, broker: str | None, no_wait: bool, force: bool, queue: str | None,
           routes: tuple[str, ...], timeout: float | None, **engine) -> None:
    """Segment every study in STUDY_DIR and write OUT/<study>.npz plus OUT/metrics.jsonl.

    Without a broker the studies run in this process; with one they go to the fleet's workers.
    """
    if broker:
        from producer.fleet_cli import submit_to_fleet

        outcomes = submit_to_fleet(study_dir, out_dir, broker, wait=not no_wait, force=force, queue=queue,
                                   routes=routes, timeout=timeout)
    elif no_wait or force or queue or routes:
        raise click.UsageError("--no-wait, --force, --queue and --route need a fleet: give --broker or set "
                               "LITEMEDSAM_BROKER")
    else:
        outcomes = run_embedded(study_dir, out_dir, engine_settings(**engine))
    exit_if_all_failed(outcomes)


@cli.command()
@click.argument("batch_id")
@broker_option
@click.option("--json", "as_json", is_flag=True, help="Print the status as JSON.")
def status(batch_id: str, broker: str | None, as_json: bool) -> None:
    """How a fleet batch is doing: counts, and each study's state and progress."""
    from producer.fleet_cli import show_status

    show_status(batch_id, broker_required(broker), as_json)


@cli.command()
@click.argument("batch_id")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=Path("results"),
              show_default=True)
@broker_option
@click.option("--no-wait", is_flag=True, help="Write what is finished now instead of waiting for the rest.")
@click.option("--timeout", type=float, default=None, help="Give up waiting after this many seconds.")
def results(batch_id: str, out_dir: Path, broker: str | None, no_wait: bool, timeout: float | None) -> None:
    """Download a fleet batch's masks and metrics into OUT (the same files as an in-process run)."""
    from producer.fleet_cli import fetch_results

    outcomes = fetch_results(batch_id, out_dir, broker_required(broker), wait=not no_wait, timeout=timeout)
    exit_if_all_failed(outcomes)


@cli.command()
@click.argument("batch")
@broker_option
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def report(batch: str, broker: str | None, as_json: bool) -> None:
    """Timing summary of a fleet BATCH id, or of a metrics.jsonl file from any run."""
    from producer.fleet_cli import show_report

    show_report(batch, broker, as_json)


@cli.command()
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=Path("demo-results"),
              show_default=True)
@engine_options
def demo(out_dir: Path, **engine) -> None:
    """Segment the developer cases (../shared/data/cases) if present, else generated phantoms, and score them."""
    from producer.evaluate import evaluate_dirs, scores_table
    from producer.phantoms import demo_dir_or_phantoms

    cases = demo_dir_or_phantoms(SHARED_CASES, out_dir / "phantoms")
    console.print(f"demo studies: {cases}")
    run_embedded(cases / "imgs", out_dir, engine_settings(**engine))
    if (cases / "gts").is_dir():
        console.print(scores_table(evaluate_dirs(cases / "gts", out_dir)))


def _register_optional_commands() -> None:
    from producer.evaluate import evaluate_command
    from producer.overlay import overlay_command

    cli.add_command(evaluate_command)
    cli.add_command(overlay_command)


_register_optional_commands()


def main() -> None:
    cli()


if __name__ == "__main__":
    main()
