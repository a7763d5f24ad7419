"""Accuracy of the real exported LiteMedSAM through the engine, per case, against the official baseline.

Every case runs under both overlap rules (issue 13), sharing the slices' embeddings: `later`, the challenge's
painting order, for parity with the official baseline, and the default `smaller`.
With ../shared/data/cases present, under `later`: each 2D case reproduces the official PyTorch baseline's DSC
(BASELINE.md beside the cases, measured on this machine) to its 4 decimals, since the 2D path is the baseline's own
pre-processing (INTER_AREA, truncated boxes; the previous linear path missed by up to 0.65 points); each 3D case
reaches it within 1 point. Without them: the project's own phantoms, whose structures a working engine segments
well. A broken resize, box scaling, crop, threshold or propagation step drops these cases far below the bounds.
In both: the default rule never scores below `later` on any case.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from conftest import SHARED_CASES
from producer.evaluate import score_case
from producer.formats.npz import load_npz_study
from producer.phantoms import write_phantoms
from worker.contract.identity import routing_data
from worker.contract.routing import RoutingTable

pytestmark = pytest.mark.model
TOLERANCE = 0.01  # DSC points below the baseline a 3D case may land
PARITY_2D = 0.0001  # a 2D case's DSC against the baseline's, given to 4 decimals in BASELINE.md
PHANTOM_MIN_DSC = {
    "2DBox_CT_phantom": 0.85,
    "3DBox_CT_phantom": 0.8,
    "3DBox_MR_phantom": 0.8,
    "3DBox_PET_phantom": 0.75,
}


def baseline_dsc(baseline_md: Path) -> dict[str, float]:
    """Case -> DSC from the BASELINE.md table (cases without ground truth have '–')."""
    table = {}
    for line in baseline_md.read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 4 and re.match(r"[23]DBox_", cells[0]) and re.match(r"^\d", cells[3]):
            table[cells[0]] = float(cells[3])
    return table


def case_set(tmp_root: Path) -> tuple[Path, dict[str, float], bool]:
    """The cases' folder, per case the baseline's DSC (or a phantom's minimum), and whether those are baselines."""
    if (SHARED_CASES / "BASELINE.md").is_file() and (SHARED_CASES / "gts").is_dir():
        return SHARED_CASES, baseline_dsc(SHARED_CASES / "BASELINE.md"), True
    write_phantoms(tmp_root)
    return tmp_root, PHANTOM_MIN_DSC, False


def with_overlap(rule: str) -> RoutingTable:
    table = routing_data(None)
    return RoutingTable({**table["default"], "overlap": rule}, table["modality"])


@pytest.fixture(scope="module")
def scored(real_models_dir, tmp_path_factory):
    """case -> rule -> (DSC, NSD), Segmentation, Study; plus the bounds and whether they are baselines."""
    from worker.engine.engine import Engine, EngineSettings

    root, reference, is_baseline = case_set(tmp_path_factory.mktemp("accuracy-cases"))
    engine = Engine(EngineSettings(models_dir=real_models_dir))
    results = {}
    for name in sorted(reference):
        study = load_npz_study(root / "imgs" / f"{name}.npz")
        with np.load(root / "gts" / f"{name}.npz", allow_pickle=False) as gt:
            gts, spacing = gt["gts"], (tuple(gt["spacing"]) if "spacing" in gt.files else None)
        results[name] = {}
        for rule in ("later", "smaller"):  # the second run finds every slice's embedding cached
            engine.routing = with_overlap(rule)
            result = engine.segment(study)
            assert result.metrics.provenance.overlap == rule
            results[name][rule] = (score_case(gts, result.labels, spacing if study.is_3d else None), result, study)
    return results, reference, is_baseline


def test_every_case_reaches_the_baseline_dsc_under_the_challenge_overlap_rule(scored):
    results, reference, is_baseline = scored
    report = {name: round(results[name]["later"][0][0], 4) for name in reference}
    failing = {}
    for name, target in reference.items():
        got, is_2d = results[name]["later"][0][0], not results[name]["later"][2].is_3d
        if is_baseline and is_2d:
            ok = abs(got - target) <= PARITY_2D
        else:
            ok = got >= (target - TOLERANCE if is_baseline else target)
        if not ok:
            failing[name] = (round(got, 5), target)
    assert not failing, f"DSC off its bound (got, baseline or minimum): {failing}; all: {report}"


# "Loses" means by more than 0.01 DSC points: on 3DBox_CT_tsup the two rules differ in a handful of voxels of a
# 90 x 512 x 512 volume (smaller 0.7048457 vs later 0.7048472, measured 2026-11-30), which is a tie.
LOSS_TOLERANCE = 1e-4


def test_the_default_overlap_rule_never_loses_to_later(scored):
    results, reference, _ = scored
    losing = {
        name: (round(rules["smaller"][0][0], 7), round(rules["later"][0][0], 7))
        for name, rules in results.items()
        if rules["smaller"][0][0] < rules["later"][0][0] - LOSS_TOLERANCE
    }
    assert not losing, f"'smaller' below 'later' (smaller, later): {losing}"
    for name, rules in results.items():
        assert rules["smaller"][1].metrics.counts.slices_encoded == 0, name  # the second run used the cache


def test_each_needed_slice_encoded_once_per_view(scored):
    results, _, _ = scored
    for name, rules in results.items():
        _, result, study = rules["later"]
        counts = result.metrics.counts
        if not study.is_3d:
            assert counts.slices_encoded == 1, name
            continue
        boxes = study.boxes.astype(int)
        views = [(2, 5)] + ([(1, 4), (0, 3)] if result.metrics.provenance.strategy == "triview" else [])
        needed = sum(len(set().union(*(range(b[lo], b[hi] + 1) for b in boxes))) for lo, hi in views)
        assert counts.slices_encoded == needed, (name, counts.slices_encoded, needed)


def test_pet_uses_triview_and_ct_mr_propagate(scored):
    results, _, _ = scored
    for name, rules in results.items():
        _, result, study = rules["smaller"]
        expected = "box2d" if not study.is_3d else ("triview" if study.modality == "PET" else "propagate")
        assert result.metrics.provenance.strategy == expected, name
