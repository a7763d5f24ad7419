"""Strategies, routing and accounting, run through the real engine with the box-echo IR pair.

The echo decoder returns exactly the prompt box, so the expected masks are known in closed form.
"""

import numpy as np
import pytest

from models.preprocess import geometry_for
from models.registry import register_model
from synthetic_ir import build_echo_pair
from worker.contract.study import Study
from worker.engine.engine import Engine, EngineSettings
from worker.engine.strategies import majority_vote, prompt_from_mask

RNG = np.random.default_rng(7)


def engine(models_dir, **settings) -> Engine:
    return Engine(EngineSettings(models_dir=models_dir, **settings))


def box_mask(shape, box):
    x0, y0, x1, y1 = box
    mask = np.zeros(shape, bool)
    mask[y0 : y1 + 1, x0 : x1 + 1] = True
    return mask


def assert_close_to_box(mask, box, tol=2):
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    x0, y0, x1, y1 = box
    assert abs(cols[0] - x0) <= tol and abs(cols[-1] - x1) <= tol, (cols[0], cols[-1], box)
    assert abs(rows[0] - y0) <= tol and abs(rows[-1] - y1) <= tol, (rows[0], rows[-1], box)


def routing_with(tmp_path, text: str):
    path = tmp_path / "routing.toml"
    path.write_text('[default]\nmodels = ["litemedsam"]\n' + text)
    return path


@pytest.mark.parametrize("rule", ["later", "smaller"])
def test_2d_boxes_segment_and_the_overlap_rule_decides(echo_models_dir, tmp_path, rule):
    image = RNG.integers(0, 255, (300, 400, 3), dtype=np.uint8)
    boxes = np.array([[50, 40, 200, 180], [150, 100, 350, 250]])  # box 1 has the smaller area
    runner = engine(echo_models_dir, routing_file=routing_with(tmp_path, f'overlap = "{rule}"\n'))
    result = runner.segment(Study("2DBox_CT_x", "CT", image, boxes))
    labels = result.labels
    assert labels.dtype == np.uint16 and labels.shape == (300, 400)
    assert labels[60, 60] == 1 and labels[240, 340] == 2 and labels[5, 5] == 0
    assert labels[150, 170] == (2 if rule == "later" else 1)  # inside both boxes
    if rule == "later":
        assert_close_to_box(labels == 1, (50, 40, 200, 180), tol=2)
        assert not (labels == 1)[100:180, 150:200].any()
    else:
        assert_close_to_box(labels == 1, (50, 40, 200, 180), tol=2)
        assert (labels == 1)[100:180, 150:200].all()
        assert_close_to_box(labels == 2, (150, 100, 350, 250), tol=2)
    counts = result.metrics.counts
    assert (counts.boxes, counts.slices_encoded, counts.decoder_calls) == (2, 1, 1)
    assert result.metrics.provenance.strategy == "box2d"
    assert result.metrics.provenance.overlap == rule


def test_boxes_are_decoded_in_bounded_chunks(echo_models_dir):
    image = RNG.integers(0, 255, (128, 128, 3), dtype=np.uint8)
    boxes = np.array([[i, i, i + 20, i + 20] for i in range(40)])
    result = engine(echo_models_dir, decode_chunk=16).segment(Study("2DBox_US_x", "US", image, boxes))
    assert result.metrics.counts.decoder_calls == 3
    assert result.labels.max() == 40


def volume_study(
    modality="CT", shape=(30, 64, 80), boxes=((10, 8, 2, 40, 30, 10), (30, 20, 5, 70, 50, 25), (5, 40, 20, 30, 60, 28))
):
    volume = RNG.integers(0, 255, shape, dtype=np.uint8)
    return Study(f"3DBox_{modality}_x", modality, volume, np.array(boxes))


def test_propagation_covers_each_box_z_range_and_encodes_each_slice_once(echo_models_dir, tmp_path):
    routing = tmp_path / "routing.toml"
    # at 1 original px per model-input px and margin 0, the echoed box is a fixed point of the propagation
    routing.write_text('[default]\nmodels = ["litemedsam"]\nmargin = 0.0\n')
    study = volume_study(shape=(30, 256, 256))
    result = engine(echo_models_dir, routing_file=routing).segment(study)
    labels = result.labels
    for k, (_, _, z0, _, _, z1) in enumerate(study.boxes):
        present = np.flatnonzero((labels == k + 1).any(axis=(1, 2)))
        assert present[0] == z0 and present[-1] == z1  # inclusive at both ends
    for z in (5, 12, 15, 19, 25):  # the echoed box reproduces itself along the whole chain
        assert_close_to_box(labels[z] == 2, (30, 20, 70, 50), tol=0)
    needed = set().union(*(range(b[2], b[5] + 1) for b in study.boxes))
    counts = result.metrics.counts
    assert counts.slices_encoded == len(needed) == 27
    assert counts.cache_misses == 27 and counts.cache_hits > 0
    assert result.metrics.provenance.strategy == "propagate"


