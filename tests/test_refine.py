"""Refinement from clicks (worker/engine/refine.py): the edits and their guards with a stand-in decoder whose masks
are known in closed form, then in 2D and 3D on the project's phantoms with the real model."""

from __future__ import annotations

import numpy as np
import pytest

from models.phantoms import build_phantoms
from producer.evaluate import dsc_case
from producer.interactive import InteractiveCase, box_step
from worker.contract.study import Study
from worker.engine.click_decoder import refine_study
from worker.engine.engine import Engine, EngineSettings
from worker.engine.refine import CANDIDATES, ClickPrompt, Refiner, refine_labels

GUARDED, CRUDE = CANDIDATES["guarded"], CANDIDATES["crude"]


class ObjectDecoder:
    """A box-faithful stand-in for the model: the mask of a slice is the true object inside the prompt box."""

    margin = 2.0

    def __init__(self, truth: np.ndarray):
        self.truth = truth
        self.calls: list[tuple[int, tuple[float, ...]]] = []

    def decode(self, z: int, box: np.ndarray) -> np.ndarray:
        self.calls.append((z, tuple(float(v) for v in box)))
        x0, y0, x1, y1 = (int(round(v)) for v in box)
        inside = np.zeros(self.truth.shape[1:], bool)
        inside[y0 : y1 + 1, x0 : x1 + 1] = True
        return self.truth[z] & inside


class GreedyDecoder(ObjectDecoder):
    """A decoder that answers any box with more than was there (what the guards are for)."""

    def decode(self, z: int, box: np.ndarray) -> np.ndarray:
        super().decode(z, box)
        return np.ones(self.truth.shape[1:], bool)


def rect(shape, z, rows, cols) -> np.ndarray:
    mask = np.zeros(shape, bool)
    mask[z, rows[0] : rows[1] + 1, cols[0] : cols[1] + 1] = True
    return mask


SHAPE = (9, 48, 56)


def test_a_background_click_on_a_stray_component_removes_it_in_3d_without_the_decoder():
    mask = rect(SHAPE, slice(1, 8), (10, 30), (10, 30)) | rect(SHAPE, slice(3, 6), (38, 44), (40, 50))
    decoder = ObjectDecoder(mask)
    edit = Refiner(decoder, GUARDED).apply(mask, ClickPrompt((4, 41, 45), positive=False))
    assert edit.how == "remove-component" and edit.slices == [3, 4, 5]
    assert np.array_equal(edit.mask, rect(SHAPE, slice(1, 8), (10, 30), (10, 30)))
    assert decoder.calls == []


def test_a_foreground_click_outside_the_box_widens_it_and_the_change_propagates_while_masks_change():
    truth = rect(SHAPE, slice(2, 7), (10, 30), (10, 40))
    mask = rect(SHAPE, slice(2, 7), (10, 30), (10, 25))  # the right part of the object missed on every slice
    decoder = ObjectDecoder(truth)
    edit = Refiner(decoder, GUARDED).apply(mask, ClickPrompt((4, 20, 33), positive=True))
    assert edit.how == "widen" and edit.slices == [2, 3, 4, 5, 6]
    # slice 4: the box grows to the click plus the margin (x1 = 33 + 2); each neighbour is decoded with the box
    # of the slice before plus the margin, so the stand-in's masks reach 2 px farther per slice (37, then 39)
    right_edge = [int(np.flatnonzero(edit.mask[z].any(axis=0))[-1]) for z in range(2, 7)]
    assert right_edge == [39, 37, 35, 37, 39]
    assert not (edit.mask & ~truth).any() and np.array_equal(edit.mask[[0, 1, 7, 8]], mask[[0, 1, 7, 8]])
    # outward only as far as the label reaches: slices 1 and 7 hold none of it and are not decoded
    assert [z for z, _ in decoder.calls] == [4, 5, 6, 3, 2]


def test_a_foreground_click_in_a_hole_decodes_a_box_around_it():
    truth = rect((1, 48, 56), 0, (5, 40), (5, 50))
    mask = truth.copy()
    mask[0, 15:25, 20:30] = False  # a hole
    edit = Refiner(ObjectDecoder(truth), GUARDED).apply(mask, ClickPrompt((0, 20, 25), positive=True))
    assert edit.how == "local-box" and np.array_equal(edit.mask, truth)


def test_guards_a_background_click_only_removes_and_never_undoes_an_earlier_click():
    truth = rect((1, 48, 56), 0, (10, 30), (10, 30))
    mask = truth.copy()
    earlier = [ClickPrompt((0, 20, 29), positive=True)]
    click = ClickPrompt((0, 20, 28), positive=False)  # nearest edge: the right one, past the earlier click
    guarded = Refiner(GreedyDecoder(truth), GUARDED).apply(mask, click, earlier)
    assert not (guarded.mask & ~mask).any()  # the greedy decoder's additions are refused
    assert guarded.mask[0, 20, 29] and not guarded.mask[0, 20, 28]
    crude = Refiner(GreedyDecoder(truth), CRUDE).apply(mask, click, earlier)
    assert (crude.mask & ~mask).any()  # without guards the decoder's answer is taken as it is
    # an honest decoder: the shrunk box's removal would take the earlier click's voxel, so the guarded edit
    # keeps it (and drops only the clicked voxel)
    honest = Refiner(ObjectDecoder(truth), GUARDED).apply(mask, click, earlier)
    assert honest.mask[0, 20, 29] and not honest.mask[0, 20, 28]
    assert np.count_nonzero(mask & ~honest.mask) == 1


