"""What the person at the terminal sees: a progress bar per batch and per running study, and a summary table."""

from __future__ import annotations

from collections.abc import Iterable

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from producer.formats.outcome import StudyOutcome

console = Console(stderr=True)


class BatchProgress:
    """`with BatchProgress(n) as bar:` then bar.slices(name, done, total) and bar.finished(outcome)."""

    def __init__(self, total_studies: int):
        self._progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console,
            transient=False,
        )
        self._batch = self._progress.add_task("studies", total=total_studies)
        self._current: dict[str, int] = {}

    def __enter__(self) -> BatchProgress:
        self._progress.start()
        return self

    def __exit__(self, *exc) -> None:
        self._progress.stop()

    def slices(self, name: str, done: int, total: int) -> None:
        if name not in self._current:
            self._current[name] = self._progress.add_task(f"  {name} slices", total=total)
        self._progress.update(self._current[name], completed=done, total=total)

    def finished(self, outcome: StudyOutcome) -> None:
        task = self._current.pop(outcome.name, None)
        if task is not None:
            self._progress.remove_task(task)
        self._progress.advance(self._batch)
        if not outcome.ok:
            self._progress.console.print(f"[red]✗ {outcome.name}: {outcome.error}")


def summary_table(outcomes: Iterable[StudyOutcome]) -> Table:
    table = Table(title="Segmentation summary")
    for column in ("study", "modality", "strategy", "model", "boxes", "slices enc.", "engine s", "wall s", "status"):
        numeric = column in ("boxes", "slices enc.", "engine s", "wall s")
        table.add_column(column, justify="right" if numeric else "left")
    for o in outcomes:
        prov, counts, times = (o.metrics.get(k, {}) for k in ("provenance", "counts", "times"))
        table.add_row(
            o.name,
            o.modality,
            prov.get("strategy", "-"),
            prov.get("model", "-"),
            str(counts.get("boxes", "-")),
            str(counts.get("slices_encoded", "-")),
            f"{times['total']:.2f}" if "total" in times else "-",
            f"{o.seconds:.2f}",
            "ok" if o.ok else f"[red]error: {o.error}",
        )
    return table


def print_notes(outcomes) -> None:
    """What the readers and writers decided for each study that its user should know (grouping, derived UIDs,
    a label map written instead of a DICOM output)."""
    for outcome in outcomes:
        for note in outcome.notes:
            console.print(f"[cyan]note {outcome.name}: {note}")
