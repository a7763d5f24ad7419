"""Issue 10, part 2: the engine's 2D path reproduces the official LiteMedSAM baseline's 2D masks exactly.

`baseline_2d` below is a twin of the official baseline's 2D inference, written from ../shared/REFERENCE.md with numpy
and cv2 (tests cannot use torch), on the same compiled OpenVINO model the engine runs:
  pre:  longest side to S with new = int(old * S / max(h, w) + 0.5), cv2.INTER_AREA; min-max over the resized
        uint8 image (the baseline divides in float64, then casts to float32); zero pad bottom/right; boxes
        int(coord * S / max(h, w)) per coordinate;
  model: encode once, decode each box on its own (as the baseline does);
  post: logits to S x S (bilinear, when the decoder's are smaller), crop to the resized area, bilinear to the
        original size, logits > 0; box k painted as k + 1 in order, later boxes over earlier ones.
The engine runs with overlap = "later" (the baseline's convention) and its default 2D settings. Images: square,
wide, tall, upscaled (longest side < S), downscaled, grey and true RGB; real cases from ../shared/data/cases when
present, else the project's phantoms.
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from conftest import SHARED_CASES
from models.phantoms import build_phantoms
from producer.derived import from_image, from_volume
from worker.contract.study import Study

pytestmark = pytest.mark.model


# ---------------------------------------------------------------- the baseline's 2D algorithm (twin)


def baseline_preprocess(image: np.ndarray, size: int) -> tuple[np.ndarray, tuple[int, int], float]:
    h, w = image.shape[:2]
    scale = size * 1.0 / max(h, w)
    new_w, new_h = int(w * scale + 0.5), int(h * scale + 0.5)
    resized = cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_AREA)  # uint8
    normalised = (resized - resized.min()) / np.clip(resized.max() - resized.min(), a_min=1e-8, a_max=None)
    padded = np.pad(normalised, ((0, size - new_h), (0, size - new_w), (0, 0)))
    return padded.astype(np.float32).transpose(2, 0, 1)[None], (new_h, new_w), scale


def baseline_box(box: np.ndarray, original: tuple[int, int], size: int) -> np.ndarray:
    ratio = size / max(original)
    return np.array([int(coord * ratio) for coord in box], dtype=np.float32)


def baseline_mask(logits: np.ndarray, size: int, resized: tuple[int, int], original: tuple[int, int]) -> np.ndarray:
    if logits.shape != (size, size):
        logits = cv2.resize(logits, (size, size), interpolation=cv2.INTER_LINEAR)
    cropped = np.ascontiguousarray(logits[: resized[0], : resized[1]])
    return cv2.resize(cropped, (original[1], original[0]), interpolation=cv2.INTER_LINEAR) > 0


def baseline_2d(model, image: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    size = model.spec.input_size
    tensor, resized, _ = baseline_preprocess(image, size)
    embedding = model.encode(tensor)
    labels = np.zeros(image.shape[:2], np.uint16)
    for index, box in enumerate(boxes, start=1):
        logits = model.decode(embedding, baseline_box(box, image.shape[:2], size)[None])
        labels[baseline_mask(logits[0, 0], size, resized, image.shape[:2])] = index
    return labels


# ---------------------------------------------------------------- images of every kind


def colourise(grey_rgb: np.ndarray) -> np.ndarray:
    """A true RGB image from a grey one: three different channels (a min-max over all of them matters)."""
    grey = grey_rgb[..., 0].astype(np.float64)
    red = grey
    green = np.sqrt(grey / 255.0) * 200.0
    blue = 255.0 - np.roll(grey, 17, axis=1) * 0.8
    return np.clip(np.rint(np.stack([red, green, blue], axis=-1)), 0, 255).astype(np.uint8)


def _npz(path):
    with np.load(path, allow_pickle=False) as data:
        return {key: data[key] for key in data.files}


def parity_images() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """name -> (uint8 (H, W, 3) image, (N, 4) boxes)."""
    images: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    if (SHARED_CASES / "gts" / "2DBox_CT_amos000690.npz").is_file():
        imgs, gts = SHARED_CASES / "imgs", SHARED_CASES / "gts"
        for name in ("2DBox_CT_amos000475", "2DBox_Microscope_stardist2d", "2DBox_Mammography_demo"):
            case = _npz(imgs / f"{name}.npz")
            images[name] = (case["imgs"], case["boxes"])
        crops = from_image(
            "CT_amos000690",
            _npz(imgs / "2DBox_CT_amos000690.npz")["imgs"],
            _npz(gts / "2DBox_CT_amos000690.npz")["gts"],
        )
        slices = []
        for stem in ("CT_tssm", "MR_brats01646"):
            volume = _npz(imgs / f"3DBox_{stem}.npz")["imgs"]
            slices += [
                c for c in from_volume(stem, volume, _npz(gts / f"3DBox_{stem}.npz")["gts"], None) if not c.is_3d
            ][:1]
    else:
        phantoms = {p.name: p for p in build_phantoms()}
        ct2d = phantoms["2DBox_CT_phantom"]
        images[ct2d.name] = (ct2d.imgs, ct2d.boxes)
        crops = from_image("CT_phantom", ct2d.imgs, ct2d.gts)
        slices = []
        for name in ("3DBox_CT_phantom", "3DBox_MR_phantom"):
            slices += [
                c
                for c in from_volume(name.split("_", 1)[1], phantoms[name].imgs, phantoms[name].gts, None)
                if not c.is_3d
            ][:1]
        big = np.repeat(np.repeat(ct2d.imgs, 3, axis=0), 2, axis=1)[:, :700]  # a large, tall image
        images["2DBox_CT_phantom-large"] = (big, ct2d.boxes * np.array([2, 3, 2, 3]) + np.array([0, 0, 1, 2]))
    for case in crops + slices:
        images[case.name] = (case.imgs, case.boxes)
    wide = next(case for case in crops if case.imgs.shape[1] > case.imgs.shape[0])
    images[f"{wide.name}-rgb"] = (colourise(wide.imgs), wide.boxes)
    return images


IMAGES = parity_images()


def kinds(image: np.ndarray, size: int = 256) -> set[str]:
    h, w = image.shape[:2]
    found = {"square" if h == w else ("wide" if w > h else "tall"), "upscaled" if max(h, w) < size else "downscaled"}
    found.add("rgb" if (image[..., 0] != image[..., 1]).any() else "grey")
    return found


def test_the_images_cover_every_kind():
    covered = set().union(*(kinds(image) for image, _ in IMAGES.values()))
    assert covered == {"square", "wide", "tall", "upscaled", "downscaled", "grey", "rgb"}, covered


# ---------------------------------------------------------------- the engine against the twin


@pytest.fixture(scope="module")
def engines(real_models_dir, tmp_path_factory):
    from worker.engine.engine import Engine, EngineSettings

    folder = tmp_path_factory.mktemp("fidelity-routing")
    made = {}
    old_2d = 'interpolation_2d = "linear"\nbox_rounding_2d = "fractional"\n'
    for name, text in {"default-2d": "", "old-2d": old_2d}.items():
        routing = folder / f"{name}.toml"
        routing.write_text(f'[default]\nmodels = ["litemedsam"]\noverlap = "later"\n{text}')
        made[name] = Engine(EngineSettings(models_dir=real_models_dir, routing_file=routing))
    return made


@pytest.fixture(scope="module")
def twin_labels(engines):
    model = engines["default-2d"].model("litemedsam")
    return {name: baseline_2d(model, image, boxes) for name, (image, boxes) in IMAGES.items()}


@pytest.mark.parametrize("name", sorted(IMAGES))
def test_engine_2d_masks_equal_the_baseline_exactly(engines, twin_labels, name):
    image, boxes = IMAGES[name]
    result = engines["default-2d"].segment(Study(name, name.split("_")[1], image, boxes))
    expected = twin_labels[name]
    assert expected.any(), "the twin segmented nothing: not a useful comparison"
    differ = int(np.count_nonzero(result.labels != expected))
    assert differ == 0, f"{name} {image.shape}: {differ} pixels differ from the baseline twin"
    assert result.metrics.extra.interpolation == "area" and result.metrics.extra.box_rounding == "truncate"


def test_the_old_linear_fractional_2d_path_does_not_match(engines, twin_labels):
    """The comparison can fail: linear + fractional boxes (the 2D path before) differ from the baseline."""
    differing, few_boxes = [], {name: case for name, case in IMAGES.items() if len(case[1]) <= 20}
    for name, (image, boxes) in few_boxes.items():
        labels = engines["old-2d"].segment(Study(name, name.split("_")[1], image, boxes)).labels
        if not np.array_equal(labels, twin_labels[name]):
            differing.append(name)
    assert len(differing) >= len(few_boxes) // 2, differing
