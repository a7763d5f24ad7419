"""The Prompts value (worker.contract.prompts): per label an optional box and ordered clicks, in voxels or mm.

What every layer relies on: the challenge's box array round-trips bit for bit (so masks and result keys are
those of the array), the dimensionality is decided once, and what the engine cannot run (clicks, a label
without a box, mm boxes) is refused by name for that study, never dropped.
"""

from __future__ import annotations

import numpy as np
import pytest

from worker.contract.identity import EngineIdentity, boxes_digest, prompts_digest
from worker.contract.messages import TaskMessage
from worker.contract.prompts import MM, Box, Click, LabelPrompt, PromptError, Prompts
from worker.contract.study import Study, StudyError
from worker.contract.validation import check_study


@pytest.mark.parametrize(
    "boxes",
    [
        np.array([[1, 2, 30, 40], [5, 6, 7, 8]], dtype=np.int64),
        np.array([[1.25, 2.5, 30.125, 40.0]], dtype=np.float32),
        np.array([[0.1, 0.2, 3, 0.30000000000000004, 0.5, 7]], dtype=np.float64),
        np.array([[1, 2, 3, 4, 5, 6]], dtype=np.uint16),
        np.zeros((0, 4), dtype=np.int32),
    ],
)
def test_the_challenge_box_array_round_trips_bit_for_bit(boxes):
    prompts = Prompts.from_boxes(boxes)
    back = prompts.box_array()
    assert back.dtype == boxes.dtype and back.shape == boxes.shape and back.tobytes() == boxes.tobytes()
    assert prompts.is_3d is (boxes.shape[1] == 6) and len(prompts) == len(boxes) and prompts.boxes_only
    assert prompts_digest(prompts) == {"boxes": boxes_digest(boxes)}  # keys made before Prompts still hold


def test_box_array_is_a_copy():
    prompts = Prompts.from_boxes(np.array([[1, 2, 30, 40]]))
    prompts.box_array()[0, 0] = 99
    assert prompts.box_array()[0, 0] == 1


@pytest.mark.parametrize(
    "boxes, message",
    [
        (np.array([["a", "b", "c", "d"]]), "numeric"),
        (np.array([1, 2, 3, 4]), r"shape \(4,\)"),
        (np.zeros((2, 5)), r"shape \(2, 5\)"),
        (np.array([[{"a": 1}] * 4], dtype=object), "numeric"),
    ],
)
def test_what_is_no_box_array_is_refused_as_a_study_error(boxes, message):
    with pytest.raises(PromptError, match=message):
        Prompts.from_boxes(boxes)
    assert issubclass(PromptError, StudyError)


def test_labels_hold_an_optional_box_and_ordered_clicks_of_one_dimensionality():
    fg, bg, fg2 = Click((3, 4, 5)), Click((9, 9, 2), foreground=False), Click((4.5, 4, 5), space=MM)
    label = LabelPrompt(Box((1, 2, 0, 10, 12, 6)), (fg, bg, fg2))
    clicks_only = LabelPrompt(None, (Click((1, 1, 1)),))
    prompts = Prompts((label, clicks_only), dims=3)
    assert prompts.is_3d and label.foreground == (fg, fg2) and label.background == (bg,)
    assert not prompts.boxes_only and prompts.has_clicks
    with pytest.raises(PromptError, match="label 2 has no box"):
        prompts.box_array()
    with pytest.raises(PromptError, match="not all 3D"):
        Prompts((LabelPrompt(Box((1, 2, 10, 12)), (Click((1, 2, 3)),)),), dims=3)
    with pytest.raises(PromptError, match="2D or 3D"):
        Prompts((), dims=4)


def test_inferred_number_type_never_truncates():
    assert Prompts((LabelPrompt(Box((1, 2, 3, 4))),), dims=2).box_array().dtype == np.int64
    fractional = Prompts((LabelPrompt(Box((1.5, 2, 3, 4))),), dims=2).box_array()
    assert fractional.dtype == np.float64 and fractional[0, 0] == 1.5


