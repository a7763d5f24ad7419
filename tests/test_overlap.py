"""Issue 13: where box masks overlap, the smaller structure wins ("smaller", default) or the later box ("later").

Unit tests of the rule (worker/engine/overlap.py) and runs of the real engine with the box-echo IR pair, whose
decoder returns exactly the prompt box, so nested boxes give nested masks of known size.
"""

import numpy as np
import pytest

from worker.contract.identity import EngineIdentity
from worker.contract.routing import RoutingTable
from worker.contract.study import Study
from worker.engine.engine import Engine, EngineSettings
from worker.engine.overlap import ViewMasks, box_sizes, priorities

RNG = np.random.default_rng(13)
BIG_2D, SMALL_2D = (20, 20, 220, 200), (80, 60, 140, 120)  # the small box lies inside the big one


def routing_file(tmp_path, rule: str | None, margin: float = 0.0):
    path = tmp_path / f"routing-{rule}.toml"
    text = f'[default]\nmodels = ["litemedsam"]\nmargin = {margin}\n[modality.PET]\nstrategy_3d = "triview"\n'
    if rule is not None:
        text = text.replace("[modality.PET]", f'overlap = "{rule}"\n[modality.PET]')
    path.write_text(text)
    return path


def run(models_dir, routing, study):
    return Engine(EngineSettings(models_dir=models_dir, routing_file=routing)).segment(study)


# ---------------------------------------------------------------- the rule


def test_priorities_later_is_box_order():
    assert priorities(np.array([5, 1, 9]), "later").tolist() == [1, 2, 3]


def test_priorities_smaller_ranks_by_size_and_breaks_ties_by_the_later_box():
    ranks = priorities(np.array([50, 10, 90, 10, 0]), "smaller")
    assert ranks.tolist() == [2, 3, 1, 4, 5]  # 0 (an empty mask) > 10 (box 3, later) > 10 (box 1) > 50 > 90


def test_box_sizes_are_inclusive_areas_and_volumes():
    assert box_sizes(np.array([[0, 0, 9, 4], [3, 3, 3, 3]])).tolist() == [50, 1]
    assert box_sizes(np.array([[0, 0, 0, 9, 4, 1]])).tolist() == [100]
    # a permuted 3D box (a tri-view view's order) has the same volume
    assert box_sizes(np.array([[0, 0, 0, 4, 1, 9]])).tolist() == [100]


def test_smaller_box_wins_even_where_its_mask_is_the_larger_one():
    """The tssm case: a sprawling box (costal cartilage) whose small mask leaks into a smaller box's big mask
    (the liver): the smaller box keeps its pixels."""
    shape = (20, 20)
    liver = np.zeros(shape, bool)
    liver[2:18, 2:12] = True  # 160 px, from a 10 x 16 box
    cartilage = np.zeros(shape, bool)
    cartilage[8:12, 0:20] = True  # 80 px, from a 20 x 20 box
    view = ViewMasks((1, *shape), box_sizes(np.array([[2, 2, 11, 17], [0, 0, 19, 19]])))
    view.add(0, np.arange(2), np.stack([liver, cartilage]))
    labels = view.labels("smaller")[0]
    assert (labels[liver] == 1).all() and (labels[cartilage & ~liver] == 2).all()


def test_unknown_rule_is_refused():
    with pytest.raises(ValueError, match="unknown overlap rule"):
        priorities(np.array([1]), "largest")


def _random_masks(count, shape):
    masks = np.zeros((count, *shape), bool)
    for k in range(count):
        y0, x0 = RNG.integers(0, shape[0] - 4), RNG.integers(0, shape[1] - 4)
        masks[k, y0 : y0 + RNG.integers(2, shape[0] - y0), x0 : x0 + RNG.integers(2, shape[1] - x0)] = True
        masks[k] &= RNG.random(shape) < 0.9  # ragged, not boxes
    return masks


@pytest.mark.parametrize("rule", ["smaller", "later"])
def test_labels_do_not_depend_on_the_order_masks_arrive_in(rule):
    """The lockstep propagation meets a slice in two sweeps at different times: ownership must not care."""
    depth, shape, count = 4, (30, 40), 6
    masks = {(z, k): m for z in range(depth) for k, m in enumerate(_random_masks(count, shape))}
    sizes = np.array([sum(int(masks[(z, k)].sum()) for z in range(depth)) for k in range(count)])
    reference = ViewMasks((depth, *shape), sizes)
    for (z, k), mask in masks.items():
        reference.add(z, np.array([k]), mask[None])
    expected = reference.labels(rule)
    for seed in range(3):
        shuffled = ViewMasks((depth, *shape), sizes)
        keys = list(masks)
        for index in np.random.default_rng(seed).permutation(len(keys)):
            z, k = keys[index]
            shuffled.add(z, np.array([k]), masks[z, k][None])
        assert np.array_equal(shuffled.labels(rule), expected)


