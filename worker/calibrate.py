"""`worker calibrate`: check each precision profile against f32 on this host, per case, and record the verdict.

1. Evaluation cases with ground truth derived by worker.evaluation.derived (other slices as 2D cases, sub-volumes
   and crops as 3D cases) from a folder of cases with ground truth (default: ../shared/data/cases beside the
   checkout when present, else the project's phantoms): never the cases a profile was made or tuned on.
2. f32 and every candidate profile, each its own Engine (compiled once, not timed), run every case; the order of
   the profiles alternates from case to case so each sees the same machine. A fresh embedding cache per run.
3. The gate, per case and two-sided: |DSC(profile) - DSC(f32)| <= 0.5 points against the ground truth, on every
   case. Speed: the sum of engine seconds over the cases, f32's divided by the profile's.
4. What really runs: per strategy, the element types of each compiled part (runtime_precisions). A profile whose
   parts compile to exactly f32's element types on the same weights and gave bit-identical masks on every case is
   "equivalent to f32 here" (e.g. bf16 on a CPU without AVX512-BF16/AMX): `fast` never picks it.
5. The verdict goes to <models_dir>/precision-calibration.json under this host's fingerprint (worker.calibration).
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from worker.calibration import (
    GATE_DSC,
    MIN_SPEEDUP,
    eligible,
    fastest_passed,
    host_fingerprint,
    int8_weights,
    now_iso,
    profile_definition,
    write_verdict,
)
from worker.contract.precision import DEFAULT_PROFILE
from worker.contract.strategies import STRATEGY_NAMES
from worker.contract.study import Study
from worker.evaluation.derived import DerivedCase, derive_cases
from worker.evaluation.metrics import dsc_case

log = logging.getLogger(__name__)
SHARED_CASES = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "cases"
QUICK_2D, QUICK_3D = 2, 1
Report = Callable[[str], None]


PHANTOMS = "project phantoms"


def evaluation_folder(source: Path | None, scratch: Path) -> tuple[Path, str]:
    """The folder of cases with ground truth to derive from, and what it is (PHANTOMS when generated)."""
    from worker.evaluation.phantom_cases import demo_dir_or_phantoms

    if source:
        return Path(source), str(Path(source).resolve())
    folder = demo_dir_or_phantoms(SHARED_CASES, Path(scratch) / "phantoms")
    return folder, (str(folder.resolve()) if folder == SHARED_CASES else PHANTOMS)


def tuned_on(
    profile_encoders: list[str], registry: dict, evaluation_source: str, case_names: list[str] | None = None
) -> list[str]:
    """INT8 encoders of a profile that were calibrated or chosen on the evaluation data itself. A profile made by
    worker.int8_search records what it held out of that data: it may be gated on those cases only."""
    from models.quantize import read_manifest

    clashes = []
    for spec in registry.values():
        try:
            profiles = read_manifest(spec.encoder_xml.parent).get("profiles", {})
        except (OSError, ValueError):
            continue
        for name in profile_encoders:
            record = profiles.get(name, {}).get("tuned_on")
            if isinstance(record, dict):
                if evaluation_source == record.get("folder") and not set(case_names or ()) <= set(
                    record.get("held_out", ())
                ):
                    clashes.append(name)
                continue
            source = str(profiles.get(name, {}).get("calibration", {}).get("source", ""))
            if source and (
                (evaluation_source == PHANTOMS and source.startswith(PHANTOMS))
                or (evaluation_source != PHANTOMS and evaluation_source in source)
            ):
                clashes.append(name)
    return clashes


def evaluation_cases(folder: Path, quick: bool = False, max_cases: int | None = None) -> list[DerivedCase]:
    """Derived cases of `folder` (imgs/ and gts/; evaluation_folder chooses it).

    quick: the QUICK_2D smallest 2D and QUICK_3D smallest 3D cases (a test-sized run). max_cases: up to that many,
    2D and 3D alternating, the smallest case of each source first, so a bounded run still covers both kinds and
    as many source cases as it can."""
    cases = derive_cases(folder)
    if not cases:
        raise ValueError(f"no cases with ground truth under {folder} (need imgs/*.npz with gts/*.npz)")
    by_size = sorted(cases, key=lambda case: (case.imgs.size, case.name))
    sources: dict[str, list[str]] = {}  # each source case's derived cases, smallest first
    for case in by_size:
        sources.setdefault(case.name.split("-")[0], []).append(case.name)
    spread = sorted(by_size, key=lambda case: sources[case.name.split("-")[0]].index(case.name))  # stable
    flat = [case for case in spread if not case.is_3d]
    volumes = [case for case in spread if case.is_3d]
    if quick:
        return flat[:QUICK_2D] + volumes[:QUICK_3D]
    if max_cases:
        mixed = [case for pair in zip(flat, volumes) for case in pair]
        mixed += flat[len(volumes) :] + volumes[len(flat) :]
        return sorted(mixed[:max_cases], key=lambda case: case.name)
    return sorted(cases, key=lambda case: case.name)


def _study(case: DerivedCase) -> Study:
    spacing = tuple(float(v) for v in case.spacing) if case.spacing is not None else None
    return Study(case.name, case.name.split("_")[1], case.imgs, case.boxes, spacing)


def _run(engine, case: DerivedCase) -> tuple[np.ndarray, float]:
    from worker.engine.cache import EmbeddingCache

    engine.cache = EmbeddingCache(engine.settings.cache_bytes)  # every run encodes its slices itself
    result = engine.segment(_study(case))
    return result.labels, result.metrics.times.total


def _runtime_by_strategy(engine) -> dict[str, dict]:
    """Per strategy: each part's element-type counts and the weights that run (for the model a case routes to)."""
    out = {}
    for name in engine.registry:
        for strategy in STRATEGY_NAMES:
            model = engine.model(name, engine.precision.profile.parts(strategy))
            out[f"{name}/{strategy}"] = {"runtime": model.runtime(), "sha256": model.sha256}
    return out


