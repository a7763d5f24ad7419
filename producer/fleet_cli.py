"""What the fleet commands of `producer` print: the CLI face of producer.api (click wiring is in cli.py).

Messages and tables go to stderr (producer.console); `submit --no-wait` prints only the batch id on stdout,
so `BATCH=$(producer submit DIR --no-wait)` works.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import NoReturn

import click
from rich.table import Table

from producer import api
from producer.console import console, print_notes, summary_table
from producer.fleet import SubmissionInterrupted
from producer.formats.dicom_outputs import DEFAULT_DICOM_OUTPUTS
from producer.formats.outcome import StudyOutcome
from worker.contract.metrics import StudyMetrics


def _print_skipped(batch: api.Batch) -> None:
    for note in batch.skipped:
        console.print(f"[yellow]skipped {note.path}: {note.reason}")


def _summary(batch: api.Batch, out_dir: Path | None) -> None:
    console.print(summary_table(sorted(batch.outcomes, key=lambda o: o.name)))
    print_notes(sorted(batch.outcomes, key=lambda o: o.name))
    cached = sum(bool(StudyMetrics.model_validate(o.metrics).extra.cached) for o in batch.outcomes if o.ok)
    where = f"; masks and metrics.jsonl in {out_dir}" if out_dir else ""
    console.print(f"batch {batch.batch_id}: {batch.ok} ok ({cached} from the store), {batch.failed} failed{where}")


def submit_to_fleet(
    study_dir: Path,
    out_dir: Path,
    broker: str,
    *,
    wait: bool,
    force: bool,
    queue: str | None,
    routes: tuple[str, ...],
    timeout: float | None,
    dicom_formats: tuple[str, ...] = DEFAULT_DICOM_OUTPUTS,
    split: bool = True,
) -> list[StudyOutcome]:
    from worker.contract.settings import parse_routes

    try:
        routing = parse_routes(",".join(routes))
        batch = api.submit(
            study_dir,
            broker,
            wait=False,
            force=force,
            queue=queue,
            routes=routing,
            dicom_formats=dicom_formats,
            split=split,
        )
    except ValueError as error:
        raise click.BadParameter(str(error), param_hint="--route") from None
    except FileNotFoundError as error:
        raise click.ClickException(str(error)) from None
    except SubmissionInterrupted as interrupted:
        _interrupted(interrupted.batch.batch_id, None if interrupted.complete else len(interrupted.batch.names))
    try:
        _announce(batch, wait)
        if not wait:
            return []
        return fetch_results(batch.batch_id, out_dir, broker, wait=True, timeout=timeout)
    except KeyboardInterrupt:
        _interrupted(batch.batch_id)


def _announce(batch: api.Batch, wait: bool) -> None:
    _print_skipped(batch)
    console.print(
        f"batch {batch.batch_id}: {batch.queued} queued, {batch.cached} already stored, "
        f"{batch.failed_to_submit} could not be submitted"
    )
    for queue in sorted(batch.unserved_queues):
        console.print(
            f"[yellow]no worker has announced itself on queue {queue!r} of this broker yet: its studies "
            "wait until one starts (worker start --queues ...)"
        )
    if not wait:
        click.echo(batch.batch_id)
        console.print(
            f"follow it with: producer status {batch.batch_id}; "
            f"collect it with: producer results {batch.batch_id} --out DIR"
        )


def _interrupted(batch_id: str, enqueued: int | None = None) -> NoReturn:
    """Ctrl-C: the batch goes on in the fleet; say how to collect it (and, if cut short, what is missing)."""
    if enqueued is None:
        console.print(
            f"interrupted: batch {batch_id} goes on in the fleet; collect it with: "
            f"producer results {batch_id} --out DIR"
        )
    else:
        console.print(
            f"interrupted while enqueuing: batch {batch_id} holds the {enqueued} studies enqueued so far "
            f"(collect them with: producer results {batch_id} --out DIR); submit the folder again for "
            "the rest (stored results are reused)"
        )
    raise SystemExit(130)


def fetch_results(
    batch_id: str, out_dir: Path, broker: str, *, wait: bool, timeout: float | None
) -> list[StudyOutcome]:
    try:
        batch = api.results(batch_id, out_dir, broker, wait=wait, timeout=timeout, progress=True)
    except api.UnknownBatch as error:
        raise click.ClickException(str(error)) from None
    except TimeoutError as error:
        raise click.ClickException(f"{error}; run `producer results {batch_id}` again later") from None
    except KeyboardInterrupt:
        _interrupted(batch_id)
    _summary(batch, out_dir)
    if not wait:
        waiting = len(batch.names) - len(batch.outcomes)
        if waiting:
            console.print(f"{waiting} studies not finished yet")
    return batch.outcomes


def show_status(batch_id: str, broker: str, as_json: bool) -> None:
    try:
        state = api.status(batch_id, broker)
    except api.UnknownBatch as error:
        raise click.ClickException(str(error)) from None
    if as_json:
        click.echo(json.dumps(asdict(state), indent=2))
        return
    console.print(status_table(state))


def status_table(state: api.BatchStatus) -> Table:
    counts = ", ".join(f"{state.count(s)} {s}" for s in ("ok", "error", "running", "queued"))
    sealed = "" if state.sealed else " (submission not finished)"
    table = Table(title=f"batch {state.batch_id}: {state.total} studies{sealed}; {counts}")
    for column in ("study", "modality", "state", "slices", "worker", "note"):
        table.add_column(column)
    for row in state.studies:
        slices = f"{row.done}/{row.total}" if row.state == "running" and row.total else ""
        note = row.error if row.state == "error" else ("from the store" if row.cached else "")
        style = {"error": "red", "ok": "green", "running": "cyan"}.get(row.state, "")
        table.add_row(row.name, row.modality, f"[{style}]{row.state}" if style else row.state, slices, row.node, note)
    return table


def show_report(batch: str, broker: str | None, as_json: bool) -> None:
    from producer.report import read_metrics_file, report_tables, summarise

    if Path(batch).is_file():
        result, title = summarise(read_metrics_file(Path(batch))), Path(batch).name
    elif not broker:
        raise click.UsageError(f"{batch} is not a file: to report a fleet batch give --broker or LITEMEDSAM_BROKER")
    else:
        try:
            result, title = api.report(batch, broker), f"batch {batch}"
        except api.UnknownBatch as error:
            raise click.ClickException(str(error)) from None
    if as_json:
        click.echo(json.dumps(result.to_dict(), indent=2))
        return
    for table in report_tables(result, title):
        console.print(table)
