"""`producer evaluate --interactive`: the 2025 protocol (producer.interactive) on a folder of cases, printed per
case (DSC and NSD per step, DSC_AUC, NSD_AUC, final DSC/NSD, seconds per step), as CSV and as a DSC-per-step PNG."""

from __future__ import annotations

import csv
from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from producer.interactive import CLICK_STEPS, InteractiveScore, load_cases, plot_dsc, run_protocol
from worker.contract.settings import EngineConfig


def scores_table(scores: list[InteractiveScore], refine: str) -> Table:
    table = Table(title=f"CVPR 2025 interactive protocol (box + {CLICK_STEPS} clicks per class), refinement {refine}")
    table.add_column("case", overflow="fold")
    table.add_column("DSC per step")
    table.add_column("NSD per step")
    for name in ("DSC_AUC", "NSD_AUC", "DSC final", "NSD final"):
        table.add_column(name, justify="right")
    table.add_column("s per step")
    for s in scores:
        note = " [red]over 90 s/class[/]" if s.over_time else ""
        table.add_row(
            s.name,
            " ".join(f"{v:.3f}" for v in s.dsc),
            " ".join(f"{v:.3f}" for v in s.nsd),
            f"{s.dsc_auc:.3f}",
            f"{s.nsd_auc:.3f}",
            f"{s.dsc[-1]:.4f}",
            f"{s.nsd[-1]:.4f}",
            " ".join(f"{v:.2f}" for v in s.seconds) + note,
        )
    if scores:
        table.add_section()
        n = len(scores)
        table.add_row(
            "[bold]mean[/]",
            "",
            "",
            f"{sum(s.dsc_auc for s in scores) / n:.3f}",
            f"{sum(s.nsd_auc for s in scores) / n:.3f}",
            f"{sum(s.dsc[-1] for s in scores) / n:.4f}",
            f"{sum(s.nsd[-1] for s in scores) / n:.4f}",
            "",
        )
    return table


def write_csv(scores: list[InteractiveScore], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    steps = range(CLICK_STEPS + 1)
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(
            ["case", "dsc_auc", "nsd_auc", "dsc_final", "nsd_final"]
            + [f"dsc_{k}" for k in steps]
            + [f"nsd_{k}" for k in steps]
            + [f"seconds_{k}" for k in steps]
        )
        for s in scores:
            writer.writerow(
                [s.name, f"{s.dsc_auc:.6f}", f"{s.nsd_auc:.6f}", f"{s.dsc[-1]:.6f}", f"{s.nsd[-1]:.6f}"]
                + [f"{v:.6f}" for v in (*s.dsc, *s.nsd)]
                + [f"{v:.3f}" for v in s.seconds]
            )


def run_interactive(
    imgs_dir: Path,
    gts_dir: Path,
    plot_path: Path | None,
    csv_path: Path | None,
    refine: str | None,
    config: EngineConfig,
) -> list[InteractiveScore]:
    from worker.engine.engine import Engine, EngineSettings
    from worker.engine.refine import CANDIDATES, DEFAULT

    name = refine or DEFAULT
    if name not in CANDIDATES:
        raise click.BadParameter(f"{name!r}; choose from {sorted(CANDIDATES)}", param_hint="--refine")
    try:
        cases = load_cases(imgs_dir, gts_dir)
    except ValueError as error:
        raise click.ClickException(str(error)) from None
    if not cases:
        raise click.ClickException(f"no *.npz ground truth in {gts_dir}")
    try:
        engine = Engine(EngineSettings.from_config(config))
    except ValueError as error:  # an unknown precision profile or a broken routing table
        raise click.ClickException(str(error)) from None
    console = Console()
    scores = []
    for case in cases:
        scores.append(run_protocol(engine, case, CANDIDATES[name]))
        console.print(f"{case.name}: DSC " + " ".join(f"{v:.3f}" for v in scores[-1].dsc))
    console.print(scores_table(scores, name))
    if csv_path is not None:
        write_csv(scores, csv_path)
        console.print(f"wrote {csv_path}")
    if plot_path is not None:
        console.print(f"wrote {plot_dsc(scores, plot_path)}")
    return scores