def test_propagation_prompt_follows_previous_mask_with_margin(echo_models_dir):
    study = volume_study(shape=(21, 128, 128), boxes=((40, 40, 0, 80, 80, 20),))
    labels = engine(echo_models_dir).segment(study).labels  # default margin 3 px at 256 scale = 1.5 px here
    width = [np.flatnonzero((labels[z] == 1).any(0)).size for z in range(21)]
    assert width[10] == pytest.approx(41, abs=2)  # the middle slice uses the original box
    assert width[20] > width[15] > width[10] and width[0] > width[5] > width[10]  # grows away from the middle


def test_small_cache_reencodes_but_gives_the_same_labels(echo_models_dir, tmp_path):
    study = volume_study()
    big = engine(echo_models_dir).segment(study)
    small = engine(echo_models_dir, cache_bytes=4 << 20).segment(study)
    assert np.array_equal(big.labels, small.labels)
    assert small.metrics.counts.slices_encoded > big.metrics.counts.slices_encoded
    assert small.metrics.counts.cache_evictions > 0


def test_rerun_of_same_study_hits_the_cache(echo_models_dir):
    runner = engine(echo_models_dir)
    study = volume_study()
    runner.segment(study)
    again = runner.segment(study)
    assert again.metrics.counts.slices_encoded == 0 and again.metrics.counts.cache_hits > 0


def test_pet_triview_encodes_each_view_once_and_votes(echo_models_dir, tmp_path):
    routing = tmp_path / "routing.toml"
    routing.write_text('[default]\nmodels = ["litemedsam"]\nmargin = 2.0\n[modality.PET]\nstrategy_3d = "triview"\n')
    study = volume_study("PET", shape=(20, 40, 48), boxes=((10, 12, 4, 30, 28, 15),))
    progress = []
    result = engine(echo_models_dir, routing_file=routing).segment(
        study, progress=lambda done, total: progress.append((done, total))
    )
    x0, y0, z0, x1, y1, z1 = study.boxes[0]
    assert result.metrics.provenance.strategy == "triview"
    assert result.metrics.counts.slices_encoded == (z1 - z0 + 1) + (y1 - y0 + 1) + (x1 - x0 + 1)
    inside = result.labels[z0 + 3 : z1 - 2, y0 + 3 : y1 - 2, x0 + 3 : x1 - 2]
    outside = np.ones(study.image.shape, bool)
    outside[max(z0 - 3, 0) : z1 + 4, y0 - 3 : y1 + 4, x0 - 3 : x1 + 4] = False
    assert inside.min() == 1 and result.labels[outside].max() == 0
    assert progress[-1][0] == progress[-1][1] and [p[0] for p in progress] == sorted(p[0] for p in progress)


def test_majority_vote_keeps_two_of_three_else_smallest():
    a = np.array([1, 0, 2, 3, 5], np.uint16)
    b = np.array([1, 2, 2, 1, 4], np.uint16)
    c = np.array([0, 2, 1, 2, 6], np.uint16)
    assert majority_vote(a, b, c).tolist() == [1, 2, 2, 1, 4]


def test_empty_mask_gives_no_prompt_so_the_original_box_is_used():
    geo = geometry_for((64, 64), 256)
    assert prompt_from_mask(np.zeros((64, 64), bool), geo, 3.0) is None
    box = prompt_from_mask(box_mask((64, 64), (10, 20, 30, 40)), geo, 3.0)
    np.testing.assert_allclose(box, [10 * 4 - 3, 20 * 4 - 3, 30 * 4 + 3, 40 * 4 + 3])


@pytest.fixture(scope="module")
def two_model_registry(tmp_path_factory):
    root = tmp_path_factory.mktemp("two-models")
    for name, size in (("litemedsam", 256), ("efficientvit-sam", 512)):
        encoder, decoder = build_echo_pair(root / f"src-{size}", size)
        register_model(root / "registry", name, encoder, decoder, input_size=size)
    return root / "registry"


def test_user_512_model_routes_microscope_and_maps_boxes_back(two_model_registry):
    image = RNG.integers(0, 255, (700, 500, 3), dtype=np.uint8)  # non-square: padding and crop matter
    box = (37, 101, 411, 655)
    runner = engine(two_model_registry)
    micro = runner.segment(Study("2DBox_Microscope_x", "Microscope", image, np.array([box])))
    assert micro.metrics.provenance.model == "efficientvit-sam"
    assert_close_to_box(micro.labels == 1, box, tol=2)
    ct = runner.segment(Study("2DBox_CT_x", "CT", image, np.array([box])))
    assert ct.metrics.provenance.model == "litemedsam"
    assert micro.metrics.provenance.model_sha256 != ct.metrics.provenance.model_sha256


def test_microscope_falls_back_to_litemedsam_and_says_so(echo_models_dir):
    image = RNG.integers(0, 255, (64, 64, 3), dtype=np.uint8)
    result = engine(echo_models_dir).segment(Study("2DBox_X-Ray_x", "X-Ray", image, np.array([[5, 5, 40, 40]])))
    assert result.metrics.provenance.model == "litemedsam"
    assert "efficientvit-sam" in result.metrics.provenance.note


def test_metrics_carry_stage_times_and_provenance(echo_models_dir):
    result = engine(echo_models_dir).segment(volume_study())
    times = result.metrics.times
    assert times.total >= times.encode + times.decode > 0
    assert times.preprocess > 0 and times.postprocess > 0
    prov = result.metrics.provenance
    assert len(prov.model_sha256) == 64 and prov.precision == "f32" and prov.package_version