def calibrate(
    models_dir: Path,
    cases: list[DerivedCase],
    profiles: list[str] | None = None,
    threads: int = 0,
    routing_file: Path | None = None,
    report: Report | None = None,
    evaluation_source: str = "",
) -> dict:
    """Run f32 and each profile on `cases`, apply the gate, and return the verdict (not yet written)."""
    from worker.engine.engine import Engine, EngineSettings

    say = report or (lambda message: log.info("%s", message))
    base = EngineSettings(models_dir=Path(models_dir), threads=threads, routing_file=routing_file)
    reference = Engine(base)
    table = reference.routing.precision.with_quantized(int8_weights(reference.registry))
    names = [name for name in (profiles or table.names()) if name != DEFAULT_PROFILE]
    for name in names:
        table.get(name)  # unknown names fail before anything runs
    engines = {DEFAULT_PROFILE: reference}
    for name in names:
        engines[name] = Engine(
            EngineSettings(models_dir=Path(models_dir), precision=name, threads=threads, routing_file=routing_file)
        )
    runtime = {}
    for name, engine in engines.items():
        started = time.perf_counter()
        engine.warm_up()
        runtime[name] = _runtime_by_strategy(engine)
        say(f"compiled {name} ({engine.precision.profile.describe()}) in {time.perf_counter() - started:.1f} s")
    order = list(engines)
    rows: dict[str, dict[str, dict]] = {name: {} for name in order}
    for index, case in enumerate(cases):
        masks = {}
        for name in order if index % 2 == 0 else order[::-1]:
            labels, seconds = _run(engines[name], case)
            masks[name] = labels
            rows[name][case.name] = {"dsc": dsc_case(case.gts, labels), "seconds": seconds}
        f32 = rows[DEFAULT_PROFILE][case.name]
        for name in names:
            row = rows[name][case.name]
            row["delta"] = row["dsc"] - f32["dsc"]
            row["identical"] = bool(np.array_equal(masks[name], masks[DEFAULT_PROFILE]))
        say(
            f"[{index + 1}/{len(cases)}] {case.name}: f32 DSC {f32['dsc']:.4f} {f32['seconds']:.1f} s; "
            + "; ".join(
                f"{n} {rows[n][case.name]['delta'] * 100:+.2f} pts {rows[n][case.name]['seconds']:.1f} s" for n in names
            )
        )
    f32_seconds = sum(row["seconds"] for row in rows[DEFAULT_PROFILE].values())
    weights = int8_weights(reference.registry)
    verdicts = {}
    for name in names:
        cases_rows = rows[name]
        failed = sorted(case for case, row in cases_rows.items() if abs(row["delta"]) > GATE_DSC)
        seconds = sum(row["seconds"] for row in cases_rows.values())
        same_graph = all(runtime[name][key] == runtime[DEFAULT_PROFILE][key] for key in runtime[name])
        clashes = tuned_on(
            table.get(name).quantized_encoders(), reference.registry, evaluation_source, [c.name for c in cases]
        )
        verdicts[name] = {
            "definition": profile_definition(table.get(name), weights),
            "passed": not failed and not clashes,
            "tuned_on_evaluation_data": clashes,  # a gate on what a profile was tuned on proves nothing
            "failed_cases": failed,
            "worst_delta": max((row["delta"] for row in cases_rows.values()), key=abs, default=0.0),
            "seconds": seconds,
            "speedup": f32_seconds / seconds if seconds > 0 else 0.0,
            "equivalent_to_f32": same_graph and all(row["identical"] for row in cases_rows.values()),
            "runtime": runtime[name],
            "cases": cases_rows,
        }
    verdict = {
        "host": host_fingerprint({name: spec.sha256 for name, spec in reference.registry.items()}),
        "calibrated_at": now_iso(),
        "gate": {"dsc_points": GATE_DSC * 100, "per_case": True, "two_sided": True, "min_speedup": MIN_SPEEDUP},
        "threads": threads,
        "evaluation_source": evaluation_source,
        "load_average": list(os.getloadavg()),
        "cases": {
            case.name: {
                "shape": list(case.imgs.shape),
                "boxes": int(len(case.boxes)),
                "dsc_f32": rows[DEFAULT_PROFILE][case.name]["dsc"],
                "seconds_f32": rows[DEFAULT_PROFILE][case.name]["seconds"],
            }
            for case in cases
        },
        "f32_runtime": runtime[DEFAULT_PROFILE],
        "f32_seconds": f32_seconds,
        "profiles": verdicts,
    }
    verdict["fast"] = fastest_passed(table, verdict, weights)[0]
    return verdict


