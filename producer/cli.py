"""`producer`: find studies, segment them, write masks and metrics, evaluate."""
from __future__ import annotations

import logging
from pathlib import Path

import click

from producer.console import BatchProgress, console, summary_table
from producer.discovery import find_studies
from producer.outcome import StudyOutcome
from producer.outputs import OutputWriter

SHARED_CASES = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "cases"


def engine_options(command):
    """Options of the in-process engine (the embedded default)."""
    options = [
        click.option("--models-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
                     help="Exported models (default: $LITEMEDSAM_MODELS_DIR or ~/.cache/litemedsam-fleet/models)."),
        click.option("--precision", type=click.Choice(["f32", "bf16"]), default="f32", show_default=True),
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


def run_embedded(study_dir: Path, out_dir: Path, settings) -> list[StudyOutcome]:
    from producer.embedded import EmbeddedRunner

    sources = find_studies(study_dir)
    if not sources:
        raise click.ClickException(f"no studies found in {study_dir}")
    runner = EmbeddedRunner(settings)
    writer = OutputWriter(out_dir)
    outcomes = []
    with BatchProgress(len(sources)) as bar:
        for source in sources:
            outcome = runner.run_one(source, bar.slices)
            writer.write(source, outcome)
            bar.finished(outcome)
            outcomes.append(outcome)
    console.print(summary_table(outcomes))
    failed = sum(not o.ok for o in outcomes)
    console.print(f"{len(outcomes) - failed} ok, {failed} failed; masks and {writer.metrics_path.name} in {out_dir}")
    return outcomes


@click.group()
@click.option("-v", "--verbose", is_flag=True)
def cli(verbose: bool) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")


@cli.command()
@click.argument("study_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=Path("results"),
              show_default=True)
@engine_options
def submit(study_dir: Path, out_dir: Path, **engine) -> None:
    """Segment every study in STUDY_DIR and write OUT/<study>.npz plus OUT/metrics.jsonl."""
    outcomes = run_embedded(study_dir, out_dir, engine_settings(**engine))
    if outcomes and not any(o.ok for o in outcomes):
        raise SystemExit(1)


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

    cli.add_command(evaluate_command)


_register_optional_commands()


def main() -> None:
    cli()


if __name__ == "__main__":
    main()
