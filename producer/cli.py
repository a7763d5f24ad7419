"""`producer`: find studies, segment them, write masks and metrics, evaluate."""

from __future__ import annotations

import logging
from pathlib import Path

import click

from producer.cli_options import broker_option, broker_required, engine_options, engine_settings
from producer.console import BatchProgress, console, print_notes, summary_table
from producer.discovery import discover
from producer.formats.dicom_outputs import DEFAULT_DICOM_OUTPUTS, DICOM_OUTPUTS
from producer.formats.outcome import StudyOutcome
from producer.outputs import OutputWriter

SHARED_CASES = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "cases"


def print_skipped(skipped) -> None:
    for note in skipped:
        console.print(f"[yellow]skipped {note.path}: {note.reason}")


def run_embedded(
    study_dir: Path, out_dir: Path, settings, dicom_formats: tuple[str, ...] = DEFAULT_DICOM_OUTPUTS
) -> list[StudyOutcome]:
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
    writer = OutputWriter(out_dir, dicom_formats)
    outcomes = []
    with BatchProgress(len(sources)) as bar:
        for source in sources:
            outcome = runner.run_one(source, bar.slices)
            writer.write(source, outcome)
            bar.finished(outcome)
            outcomes.append(outcome)
    console.print(summary_table(outcomes))
    print_notes(outcomes)
    print_skipped(found.skipped)
    failed = sum(not o.ok for o in outcomes)
    skipped = f", {len(found.skipped)} file(s) skipped (listed above)" if found.skipped else ""
    console.print(
        f"{len(outcomes) - failed} ok, {failed} failed{skipped}; masks and {writer.metrics_path.name} in {out_dir}"
    )
    return outcomes


def exit_if_all_failed(outcomes: list[StudyOutcome]) -> None:
    """Exit status 1 when a batch produced no result at all (each failure is already reported)."""
    if outcomes and not any(o.ok for o in outcomes):
        raise SystemExit(1)


@click.group()
@click.option("-v", "--verbose", is_flag=True)
def cli(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )


