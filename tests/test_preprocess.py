import numpy as np
import pytest

from models.preprocess import geometry_for, scale_boxes, to_model_input
from worker.engine.slices import logits_to_mask


@pytest.mark.parametrize(
    "shape,resized",
    [((512, 512), (256, 256)), ((300, 512), (150, 256)), ((2604, 1726), (256, 170)), ((101, 122), (212, 256))],
)
def test_longest_side_rounds_half_up(shape, resized):
    assert geometry_for(shape, 256).resized == resized


def test_model_input_is_minmax_normalised_and_zero_padded():
    image = np.full((100, 200), 50, np.uint8)
    image[10:20, 10:20] = 250
    tensor, geo = to_model_input(image, 256)
    assert tensor.shape == (1, 3, 256, 256) and tensor.dtype == np.float32
    assert geo.resized == (128, 256)
    area = tensor[0, :, :128, :]
    assert area.min() == pytest.approx(0.0) and area.max() == pytest.approx(1.0)
    assert np.all(tensor[0, :, 128:, :] == 0)
    assert np.array_equal(tensor[0, 0], tensor[0, 2])  # grey repeated to 3 channels


def test_rgb_channels_kept_and_no_imagenet_normalisation():
    image = np.zeros((64, 64, 3), np.uint8)
    image[..., 0] = 255
    tensor, _ = to_model_input(image, 256)
    assert tensor[0, 0].max() == 1.0 and tensor[0, 1].max() == 0.0


def test_box_scaling_and_mask_round_trip():
    geo = geometry_for((300, 600), 256)
    box = np.array([[60, 30, 300, 150]])
    scaled = scale_boxes(box, geo)
    np.testing.assert_allclose(scaled, box * 256 / 600, rtol=1e-6)
    logits = -np.ones((256, 256), np.float32)
    x0, y0, x1, y1 = scaled[0].astype(int)
    logits[y0:y1, x0:x1] = 1
    mask = logits_to_mask(logits, geo)
    assert mask.shape == (300, 600)
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    assert abs(rows[0] - 30) <= 2 and abs(rows[-1] - 150) <= 2
    assert abs(cols[0] - 60) <= 2 and abs(cols[-1] - 300) <= 2


@pytest.mark.parametrize("shape", [(512, 512), (181, 258), (2604, 1726), (101, 122)])
def test_truncated_boxes_are_the_baselines_integer_model_pixels(shape):
    geo = geometry_for(shape, 256)
    boxes = np.array([[0, 3, shape[1] - 1, shape[0] - 1], [17, 29, 61, 93]])
    expected = [[int(coord * 256 / max(shape)) for coord in box] for box in boxes]
    assert scale_boxes(boxes, geo, "truncate").tolist() == expected
    np.testing.assert_allclose(scale_boxes(boxes, geo, "fractional"), boxes * 256 / max(shape), rtol=1e-6)
    with pytest.raises(ValueError, match="unknown box rounding"):
        scale_boxes(boxes, geo, "round")