def test_the_engine_refuses_what_it_cannot_run_by_name():
    image = np.zeros((8, 16, 16), np.uint8)
    box = Box((1, 1, 0, 5, 5, 3))
    cases = {
        "label 1 has neither a box nor a foreground click": LabelPrompt(None, (Click((2, 2, 1), foreground=False),)),
        "its box is in mm": LabelPrompt(Box((1, 1, 0, 5, 5, 3), MM)),
        "a click is in mm": LabelPrompt(box, (Click((2, 2, 1), space=MM),)),
        r"click \[16.0, 2.0, 1.0\] lies outside the image": LabelPrompt(box, (Click((16, 2, 1)),)),
        r"click \[2.0, 2.0, 8.0\] lies outside": LabelPrompt(None, (Click((2, 2, 8)),)),
    }
    for message, label in cases.items():
        with pytest.raises(StudyError, match=message):
            check_study(Study("s", "CT", image, Prompts((label,), dims=3)))
    with pytest.raises(StudyError, match="no boxes or clicks"):
        check_study(Study("s", "CT", image, Prompts((), dims=3)))
    check_study(Study("s", "CT", image, Prompts((LabelPrompt(box),), dims=3)))
    runnable = (
        LabelPrompt(box, (Click((2, 2, 1)), Click((4, 4, 2), foreground=False))),
        LabelPrompt(None, (Click((9, 9, 7)),)),
    )
    check_study(Study("s", "CT", image, Prompts(runnable, dims=3)))  # clicks after a box, and clicks alone


def test_result_keys_tell_clicks_apart_and_keep_box_keys():
    identity = EngineIdentity(precision="f32", package_version="0", models={"litemedsam": "a" * 64})
    boxes = np.array([[1, 1, 0, 5, 5, 3]])
    box_only = Prompts.from_boxes(boxes)
    assert identity.result_key("d" * 64, box_only, "CT") == identity.result_key("d" * 64, boxes, "CT")
    label = box_only.labels[0]
    one = Prompts((LabelPrompt(label.box, (Click((2, 2, 1)),)),), dims=3)
    other = Prompts((LabelPrompt(label.box, (Click((2, 2, 1), foreground=False),)),), dims=3)
    keys = {identity.result_key("d" * 64, p, "CT") for p in (box_only, one, other)}
    assert len(keys) == 3


def test_a_task_message_carries_box_prompts():
    boxes = np.array([[1.5, 2, 30, 40]], dtype=np.float32)
    message = TaskMessage.create(
        batch_id="b",
        name="n",
        study_id="s",
        modality="CT",
        image_digest="d",
        image_shape=(64, 64, 3),
        boxes=boxes.tolist(),
        boxes_dtype=boxes.dtype.str,
        boxes_shape=boxes.shape,
    )
    assert message.prompts().box_array().tobytes() == boxes.tobytes()


def test_a_task_message_carries_clicks_and_labels_of_clicks_alone_and_refuses_version_1():
    import json

    from worker.contract.messages import MessageError

    prompts = Prompts(
        (
            LabelPrompt(Box((1.5, 2, 0, 30, 40, 5)), (Click((3, 4, 1)), Click((9, 9, 2), foreground=False))),
            LabelPrompt(None, (Click((7, 7, 3)),)),
        ),
        dims=3,
    )
    message = TaskMessage.create(
        batch_id="b",
        name="n",
        study_id="s",
        modality="CT",
        image_digest="d",
        image_shape=(8, 64, 64),
        **TaskMessage.prompt_fields(prompts),
    )
    back = TaskMessage.from_wire(json.loads(json.dumps(message.to_wire())))
    assert back.prompts() == prompts
    boxes = np.array([[1, 2, 0, 5, 6, 3]])
    box_only = TaskMessage.create(
        batch_id="b",
        name="n",
        study_id="s",
        modality="CT",
        image_digest="d",
        image_shape=(8, 64, 64),
        **TaskMessage.prompt_fields(Prompts.from_boxes(boxes)),
    )
    assert box_only.labels is None and box_only.prompts().box_array().tobytes() == boxes.tobytes()
    with pytest.raises(MessageError, match="version 1, this worker reads 2"):
        TaskMessage.from_wire({**message.to_wire(), "version": 1})