def test_later_rule_is_the_maximum_label_and_smaller_gives_each_pixel_its_smallest_mask():
    shape, count = (25, 35), 5
    masks = _random_masks(count, shape)
    sizes = masks.sum(axis=(1, 2))
    view = ViewMasks((1, *shape), sizes)
    view.add(0, np.arange(count), masks)
    later = view.labels("later")[0]
    expected_later = np.max(np.where(masks, np.arange(1, count + 1)[:, None, None], 0), axis=0)
    assert np.array_equal(later, expected_later)

    view = ViewMasks((1, *shape), sizes)
    view.add(0, np.arange(count), masks)
    smaller = view.labels("smaller")[0]
    for y, x in zip(*np.nonzero(masks.any(axis=0))):
        covering = np.flatnonzero(masks[:, y, x])
        best = min(covering, key=lambda k: (sizes[k], -k))  # smallest, ties: later box
        assert smaller[y, x] == best + 1
    assert not smaller[~masks.any(axis=0)].any()


# ---------------------------------------------------------------- 2D through the engine


@pytest.mark.parametrize("small_first", [True, False])
@pytest.mark.parametrize("rule", ["smaller", "later"])
def test_nested_boxes_2d(echo_models_dir, tmp_path, rule, small_first):
    image = RNG.integers(0, 255, (240, 256, 3), dtype=np.uint8)
    boxes = np.array([SMALL_2D, BIG_2D] if small_first else [BIG_2D, SMALL_2D])
    small_label, big_label = (1, 2) if small_first else (2, 1)
    result = run(echo_models_dir, routing_file(tmp_path, rule), Study("2DBox_CT_nested", "CT", image, boxes))
    x0, y0, x1, y1 = SMALL_2D
    inner = result.labels[y0 + 2 : y1 - 1, x0 + 2 : x1 - 1]
    if rule == "smaller":
        assert (inner == small_label).all()
    else:
        assert (inner == 2).all()  # the later box, whichever it is
    assert result.labels[30, 30] == big_label and result.labels[230, 250] == 0
    assert result.metrics.provenance.overlap == rule


def test_default_rule_is_smaller(echo_models_dir, tmp_path):
    image = RNG.integers(0, 255, (240, 256, 3), dtype=np.uint8)
    result = run(
        echo_models_dir,
        routing_file(tmp_path, None),
        Study("2DBox_CT_nested", "CT", image, np.array([SMALL_2D, BIG_2D])),
    )
    assert result.metrics.provenance.overlap == "smaller"
    assert result.labels[90, 100] == 1
    assert RoutingTable.load().route("CT").overlap == "smaller"  # the shipped table


# ---------------------------------------------------------------- 3D: propagation and tri-view

BIG_3D, SMALL_3D = (10, 12, 0, 60, 50, 30), (25, 20, 2, 40, 35, 10)


def _nested_3d(small_first: bool, modality: str):
    # the small structure's middle slice (6) is below the big one's (15): the up sweep paints it on slices 6..14
    # before the down sweep paints the big box there, the opposite order above slice 15
    boxes = np.array([SMALL_3D, BIG_3D] if small_first else [BIG_3D, SMALL_3D])
    volume = RNG.integers(0, 255, (31, 256, 256), dtype=np.uint8)  # 1 px = 1 model px: echoed boxes stay put
    return Study(f"3DBox_{modality}_nested", modality, volume, boxes), (1, 2) if small_first else (2, 1)


def _expected_3d(rule: str, small_label: int, big_label: int) -> np.ndarray:
    """The echo decoder with margin 0 at scale 1 reproduces each box on each of its slices, in every view."""
    expected = np.zeros((31, 256, 256), np.uint16)
    for (x0, y0, z0, x1, y1, z1), label in ((BIG_3D, big_label), (SMALL_3D, small_label)):
        expected[z0 : z1 + 1, y0 : y1 + 1, x0 : x1 + 1] = label
    if rule == "later":  # then the later box (label 2) owns the overlap, which is the small box's extent
        x0, y0, z0, x1, y1, z1 = SMALL_3D
        expected[z0 : z1 + 1, y0 : y1 + 1, x0 : x1 + 1] = 2
    return expected