def test_a_background_click_never_takes_more_than_its_bite():
    truth = rect((1, 48, 56), 0, (5, 40), (5, 50))
    mask = truth.copy()
    click = ClickPrompt((0, 20, 47), positive=False)  # 4 px deep in the mask from its right edge
    edit = Refiner(ObjectDecoder(truth), GUARDED).apply(mask, click)
    removed = mask & ~edit.mask
    rows, cols = np.nonzero(removed[0])
    assert removed.any() and np.all((rows - 20) ** 2 + (cols - 47) ** 2 <= (2 * 4) ** 2)
    assert removed.sum() < 0.5 * mask.sum()


def test_refine_labels_applies_each_labels_newest_click_and_growth_takes_background_only():
    labels = np.zeros((1, 48, 56), np.uint16)
    labels[0, 10:30, 10:30] = 1
    labels[0, 10:30, 30:45] = 2
    truth = rect((1, 48, 56), 0, (10, 29), (10, 44))  # label 1's decoder sees the whole row of both
    out, edits = refine_labels(labels, {1: [ClickPrompt((0, 35, 20), positive=True)]}, ObjectDecoder(truth), GUARDED)
    assert np.array_equal(out == 2, labels == 2)  # label 2 keeps its voxels
    assert edits[1].slices == [0]


@pytest.fixture(scope="module")
def engine(real_models_dir):
    return Engine(EngineSettings(real_models_dir, threads=2))


def phantom(name: str):
    return next(p for p in build_phantoms() if p.name == name)


def test_2d_refinement_with_the_real_model_on_the_phantom(engine):
    ph = phantom("2DBox_CT_phantom")
    case = InteractiveCase(ph.name, ph.imgs, ph.gts, None)
    labels, _ = box_step(engine, case)
    # knock a hole into label 1 and click its centre: the refinement decodes a box there and fills it
    broken = labels.copy()
    region = labels == 1
    rows, cols = np.nonzero(region)
    cy, cx = int(np.median(rows)), int(np.median(cols))
    hole = (slice(cy - 6, cy + 7), slice(cx - 6, cx + 7))
    assert region[hole].all()
    broken[hole] = 0
    click = ClickPrompt((0, cy, cx), positive=True)
    study = Study(ph.name, "CT", ph.imgs, ph.boxes)
    fixed, edits = refine_study(engine, study, broken, {1: [click]}, GUARDED)
    assert (fixed == 1)[hole].all(), edits[1].how
    assert dsc_case(ph.gts, fixed) >= dsc_case(ph.gts, labels) - 0.002
    # a background click on a stray blob of label 2 far from it removes it and leaves the rest alone
    stray = labels.copy()
    stray[5:12, 5:12] = 2
    bg = ClickPrompt((0, 8, 8), positive=False)
    cleaned, edits = refine_study(engine, study, stray, {2: [bg]}, GUARDED)
    assert edits[2].how == "remove-component" and np.array_equal(cleaned, labels)


def test_3d_refinement_with_the_real_model_re_decodes_the_slice_and_propagates_only_as_far_as_it_changes(engine):
    ph = phantom("3DBox_CT_phantom")
    case = InteractiveCase(ph.name, ph.imgs, ph.gts, tuple(ph.spacing))
    labels, _ = box_step(engine, case)
    label = 2
    extent = np.flatnonzero((labels == label).any(axis=(1, 2)))
    z = int(extent[len(extent) // 2])
    broken = labels.copy()
    for dz in (-1, 0, 1):  # the label lost on three slices in its middle
        broken[z + dz][broken[z + dz] == label] = 0
    rows, cols = np.nonzero((ph.gts == label)[z])
    click = ClickPrompt((z, int(np.median(rows)), int(np.median(cols))), positive=True)
    study = Study(ph.name, "CT", ph.imgs, ph.boxes, tuple(ph.spacing))
    fixed, edits = refine_study(engine, study, broken, {label: [click]}, GUARDED)
    edit = edits[label]
    assert z in edit.slices and set(edit.slices) <= set(extent.tolist())
    for k in (z - 1, z, z + 1):  # the clicked slice re-decoded, its lost neighbours re-propagated
        truth, restored = (ph.gts == label)[k], (fixed == label)[k]
        assert 2 * (truth & restored).sum() / (truth.sum() + restored.sum()) > 0.8, (k, edit.how, edit.slices)
    # outward only as far as masks change: slices beyond the lost ones keep their masks
    far = [k for k in range(labels.shape[0]) if abs(k - z) > 1 and k not in edit.slices]
    assert far and np.array_equal(fixed[far], broken[far])
    assert len(edit.slices) < len(extent)
    # other labels keep their voxels (a guarded label grows into background only)
    others = (broken != label) & (broken != 0)
    assert np.array_equal(fixed[others], broken[others])
