"""Clicks as prompts in the batch engine (issue 23, part 1): each label on its own (worker.engine.labelwise), the
same box-only masks as the box strategies on 2D images and propagated volumes, clicks applied in order, labels
given by clicks alone, and the overlap rule painting the result. Real model on the project's phantoms."""

from __future__ import annotations

import numpy as np
import pytest

from models.phantoms import build_phantoms
from worker.contract.prompts import Box, Click, LabelPrompt, Prompts
from worker.contract.study import Study
from worker.engine.engine import Engine, EngineSettings
from worker.engine.labelwise import LabelSegmenter, label_size, paint

PHANTOMS = {p.name: p for p in build_phantoms()}


@pytest.fixture(scope="module")
def engine(real_models_dir):
    return Engine(EngineSettings(real_models_dir, threads=2))


def _prompts(boxes: np.ndarray, clicks: dict[int, list[Click]] | None = None) -> Prompts:
    clicks = clicks or {}
    labels = tuple(LabelPrompt(Box(tuple(row)), tuple(clicks.get(k, ()))) for k, row in enumerate(boxes.tolist()))
    return Prompts(labels, boxes.shape[1] // 2, boxes.dtype.str)


def _forced_labelwise(engine: Engine, study: Study) -> np.ndarray:
    """The labelwise label map of box-only prompts (the engine itself runs them through the box strategies)."""
    from worker.engine.labelwise import segment_labelwise

    return segment_labelwise(engine, study)


@pytest.mark.parametrize("name", ["2DBox_CT_phantom", "3DBox_CT_phantom"])
def test_box_only_prompts_give_the_box_strategies_label_map(engine, name):
    phantom = PHANTOMS[name]
    study = Study(name, "CT", phantom.imgs, phantom.boxes, phantom.spacing)
    np.testing.assert_array_equal(_forced_labelwise(engine, study), engine.segment(study).labels)


def test_clicks_are_applied_in_order_and_a_label_of_clicks_alone_is_segmented(engine):
    phantom = PHANTOMS["3DBox_CT_phantom"]
    boxes = phantom.boxes
    first = phantom.gts == 1
    z = int(np.flatnonzero(first.any(axis=(1, 2)))[len(np.flatnonzero(first.any(axis=(1, 2)))) // 2])
    ys, xs = np.nonzero(first[z])
    inside = Click((int(xs[len(xs) // 2]), int(ys[len(ys) // 2]), z))
    outside = Click((0, 0, z), foreground=False)
    study = Study("c", "CT", phantom.imgs, _prompts(boxes, {0: [inside, outside]}), phantom.spacing)
    labels = engine.segment(study).labels
    assert labels.shape == phantom.gts.shape and labels[z, 0, 0] == 0 and labels[z, inside.point[1], inside.point[0]]

    segmenter = LabelSegmenter(engine, study)
    label = study.prompts.labels[0]
    step = segmenter.box_mask(label.box)
    for index, click in enumerate(label.clicks):  # one click at a time, as a session applies them
        step = segmenter.click(step, label.clicks[:index], click).mask
    np.testing.assert_array_equal(step, segmenter.label_mask(label))

    alone = Prompts((LabelPrompt(None, (inside,)),), dims=3)
    only_clicks = engine.segment(Study("a", "CT", phantom.imgs, alone, phantom.spacing)).labels
    assert only_clicks[z, inside.point[1], inside.point[0]] == 1 and only_clicks.max() == 1


def test_overlap_rule_paints_the_smaller_label_over_the_larger():
    big = np.zeros((1, 8, 8), bool)
    big[0, 1:7, 1:7] = True
    small = np.zeros_like(big)
    small[0, 3:5, 3:5] = True
    labels = paint([big, small], [36, 4], "smaller")
    assert labels[0, 3, 3] == 2 and labels[0, 1, 1] == 1
    assert paint([small, big], [4, 36], "later")[0, 3, 3] == 2
    assert label_size(LabelPrompt(None, (Click((3, 3, 0)),)), small) == 4
    assert label_size(LabelPrompt(Box((1, 1, 0, 6, 6, 0))), big) == 36
