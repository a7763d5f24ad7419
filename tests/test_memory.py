"""The memory footprint estimate against numpy's measured peak, per strategy (box-echo engine, no weights)."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

from worker.contract.study import Study
from worker.engine.engine import Engine, EngineSettings
from worker.engine.footprint import MODEL_TENSORS

RNG = np.random.default_rng(5)


@pytest.fixture(scope="module")
def engine(echo_models_dir) -> Engine:
    return Engine(EngineSettings(models_dir=echo_models_dir, threads=1, cache_bytes=0))


def _volume(shape) -> np.ndarray:
    return RNG.integers(0, 255, shape, dtype=np.uint8)


# big enough that the per-voxel and per-box terms, not the fixed allowance for model tensors, decide the estimate
STUDIES = {
    "2d-many-boxes": Study(
        "2DBox_Microscope_m",
        "Microscope",
        _volume((1000, 1200, 3)),
        np.array([[10 + 9 * i, 10, 200 + 9 * i, 300 + 5 * i] for i in range(60)]),
    ),
    "3d-propagation": Study(
        "3DBox_CT_m", "CT", _volume((60, 400, 400)), np.array([[20, 30, 5, 320, 340, 50], [60, 40, 0, 370, 350, 59]])
    ),
    "3d-triview": Study(
        "3DBox_PET_m", "PET", _volume((60, 300, 300)), np.array([[10, 10, 5, 280, 270, 55], [30, 20, 10, 200, 290, 50]])
    ),
}


@pytest.mark.parametrize("name", sorted(STUDIES))
def test_estimate_covers_the_measured_peak_without_wild_excess(engine, name):
    study = STUDIES[name]
    needed = engine.memory_needed(study)  # the cache is 0 bytes here: no headroom added
    tracemalloc.start()
    try:
        engine.segment(study)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    held = 2 * study.image.nbytes  # the estimate counts the image as decoded from the store and its array
    assert peak + held <= needed, (peak, held, needed)
    assert needed <= 2 * (peak + held) + MODEL_TENSORS, (peak, held, needed)  # an estimate, not a refusal machine


def test_triview_needs_more_than_propagation_for_the_same_volume(engine):
    pet = STUDIES["3d-triview"]
    ct = Study("3DBox_CT_same", "CT", pet.image, pet.boxes)
    assert engine.memory_needed(pet) > engine.memory_needed(ct) + 10 * pet.image.size


def test_cache_headroom_is_part_of_the_need(echo_models_dir):
    cached = Engine(EngineSettings(models_dir=echo_models_dir, threads=1, cache_bytes=256 << 20))
    study = STUDIES["3d-propagation"]
    assert (
        cached.memory_needed(study)
        - Engine(EngineSettings(models_dir=echo_models_dir, threads=1, cache_bytes=0)).memory_needed(study)
        == 256 << 20
    )


@pytest.mark.parametrize("shape", [(), (7,), (0, 80, 3), (2, 6, 32, 32)])
def test_a_malformed_study_gets_an_estimate_not_an_exception(engine, shape):
    study = Study("bad", "CT", np.zeros(shape, np.uint8), np.array([[1, 2, 3, 4]]))
    assert engine.memory_needed(study) >= 0  # the engine's validation names what is wrong, not this