@pytest.mark.parametrize("small_first", [True, False])
@pytest.mark.parametrize("rule", ["smaller", "later"])
def test_nested_boxes_3d_propagation(echo_models_dir, tmp_path, rule, small_first):
    study, labels_of = _nested_3d(small_first, "CT")
    result = run(echo_models_dir, routing_file(tmp_path, rule), study)
    assert result.metrics.provenance.strategy == "propagate"
    assert np.array_equal(result.labels, _expected_3d(rule, *labels_of))


def test_3d_smaller_rule_does_not_depend_on_box_order(echo_models_dir, tmp_path):
    first, _ = _nested_3d(True, "CT")
    second, _ = _nested_3d(False, "CT")
    routing = routing_file(tmp_path, "smaller", margin=3.0)  # masks that change from slice to slice
    a, b = run(echo_models_dir, routing, first).labels, run(echo_models_dir, routing, second).labels
    swap = np.array([0, 2, 1], np.uint16)  # label k in one run is the other box's label in the other
    assert np.array_equal(a, swap[b])
    assert (a == 1).any() and (a == 2).any()


@pytest.mark.parametrize("rule,small_first", [("smaller", True), ("smaller", False), ("later", True)])
def test_nested_boxes_triview_each_view_before_the_vote(echo_models_dir, tmp_path, rule, small_first):
    study, labels_of = _nested_3d(small_first, "PET")
    result = run(echo_models_dir, routing_file(tmp_path, rule), study)
    assert result.metrics.provenance.strategy == "triview"
    assert np.array_equal(result.labels, _expected_3d(rule, *labels_of))


# ---------------------------------------------------------------- routing and the content key


def test_overlap_rule_is_a_routing_setting_per_modality_and_validated():
    table = RoutingTable({"overlap": "smaller"}, {"PET": {"overlap": "later"}})
    assert table.route("CT").overlap == "smaller" and table.route("PET").overlap == "later"
    with pytest.raises(ValueError, match="unknown overlap 'biggest'"):
        RoutingTable({"overlap": "biggest"}, {})


def test_overlap_rule_enters_the_result_key():
    def identity(rule):
        return EngineIdentity(
            precision="f32",
            package_version="1.0",
            models={"litemedsam": "ab" * 32},
            routing={"default": {"models": ["litemedsam"], "overlap": rule}, "modality": {}},
        )

    boxes = np.array([[1, 2, 30, 40]])
    smaller, later = identity("smaller"), identity("later")
    assert smaller.route_identity("CT")["overlap"] == "smaller"
    assert smaller.result_key("d" * 64, boxes, "CT") != later.result_key("d" * 64, boxes, "CT")


def test_resize_and_box_rounding_are_routing_settings_per_dimension():
    shipped = RoutingTable.load().route("CT")
    assert (shipped.interpolation(False), shipped.box_rounding(False)) == ("area", "truncate")  # the baseline's 2D
    assert (shipped.interpolation(True), shipped.box_rounding(True)) == ("linear", "fractional")  # 3D as before
    legacy = RoutingTable({"interpolation": "linear"}, {"MR": {"interpolation": "area", "interpolation_3d": "linear"}})
    assert (legacy.route("CT").interpolation(False), legacy.route("CT").interpolation(True)) == ("linear", "linear")
    assert (legacy.route("MR").interpolation(False), legacy.route("MR").interpolation(True)) == ("area", "linear")
    with pytest.raises(ValueError, match="unknown box_rounding_2d 'round'"):
        RoutingTable({"box_rounding_2d": "round"}, {})


def test_per_dimension_settings_enter_the_result_key():
    def key(default):
        identity = EngineIdentity(
            precision="f32",
            package_version="1.0",
            models={"litemedsam": "ab" * 32},
            routing={"default": default, "modality": {}},
        )
        return identity.result_key("d" * 64, np.array([[1, 2, 30, 40]]), "CT")

    base = {"models": ["litemedsam"]}
    keys = {
        key(base),
        key({**base, "interpolation_2d": "linear"}),
        key({**base, "box_rounding_2d": "fractional"}),
        key({**base, "interpolation_3d": "area"}),
        key({**base, "box_rounding_3d": "truncate"}),
    }
    assert len(keys) == 5