def summary_lines(verdict: dict) -> list[str]:
    lines = [
        f"host: {verdict['host']['cpu']} [{' '.join(verdict['host']['isa'])}], OpenVINO "
        f"{verdict['host']['openvino']}; {len(verdict['cases'])} cases; f32 {verdict['f32_seconds']:.1f} s"
    ]
    for name, entry in verdict["profiles"].items():
        state = "PASS" if entry["passed"] else f"FAIL on {len(entry['failed_cases'])} case(s)"
        if entry.get("tuned_on_evaluation_data"):
            state = "REFUSED: tuned on these cases"
        notes = []
        if entry["equivalent_to_f32"]:
            notes.append("runs exactly as f32 on this CPU")
        elif entry["passed"] and not eligible(entry):
            notes.append(f"under the {MIN_SPEEDUP:.2f}x speed-up `fast` needs")
        lines.append(
            f"  {name:18s} {state:18s} worst {entry['worst_delta'] * 100:+.2f} pts, speed-up "
            f"{entry['speedup']:.2f}x" + (f" ({'; '.join(notes)})" if notes else "")
        )
    lines.append(f"--precision fast now selects: {verdict['fast']}")
    return lines


def run(
    models_dir: Path,
    source: Path | None,
    profiles: list[str] | None,
    threads: int,
    quick: bool,
    max_cases: int | None,
    routing_file: Path | None,
    report: Report,
    command: str = "",
) -> tuple[dict, Path]:
    """The whole command: cases, calibration, record; returns the verdict and the record's path."""
    with tempfile.TemporaryDirectory(prefix="litemedsam-calibrate-") as scratch:
        folder, described = evaluation_folder(source, Path(scratch))
        cases = evaluation_cases(folder, quick, max_cases)
        report(f"{len(cases)} evaluation case(s) derived from {described}: {', '.join(c.name for c in cases)}")
        verdict = calibrate(models_dir, cases, profiles, threads, routing_file, report, described)
    verdict["quick"] = quick
    verdict["command"] = command or "worker calibrate"
    path = write_verdict(models_dir, verdict)
    return verdict, path