@cli.command()
@click.argument("study_dir", required=False, type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option(
    "--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=Path("results"), show_default=True
)
@broker_option
@click.option("--no-wait", is_flag=True, help="Fleet: enqueue, print the batch id and return.")
@click.option("--force", is_flag=True, help="Fleet: recompute even when the result is already stored.")
@click.option("--queue", default=None, help="Fleet: send every study to this queue (default: by modality route).")
@click.option(
    "--route",
    "routes",
    multiple=True,
    metavar="MODALITY=QUEUE",
    help="Fleet: send a modality's studies to a queue, e.g. --route PET=pet (repeatable).",
)
@click.option("--timeout", type=float, default=None, help="Fleet: give up waiting after this many seconds.")
@click.option(
    "--split",
    type=click.Choice(["on", "off"]),
    default="on",
    show_default=True,
    help="Fleet: on: a big 3D study may be split across idle workers (docs/operations/scaling.md); "
    "off: every study of this batch runs on one worker.",
)
@click.option(
    "--dicom-format",
    "dicom_format",
    default=",".join(DEFAULT_DICOM_OUTPUTS),
    show_default=True,
    metavar="|".join(DICOM_OUTPUTS) + ",...",
    help="What DICOM studies are written as: a DICOM SEG, an RT Structure Set, or both.",
)
@click.option(
    "--dicomweb",
    default=None,
    metavar="URL",
    help="Take the series from this DICOMweb root instead of STUDY_DIR (with --study, --series, --prompts).",
)
@click.option("--study", "study_uid", default=None, help="DICOMweb: StudyInstanceUID.")
@click.option("--series", "series_uid", default=None, help="DICOMweb: SeriesInstanceUID.")
@click.option(
    "--prompts",
    "prompts_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="DICOMweb: the series' prompts.json.",
)
@click.option("--stow", is_flag=True, help="DICOMweb: store the SEG back into the source study (STOW-RS).")
@click.option(
    "--dicomweb-credentials",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help='DICOMweb: JSON {"<root>": {"username": .., "password": ..} or {"token": ..}}.',
)
@click.option(
    "--dicomweb-allow",
    "dicomweb_allow",
    multiple=True,
    metavar="ROOT",
    help="DICOMweb: a root that may be used without credentials (the credentials file's roots are allowed).",
)
@engine_options
def submit(
    study_dir: Path | None,
    out_dir: Path,
    broker: str | None,
    no_wait: bool,
    force: bool,
    queue: str | None,
    routes: tuple[str, ...],
    timeout: float | None,
    split: str,
    dicom_format: str,
    dicomweb: str | None,
    study_uid: str | None,
    series_uid: str | None,
    prompts_file: Path | None,
    stow: bool,
    dicomweb_credentials: Path | None,
    dicomweb_allow: tuple[str, ...],
    **engine,
) -> None:
    """Segment every study in STUDY_DIR (or one DICOMweb series) and write OUT/<study>.* plus OUT/metrics.jsonl.

    Without a broker the studies run in this process; with one they go to the fleet's workers.
    """
    from producer.outputs import parse_dicom_formats

    try:
        dicom_formats = parse_dicom_formats(dicom_format)
    except ValueError as error:
        raise click.BadParameter(str(error), param_hint="--dicom-format") from None

    def run(folder: Path) -> list[StudyOutcome]:
        return _submit(
            folder, out_dir, broker, no_wait, force, queue, routes, timeout, engine, dicom_formats, split == "on"
        )

    if dicomweb:
        _submit_dicomweb(
            dicomweb,
            study_uid,
            series_uid,
            prompts_file,
            stow,
            dicomweb_credentials,
            dicomweb_allow,
            study_dir,
            no_wait,
            run,
            out_dir,
        )
        return
    if study_dir is None:
        raise click.UsageError("give STUDY_DIR, or --dicomweb URL --study UID --series UID --prompts FILE")
    if stow or study_uid or series_uid or prompts_file:
        raise click.UsageError("--study, --series, --prompts and --stow go with --dicomweb")
    exit_if_all_failed(run(study_dir))


def _submit(
    study_dir, out_dir, broker, no_wait, force, queue, routes, timeout, engine, dicom_formats, split: bool = True
) -> list[StudyOutcome]:
    if broker:
        from producer.fleet_cli import submit_to_fleet

        return submit_to_fleet(
            study_dir,
            out_dir,
            broker,
            wait=not no_wait,
            force=force,
            queue=queue,
            routes=routes,
            timeout=timeout,
            dicom_formats=dicom_formats,
            split=split,
        )
    if no_wait or force or queue or routes:
        raise click.UsageError(
            "--no-wait, --force, --queue and --route need a fleet: give --broker or set LITEMEDSAM_BROKER"
        )
    return run_embedded(study_dir, out_dir, engine_settings(**engine), dicom_formats)


def _submit_dicomweb(
    root, study_uid, series_uid, prompts_file, stow, credentials_file, allow, study_dir, no_wait, run, out_dir
) -> None:
    import tempfile

    if study_dir is not None or no_wait:
        raise click.UsageError("--dicomweb takes no STUDY_DIR and waits for its results (no --no-wait)")
    if not (study_uid and series_uid and prompts_file):
        raise click.UsageError("--dicomweb needs --study UID, --series UID and --prompts FILE")
    try:
        from producer.gateway.dicomweb import DicomwebError
        from producer.gateway.series_source import fetch_series_folder, servers, stow_results
    except ImportError as error:
        raise click.ClickException(
            f"--dicomweb needs the gateway extra: pip install -e '.[gateway]' ({error})"
        ) from error
    from worker.contract.study import StudyError

    try:
        directory = servers(credentials_file, tuple(allow))
        with tempfile.TemporaryDirectory(prefix="litemedsam-dicomweb-") as folder:
            fetch_series_folder(directory, root, study_uid, series_uid, prompts_file, Path(folder))
            outcomes = run(Path(folder))
            stored = stow_results(directory, root, out_dir, outcomes) if stow else []
    except (DicomwebError, StudyError, ValueError) as error:
        raise click.ClickException(str(error)) from None
    for item in stored:
        where = "already in the PACS" if item.already_present else "stored in the PACS"
        console.print(f"SEG {item.sop_uid} (series {item.series_uid}) {where}, study {item.study_uid}")
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
@click.option(
    "--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=Path("results"), show_default=True
)
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
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("demo-results"),
    show_default=True,
)
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
    cli.add_command(serve_command)


@click.command(
    "serve", context_settings={"ignore_unknown_options": True, "allow_extra_args": True}, add_help_option=False
)
@click.pass_context
def serve_command(ctx: click.Context) -> None:
    """Serve the hospital gateway (HTTP jobs, DICOMweb in and out); `producer serve --help` for its options."""
    try:
        from producer.gateway.cli import serve
    except ImportError as error:
        raise click.ClickException(f"the gateway needs its extra: pip install -e '.[gateway]' ({error})") from None
    serve.main(args=ctx.args, prog_name="producer serve", standalone_mode=True)


_register_optional_commands()


def main() -> None:
    cli()


if __name__ == "__main__":
    main()
