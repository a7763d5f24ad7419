"""Accuracy-controlled INT8 encoder profiles (issue 26): NNCF quantization, layers chosen by a DSC validation.

    python -m worker.int8_search --cases DIR [--models-dir DIR] [--profile int8-ac] [--gate-cases 10]
                                 [--preset mixed] [--max-drop 0.35] [--keep-float GROUP ...] [--report PATH]

1. Held out: the cases `worker calibrate --max-cases N` will gate the profile on (worker.calibrate.
   evaluation_cases, N = --gate-cases). Nothing below sees them.
2. Validation cases, for choosing: other cases derived from the same dev cases (producer.derived), per source
   case the middle 2D slice/crop not held out, and the --validation-3d smallest 3D sub-volumes not held out
   (one per propagated, not tri-view, source).
3. Calibration, for the activation ranges: real slices of the dev volumes that no held-out or validation case
   contains, plus the 2D dev images without ground truth (never scored), at the interpolation their route uses.
4. models.quantize_accuracy.search_under_control: NNCF quantizes, each op group's sensitivity is measured, and
   the most sensitive groups go back to float one at a time until the metric, the gate's own shape (1 - max over
   validation cases |DSC(candidate) - DSC(f32)| against ground truth, f32 DSCs from this engine at f32), is within
   --max-drop points of 1 (default 0.35, under calibrate's 0.5) or --max-steps groups are back; the best step
   is kept.
5. The result is stored as an INT8 profile (models.quantize.store_profile) with what it was tuned on (the
   validation case names and the calibration slices), which `worker calibrate` checks against its cases, and a
   report: per step the groups in float and each validation case's delta, and per op group the embedding error
   when only that group is quantized (the per-layer sensitivity).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from models.paths import default_models_dir
from models.quantize import MODEL_NAME, PROFILE_PREFIX, read_manifest, store_profile
from models.quantize_accuracy import (
    ControlSettings,
    calibration_inputs,
    compile_f32,
    compressed,
    op_groups,
    search_under_control,
    spread,
)
from worker.calibrate import _study, evaluation_cases
from worker.contract.precision import PartPrecision
from worker.contract.strategies import TRIVIEW
from worker.engine.cache import EmbeddingCache
from worker.engine.engine import Engine, EngineSettings
from worker.evaluation.derived import DerivedCase, derive_cases
from worker.evaluation.metrics import dsc_case

log = logging.getLogger(__name__)
DEFAULT_PROFILE_NAME = "int8-ac"
DEFAULT_GATE_CASES = 10
CALIBRATION_PER_VOLUME = 10


# ---------------------------------------------------------------- which cases do what


def validation_cases(
    derived: list[DerivedCase], held_out: set[str], triview: set[str], max_3d: int = 2
) -> list[DerivedCase]:
    """Per source case the middle 2D case not held out, and the `max_3d` smallest 3D sub-volumes not held out
    (one per source, none of a tri-view modality)."""
    by_source: dict[str, list[DerivedCase]] = {}
    for case in sorted(derived, key=lambda c: c.name):
        if case.name not in held_out:
            by_source.setdefault(case.name.split("_", 1)[1].split("-")[0], []).append(case)
    flat, volumes = [], []
    for cases in by_source.values():
        planes = [case for case in cases if not case.is_3d]
        flat += planes[len(planes) // 2 : len(planes) // 2 + 1]
        volumes += [case for case in cases if case.is_3d and case.name.split("_")[1] not in triview][:1]
    return flat + sorted(volumes, key=lambda case: case.imgs.size)[:max_3d]


def _source_slices(case: DerivedCase, volume: np.ndarray) -> set[int]:
    """The source volume's slices a derived case holds (whole slices or their central crop)."""
    if not case.is_3d:
        z = int(case.name.rsplit("-z", 1)[1]) if "-z" in case.name else -1
        return {z} if z >= 0 else set()
    h, w = volume.shape[1:]
    first = case.imgs[0]
    for z in range(volume.shape[0]):
        whole = volume[z]
        crop = whole[h // 8 : h - h // 8, w // 8 : w - w // 8]
        if (whole.shape == first.shape and np.array_equal(whole, first)) or (
            crop.shape == first.shape and np.array_equal(crop, first)
        ):
            return set(range(z, z + case.imgs.shape[0]))
    return set()


def calibration_slices(
    folder: Path, used: list[DerivedCase], per_volume: int
) -> tuple[list[tuple[str, np.ndarray, bool]], dict[str, list[int]]]:
    """(name, uint8 slice, is from a volume) for calibration, and which slices of which dev case they are."""
    slices: list[tuple[str, np.ndarray, bool]] = []
    record: dict[str, list[int]] = {}
    for path in sorted((Path(folder) / "imgs").glob("*.npz")):
        with np.load(path, allow_pickle=False) as npz:
            imgs = npz["imgs"]
        has_truth = (Path(folder) / "gts" / path.name).is_file()
        stem = path.stem.split("_", 1)[1]
        if path.stem.startswith("3DBox") and imgs.ndim == 3:
            seen: set[int] = set()
            for case in used:
                if case.name.split("_", 1)[1].split("-")[0] == stem:
                    seen |= _source_slices(case, imgs)
            picks = spread(per_volume, [z for z in range(imgs.shape[0]) if z not in seen])
            slices += [(path.stem, imgs[z], True) for z in picks]
            record[path.stem] = picks
        elif not has_truth:  # a 2D image nobody scores
            slices.append((path.stem, imgs, False))
            record[path.stem] = [0]
    return slices, record


def tuned_slices(folder: Path, record: dict) -> dict[str, set[int]]:
    """Per dev volume (file stem), the slices a profile was tuned on, from its manifest record's "tuned_on":
    its calibration slices and every slice of its validation cases (what a later evaluation must not contain)."""
    slices = {stem: set(picks) for stem, picks in record.get("calibration_slices", {}).items()}
    chosen = set(record.get("cases", ()))
    validation = [case for case in derive_cases(folder) if case.name in chosen]
    for path in sorted((Path(folder) / "imgs").glob("3DBox_*.npz")):
        stem = path.stem.split("_", 1)[1]
        mine = [case for case in validation if case.name.split("_", 1)[1].split("-")[0] == stem]
        if mine:
            with np.load(path, allow_pickle=False) as npz:
                volume = npz["imgs"]
            for case in mine:
                slices.setdefault(path.stem, set()).update(_source_slices(case, volume))
    return slices


# ---------------------------------------------------------------- the engine with a candidate encoder


class CandidateEncoder:
    """The engine's compiled model with its encoder replaced by a candidate (an ov.CompiledModel of the search)."""

    def __init__(self, base, compiled, label: str):
        self.spec = base.spec
        self.precision = PartPrecision(label, base.precision.decoder)
        self.sha256 = f"candidate:{label}"
        self._base = base
        self._request = compiled.create_infer_request()

    def encode(self, image: np.ndarray) -> np.ndarray:
        self._request.infer([image])
        return np.array(self._request.get_output_tensor(0).data, copy=True)

    def decode(self, embedding: np.ndarray, boxes: np.ndarray) -> np.ndarray:
        return self._base.decode(embedding, boxes)


class CandidateEngine(Engine):
    """An f32 engine whose model() hands out the candidate encoder while one is set (routing, strategies,
    pre- and post-processing and the f32 decoder are the engine's own)."""

    candidate: CandidateEncoder | None = None

    def model(self, name, parts=None):
        base = super().model(name, parts)
        return self.candidate if self.candidate is not None else base


class DscValidation:
    """The search's validation function: the segmenter with a candidate encoder on each case, scored against
    ground truth; metric = 1 - max over cases |DSC(candidate) - DSC(f32)| (the gate's shape: per case, two-sided)."""

    def __init__(self, engine: CandidateEngine, cases: list[DerivedCase], threads: int = 0):
        self.engine = engine
        self.cases = cases
        self.threads = threads
        self.calls = 0
        self.reference = {case.name: self._dsc(case) for case in cases}  # the engine's own f32

    def _dsc(self, case: DerivedCase) -> float:
        self.engine.cache = EmbeddingCache(self.engine.settings.cache_bytes)  # every run encodes its slices
        return dsc_case(case.gts, self.engine.segment(_study(case)).labels)

    def deltas(self, model) -> dict[str, float]:
        """Per case: DSC with `model` (an ov.Model encoder) as the encoder minus DSC at f32."""
        name = next(iter(self.engine.registry))
        self.calls += 1
        compiled = compile_f32(model, self.threads)
        self.engine.candidate = CandidateEncoder(self.engine.model(name), compiled, f"candidate-{self.calls}")
        try:
            return {case.name: self._dsc(case) - self.reference[case.name] for case in self.cases}
        finally:
            self.engine.candidate = None

    def __call__(self, model) -> tuple[float, dict[str, float]]:
        started = time.perf_counter()
        deltas = self.deltas(model)
        metric = 1.0 - max((abs(d) for d in deltas.values()), default=0.0)
        worst = max(deltas, key=lambda k: abs(deltas[k]))
        log.info(
            "validation %d: metric %.4f (worst %s %+.2f pts) in %.0f s",
            self.calls,
            metric,
            worst,
            deltas[worst] * 100,
            time.perf_counter() - started,
        )
        return metric, deltas


# ---------------------------------------------------------------- the command


def search(
    models_dir: Path,
    folder: Path,
    profile: str,
    settings: ControlSettings,
    gate_cases: int,
    threads: int,
    sensitivity_slices: int,
    validation_3d: int = 2,
) -> tuple[dict, dict]:
    """Make the profile; returns (manifest entry, report)."""
    import nncf
    import openvino as ov

    started = time.perf_counter()
    model_dir = Path(models_dir) / MODEL_NAME
    manifest = read_manifest(model_dir)
    size = int(manifest["input_size"])
    encoder_xml = model_dir / manifest["encoder"]["xml"]
    engine = CandidateEngine(EngineSettings(models_dir=Path(models_dir), threads=threads))
    triview = {m for m in ("PET",) if engine.routing.route(m).strategy(True) == TRIVIEW}
    held_out = {case.name for case in evaluation_cases(folder, max_cases=gate_cases)}
    derived = derive_cases(folder)
    validation = validation_cases(derived, held_out, triview, validation_3d)
    if not validation:
        raise ValueError(f"no validation cases left under {folder} once the {len(held_out)} held-out ones are out")
    chosen = {case.name for case in validation}
    used = [case for case in derived if case.name in held_out or case.name in chosen]
    slices, record = calibration_slices(folder, used, CALIBRATION_PER_VOLUME)
    if not slices:
        raise ValueError(f"no calibration slices under {folder}")
    interp = {name: engine.routing.route(name.split("_")[1]).interpolation(is_volume) for name, _, is_volume in slices}
    calibration = [
        calibration_inputs([image], size, (interp[name],))[0] for name, image, _ in slices
    ]  # one input per slice, at its route's interpolation
    log.info(
        "held out %d case(s); validation on %d: %s; calibration on %d slices",
        len(held_out),
        len(validation),
        ", ".join(c.name for c in validation),
        len(calibration),
    )
    validate = DscValidation(engine, validation, threads)
    log.info("f32 on the validation cases: %s", {k: round(v, 4) for k, v in validate.reference.items()})
    probe = [calibration[i] for i in spread(sensitivity_slices, list(range(len(calibration))))]
    result = search_under_control(encoder_xml, calibration, probe, validate, settings, threads)
    groups = op_groups(ov.Core().read_model(str(encoder_xml)))
    details = {
        "variant": "accuracy-control",
        "control": settings.describe(),
        "calibration": {
            "source": f"real slices of {Path(folder).resolve()} outside every held-out and validation case",
            "slices": len(calibration),
            "interpolation": "per route",
        },
        "tuned_on": {  # worker.calibrate.tuned_on: gated on the same folder, only the held-out cases count
            "folder": str(Path(folder).resolve()),
            "held_out": sorted(held_out),
            "cases": sorted(c.name for c in validation),
            "calibration_slices": record,
        },
        "float_groups": result.kept_groups,
        "validation_reached": result.reached,
        "nncf": nncf.__version__,
        "seconds": round(time.perf_counter() - started, 1),
    }
    entry = store_profile(model_dir, profile, compressed(result.model), details)
    report = {
        "profile": profile,
        "held_out": sorted(held_out),
        "validation_f32": validate.reference,
        "steps": result.steps,
        "reached": result.reached,
        "float_groups": result.kept_groups,
        "float_ops": result.kept_float,
        "quantized_ops": sum(len(v) for v in groups.values()) - len(result.kept_float),
        "sensitivity": result.sensitivity,
        "search_seconds": round(result.seconds, 1),
        "entry": entry,
    }
    return entry, report


def report_lines(report: dict) -> list[str]:
    lines = [
        f"{report['profile']}: {report['quantized_ops']} ops quantized; in float: "
        + (", ".join(report["float_groups"]) or "nothing")
        + f"; within the drop on validation: {'yes' if report['reached'] else 'NO'} "
        f"(search {report['search_seconds']:.0f} s)",
        "sensitivity (only this group quantized): NMSE, worst cosine",
    ]
    lines += [
        f"  {row['group']:22s} {row['ops']:3d} ops {row['nmse']:.5f} {row['min_cosine']:.4f}"
        for row in report["sensitivity"]
    ]
    lines.append("steps: groups in float -> metric (worst case delta, points)")
    for step in report["steps"]:
        worst = max(step["details"], key=lambda k: abs(step["details"][k]))
        lines.append(
            f"  [{', '.join(step['float_groups']) or 'none'}] -> {step['metric']:.4f} "
            f"({worst} {step['details'][worst] * 100:+.2f})"
        )
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m worker.int8_search", description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", type=Path, required=True, help="dev cases with ground truth (imgs/, gts/)")
    parser.add_argument("--models-dir", type=Path, default=None)
    parser.add_argument("--profile", default=DEFAULT_PROFILE_NAME, help="profile name (must start with 'int8')")
    parser.add_argument(
        "--gate-cases",
        type=int,
        default=DEFAULT_GATE_CASES,
        help="held out: the cases `worker calibrate --max-cases N` gates on",
    )
    parser.add_argument("--preset", choices=("performance", "mixed"), default=ControlSettings.preset)
    parser.add_argument("--no-transformer", action="store_true", help="NNCF's default recipe, not the transformer one")
    parser.add_argument("--smooth-quant", type=float, default=None, help="SmoothQuant alpha for MatMuls (-1: off)")
    parser.add_argument("--bias-correction", choices=("fast", "full"), default="fast")
    parser.add_argument("--max-drop", type=float, default=ControlSettings.max_drop * 100, help="DSC points")
    parser.add_argument("--max-steps", type=int, default=ControlSettings.max_steps, help="groups put back to float")
    parser.add_argument("--validation-3d", type=int, default=2, help="3D validation sub-volumes (smallest first)")
    parser.add_argument("--subset-size", type=int, default=ControlSettings.subset_size)
    parser.add_argument("--keep-float", action="append", default=[], help="op group kept in float from the start")
    parser.add_argument("--sensitivity-slices", type=int, default=4, help="slices the per-group sensitivity uses")
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--report", type=Path, default=None, help="write the report as JSON here")
    args = parser.parse_args(argv)
    if not args.profile.startswith(PROFILE_PREFIX):
        parser.error("--profile must start with 'int8'")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    settings = ControlSettings(
        max_drop=args.max_drop / 100,
        preset=args.preset,
        transformer=not args.no_transformer,
        smooth_quant_alpha=args.smooth_quant,
        fast_bias_correction=args.bias_correction == "fast",
        subset_size=args.subset_size,
        max_steps=args.max_steps,
        keep_float=tuple(args.keep_float),
    )
    models_dir = (args.models_dir or default_models_dir()).expanduser()
    try:
        _, report = search(
            models_dir,
            args.cases,
            args.profile,
            settings,
            args.gate_cases,
            args.threads,
            args.sensitivity_slices,
            args.validation_3d,
        )
    except (OSError, ValueError) as err:
        print(f"int8 search failed: {err}", file=sys.stderr)
        return 1
    if args.report:
        args.report.write_text(json.dumps(report, indent=1, default=_jsonable) + "\n")
    print("\n".join(report_lines(report)))
    return 0


def _jsonable(value: Any) -> Any:
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    raise TypeError(f"not JSON: {type(value)}")


if __name__ == "__main__":
    sys.exit(main())
