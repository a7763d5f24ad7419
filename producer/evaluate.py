"""The `evaluate` command: the challenge's DSC and NSD (worker.evaluation.metrics, where the maths lives, shared
with `worker calibrate`) over a folder of segmentations, as a table and a CSV.

The metrics' public names stay importable from here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from worker.contract.engine_options import engine_config, engine_options
from worker.evaluation.metrics import (
    NSD_MIN_DSC,
    NSD_TOLERANCE,
    CaseScore,
    dsc_case,
    evaluate_dirs,
    leaderboard,
    load_array,
    modality_means,
    modality_of,
    score_case,
    write_csv,
)

__all__ = [
    "NSD_MIN_DSC",
    "NSD_TOLERANCE",
    "CaseScore",
    "dsc_case",
    "evaluate_command",
    "evaluate_dirs",
    "leaderboard",
    "load_array",
    "modality_means",
    "modality_of",
    "score_case",
    "scores_table",
    "write_csv",
]


def scores_table(scores: list[CaseScore]) -> Table:
    table = Table(title="Challenge metrics (DSC, NSD @ 2 mm / 2 px)")
    table.add_column("case", overflow="fold")
    table.add_column("modality")
    table.add_column("DSC", justify="right")
    table.add_column("NSD", justify="right")
    table.add_column("note")
    for s in scores:
        note = "[yellow]no segs[/]" if s.missing else ""
        table.add_row(s.name, s.modality, f"{s.dsc:.4f}", f"{s.nsd:.4f}", note)
    table.add_section()
    for modality, (dsc, nsd) in modality_means(scores).items():
        table.add_row(f"mean {modality}", modality, f"{dsc:.4f}", f"{nsd:.4f}", "")
    table.add_section()
    dsc, nsd = leaderboard(scores)
    table.add_row("[bold]leaderboard[/]", "all", f"[bold]{dsc:.4f}[/]", f"[bold]{nsd:.4f}[/]", "mean of modality means")
    return table


_DIR = click.Path(exists=True, file_okay=False, path_type=Path)


@click.command("evaluate")
@click.option("--gts", "gts_dir", required=True, type=_DIR, help="Directory of ground-truth *.npz (gts[, spacing]).")
@click.option("--segs", "segs_dir", type=_DIR, help="Directory of segmentation *.npz (segs).")
@click.option("--csv", "csv_path", type=click.Path(dir_okay=False, path_type=Path), help="Also write per-case CSV.")
@click.option(
    "--interactive",
    is_flag=True,
    help="Run the CVPR 2025 protocol in-process instead (boxes, then 5 clicks per class): needs --imgs.",
)
@click.option("--imgs", "imgs_dir", type=_DIR, help="--interactive: the cases' images (*.npz with imgs).")
@click.option(
    "--plot", "plot_path", type=click.Path(dir_okay=False, path_type=Path), help="--interactive: DSC per step, PNG."
)
@click.option("--refine", default=None, help="--interactive: the refinement candidate (default: the engine's).")
@engine_options("models_dir", "precision", "threads", "cache_mb", "routing_file")
def evaluate_command(
    gts_dir: Path,
    segs_dir: Path | None,
    csv_path: Path | None,
    interactive: bool,
    imgs_dir: Path | None,
    plot_path: Path | None,
    refine: str | None,
    **engine: Any,
) -> None:
    """Score segmentations against ground truth with the challenge's DSC and NSD (or, with --interactive, run the
    2025 interactive protocol on the cases and score every step)."""
    if interactive:
        if imgs_dir is None:
            raise click.UsageError("--interactive needs --imgs (the cases' images)")
        from producer.interactive_cli import run_interactive

        run_interactive(imgs_dir, gts_dir, plot_path, csv_path, refine, engine_config(**engine))
        return
    if segs_dir is None:
        raise click.UsageError("--segs is required (or --interactive with --imgs)")
    try:
        scores = evaluate_dirs(gts_dir, segs_dir)
    except ValueError as err:
        raise click.ClickException(str(err)) from err
    if not scores:
        raise click.ClickException(f"no *.npz ground truth in {gts_dir}")
    console = Console()
    console.print(scores_table(scores))
    missing = [s.name for s in scores if s.missing]
    if missing:
        console.print(f"[yellow]{len(missing)} case(s) without segmentation, scored 0: {', '.join(missing)}[/]")
    if csv_path is not None:
        write_csv(scores, csv_path)
        console.print(f"wrote {csv_path}")
