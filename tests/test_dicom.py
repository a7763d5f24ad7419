"""DICOM in (series order, rescale, compression, multi-frame, 2D), intensity, modality, sidecar boxes, DICOM SEG out."""

from __future__ import annotations

import json
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.pixels import get_encoder
from pydicom.uid import JPEG2000Lossless, JPEGLSLossless, RLELossless

from dicom_factory import (
    SeriesSpec,
    ramp_volume,
    write_colour_photo,
    write_enhanced_ct,
    write_jpeg_photo,
    write_raw_dataset,
    write_series,
    write_xray,
)
from producer.discovery import find_studies
from producer.formats import intensity, modality
from producer.formats.dicom import load_dicom_volume, read_layout
from producer.formats.hospital import prepare_image
from producer.loading import load_study
from producer.outcome import StudyOutcome
from producer.outputs import OutputWriter, output_path
from worker.contract.study import StudyError

OBLIQUE_ROW = (np.cos(0.3), np.sin(0.3), 0.0)
OBLIQUE_COL = (-np.sin(0.3) * np.cos(0.4), np.cos(0.3) * np.cos(0.4), np.sin(0.4))
SHA = "ab" * 32
PROVENANCE = {
    "model": "litemedsam",
    "model_sha256": SHA,
    "precision": "f32",
    "strategy": "propagate",
    "package_version": "0.1.0",
}


def prompts(folder: Path, boxes: list[dict], **extra) -> Path:
    path = folder / "prompts.json"
    path.write_text(json.dumps({"boxes": boxes, **extra}))
    return path


def slice_of(path: Path, spec: SeriesSpec) -> int:
    """Which stored slice k a file holds, from its position (independent of the reader under test)."""
    position = np.asarray(pydicom.dcmread(path, stop_before_pixels=True).ImagePositionPatient, float)
    k = (position - np.asarray(spec.origin)) @ spec.normal / spec.step
    return int(round(k))


def world_of(spec: SeriesSpec, x: float, y: float, k: float) -> np.ndarray:
    """World position of column x, row y of stored slice k, straight from the DICOM definitions."""
    row_spacing, column_spacing = spec.pixel_spacing
    return (
        spec.position(0)
        + k * spec.step * spec.normal
        + x * column_spacing * np.asarray(spec.row_dir)
        + y * row_spacing * np.asarray(spec.col_dir)
    )


# ---------------------------------------------------------------- reading series


def test_ct_series_sorted_by_position_with_rescale(tmp_path: Path):
    spec = SeriesSpec(stored=ramp_volume(7, 24, 30), slope=2.0, intercept=-1024.0)
    paths = write_series(tmp_path / "ct", spec, shuffle_seed=3)
    volume = load_dicom_volume(paths)
    assert volume.values.shape == (7, 24, 30) and volume.values.dtype == np.float32
    np.testing.assert_array_equal(volume.values, spec.stored * 2.0 - 1024.0)
    assert volume.spacing == pytest.approx((0.7, 0.8, 2.5))  # x = column spacing = PixelSpacing[1]
    np.testing.assert_allclose(volume.geometry.origin, spec.origin)
    np.testing.assert_allclose(volume.geometry.direction, np.eye(3), atol=1e-12)
    assert volume.modality_tag == "CT" and not volume.native_8bit


def test_instance_numbers_and_file_names_do_not_decide_order(tmp_path: Path):
    spec = SeriesSpec(stored=ramp_volume(6, 16, 16))
    paths = write_series(tmp_path / "s", spec, shuffle_seed=11)
    layout = read_layout(sorted(paths))
    by_file = [slice_of(layout.paths[ref.instance], spec) for ref in layout.slices]
    assert by_file == list(range(6))
    uid_of = {p: str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in paths}
    assert load_dicom_volume(paths).slice_uids == tuple(uid_of[layout.paths[ref.instance]] for ref in layout.slices)
    instance_numbers = [int(layout.headers[ref.instance].InstanceNumber) for ref in layout.slices]
    assert instance_numbers != sorted(instance_numbers)  # the shuffle really scrambled them


def test_reversed_oblique_series(tmp_path: Path):
    spec = SeriesSpec(stored=ramp_volume(5, 20, 22), row_dir=OBLIQUE_ROW, col_dir=OBLIQUE_COL, step=-3.0)
    paths = write_series(tmp_path / "obl", spec)
    volume = load_dicom_volume(paths)
    # stored slice k sits at -3k mm along the normal: ascending along the normal is k = 4, 3, ..., 0
    np.testing.assert_array_equal(volume.values, spec.stored[::-1].astype(np.float32))
    assert volume.spacing == pytest.approx((0.7, 0.8, 3.0))
    expected_axes = np.column_stack([OBLIQUE_ROW, OBLIQUE_COL, spec.normal])
    np.testing.assert_allclose(volume.geometry.direction, expected_axes, atol=1e-9)
    for x, y, z in [(0, 0, 0), (21, 19, 4), (5, 7, 2)]:
        np.testing.assert_allclose(volume.geometry.to_world([x, y, z])[0], world_of(spec, x, y, 4 - z), atol=1e-6)


ENCODINGS = [RLELossless, JPEG2000Lossless, JPEGLSLossless]


@pytest.mark.parametrize("syntax", ENCODINGS, ids=lambda uid: uid.name)
def test_compressed_series_decode_losslessly(tmp_path: Path, syntax):
    if not get_encoder(syntax).is_available:
        pytest.skip(f"no encoder for {syntax.name} here")
    spec = SeriesSpec(stored=ramp_volume(4, 32, 32).astype(np.int16), slope=1.0, intercept=-1024.0)
    paths = write_series(tmp_path / "c", spec, transfer_syntax=syntax)
    assert pydicom.dcmread(paths[0], stop_before_pixels=True).file_meta.TransferSyntaxUID == syntax
    np.testing.assert_array_equal(load_dicom_volume(paths).values, spec.stored - 1024.0)


def test_enhanced_multiframe_with_per_frame_positions_and_rescale(tmp_path: Path):
    spec = SeriesSpec(
        stored=ramp_volume(6, 18, 20), row_dir=OBLIQUE_ROW, col_dir=OBLIQUE_COL, slope=1.5, intercept=-999.0
    )
    order = [4, 1, 5, 0, 3, 2]
    intercepts = [-1000.0, -990.0, -980.0, -970.0, -960.0, -950.0]
    path = write_enhanced_ct(tmp_path / "enh.dcm", spec, order, per_frame_intercepts=intercepts)
    volume = load_dicom_volume([path])
    expected = spec.stored * 1.5 + np.asarray(intercepts)[:, None, None]
    np.testing.assert_allclose(volume.values, expected.astype(np.float32))
    layout = read_layout([path])
    assert layout.is_multiframe and [ref.frame for ref in layout.slices] == [order.index(k) for k in range(6)]
    assert volume.spacing == pytest.approx((0.7, 0.8, 2.5))
    np.testing.assert_allclose(volume.geometry.origin, spec.position(0))


def test_enhanced_multiframe_shared_rescale(tmp_path: Path):
    spec = SeriesSpec(stored=ramp_volume(3, 8, 8), slope=1.0, intercept=-1024.0)
    path = write_enhanced_ct(tmp_path / "enh.dcm", spec, [2, 0, 1])
    np.testing.assert_array_equal(load_dicom_volume([path]).values, spec.stored - 1024.0)


def test_enhanced_object_with_a_single_frame_keeps_its_geometry(tmp_path: Path):
    spec = SeriesSpec(stored=ramp_volume(1, 10, 12), row_dir=OBLIQUE_ROW, col_dir=OBLIQUE_COL, intercept=-1024.0)
    volume = load_dicom_volume([write_enhanced_ct(tmp_path / "one.dcm", spec, [0])])
    np.testing.assert_array_equal(volume.values, spec.stored - 1024.0)
    np.testing.assert_allclose(volume.geometry.origin, spec.origin)
    assert volume.spacing == pytest.approx((0.7, 0.8, 2.5))


def test_raw_dataset_without_preamble_is_read(tmp_path: Path):
    spec = SeriesSpec(stored=ramp_volume(3, 8, 8))
    paths = write_series(tmp_path / "src", spec)
    (tmp_path / "raw").mkdir()
    raw = [write_raw_dataset(tmp_path / "raw" / p.name, p) for p in paths]
    assert all(p.read_bytes()[128:132] != b"DICM" for p in raw)
    np.testing.assert_array_equal(load_dicom_volume(raw).values, spec.stored.astype(np.float32))


@pytest.mark.parametrize(
    "problem, message",
    [
        ("gap", "inconsistent slice spacing"),
        ("orientation", "mixed orientations"),
        ("size", "mixed image sizes"),
        ("duplicate", "share a position"),
        ("tilt", "not stacked along their normal"),
    ],
)
def test_series_that_is_not_one_volume_is_a_clear_error(tmp_path: Path, problem: str, message: str):
    spec = SeriesSpec(stored=ramp_volume(5, 12, 12))
    paths = write_series(tmp_path / "s", spec, shuffle_seed=None)
    victim = pydicom.dcmread(paths[3])
    if problem == "gap":
        paths[2].unlink()
        paths = [p for p in paths if p.exists()]
    elif problem == "orientation":
        victim.ImageOrientationPatient = [1, 0, 0, 0, 0, -1]
    elif problem == "size":
        victim.Rows, victim.Columns = 6, 12
        victim.PixelData = np.zeros((6, 12), np.int16).tobytes()
    elif problem == "duplicate":
        victim.ImagePositionPatient = pydicom.dcmread(paths[2]).ImagePositionPatient
    elif problem == "tilt":
        for index, path in enumerate(paths):
            ds = pydicom.dcmread(path)
            ds.ImagePositionPatient = [float(v) for v in spec.position(index) + np.array([0.0, 0.4 * index, 0.0])]
            ds.save_as(path)
    if problem in ("orientation", "size", "duplicate"):
        victim.save_as(paths[3])
    with pytest.raises(StudyError, match=message):
        load_dicom_volume(paths)


def test_truncated_pixel_data_is_a_study_error(tmp_path: Path):
    spec = SeriesSpec(stored=ramp_volume(3, 16, 16))
    paths = write_series(tmp_path / "t", spec)
    paths[1].write_bytes(paths[1].read_bytes()[:-100])
    with pytest.raises(StudyError, match="cannot decode pixel data"):
        load_dicom_volume(paths)


# ---------------------------------------------------------------- intensity and modality


def test_ct_window_default_and_override(tmp_path: Path):
    hu = np.array([[[-1000, -160, 40, 240, 1000]]], np.int16)
    spec = SeriesSpec(stored=np.repeat(hu, 3, axis=0) + 1024, intercept=-1024.0)
    volume = load_dicom_volume(write_series(tmp_path / "ct", spec))
    image = prepare_image(volume, "CT", None)
    assert image.dtype == np.uint8 and image[0, 0].tolist() == [0, 0, 127, 255, 255]
    wide = prepare_image(volume, "CT", intensity.Window(level=0, width=2000))
    assert wide[0, 0].tolist() == [0, 107, 132, 158, 255]


def test_percentile_scaling_keeps_zeros_and_spans_0_255():
    rng = np.random.default_rng(1)
    values = rng.uniform(100, 1100, size=(4, 50, 50)).astype(np.float32)
    values[:, :10] = 0
    scaled = intensity.scale_percentiles(values)
    assert (scaled[:, :10] == 0).all()
    lower, upper = np.percentile(values[values != 0], [0.5, 99.5])
    inside = values[:, 10:]
    assert (scaled[:, 10:][inside >= upper] == 255).all() and (scaled[:, 10:][inside <= lower] == 0).all()
    middle = (inside > lower) & (inside < upper)
    expected = ((inside[middle] - lower) / (upper - lower) * 255).astype(np.uint8)
    np.testing.assert_array_equal(scaled[:, 10:][middle], expected)


def test_mr_series_study_uses_percentiles(tmp_path: Path):
    stored = ramp_volume(4, 20, 20)
    stored[:, :, :5] = 0
    spec = SeriesSpec(stored=stored, modality="MR")
    folder = tmp_path / "mr"
    write_series(folder, spec)
    prompts(folder, [{"voxel": [6, 2, 0, 15, 12, 3]}])
    study = load_study(find_studies(tmp_path)[0])
    assert study.modality == "MR" and study.image.shape == (4, 20, 20) and study.is_3d
    np.testing.assert_array_equal(study.image, intensity.scale_percentiles(stored.astype(np.float32)))
    assert (study.image[:, :, :5] == 0).all() and study.image.max() == 255


@pytest.mark.parametrize(
    "tag, routed",
    [
        ("CT", "CT"),
        ("MR", "MR"),
        ("PT", "PET"),
        ("US", "US"),
        ("CR", "X-Ray"),
        ("DX", "X-Ray"),
        ("MG", "Mammography"),
        ("OP", "Fundus"),
        ("ES", "Endoscopy"),
        ("SM", "Microscope"),
        ("XC", "Dermoscopy"),
        ("OCT", "OCT"),
        ("OPT", "OCT"),
    ],
)
def test_modality_mapping(tag: str, routed: str):
    assert modality.from_dicom_tag(tag) == routed


def test_unmapped_modality_asks_for_an_override():
    with pytest.raises(StudyError, match='set "modality"'):
        modality.from_dicom_tag("OT")
    assert modality.normalise("x-ray") == "X-Ray" and modality.normalise("PT") == "PET"
    with pytest.raises(StudyError, match="unknown modality"):
        modality.normalise("ultrasonic")


def test_pet_series_and_modality_override(tmp_path: Path):
    spec = SeriesSpec(stored=ramp_volume(3, 12, 12), modality="PT", slope=0.5)
    folder = tmp_path / "pet"
    write_series(folder, spec)
    prompts(folder, [{"voxel": [1, 1, 0, 8, 8, 2]}])
    assert load_study(find_studies(tmp_path)[0]).modality == "PET"
    prompts(folder, [{"voxel": [1, 1, 0, 8, 8, 2]}], modality="mr")
    assert load_study(find_studies(tmp_path)[0]).modality == "MR"


# ---------------------------------------------------------------- 2D images


def test_16bit_radiograph_becomes_grey_rgb(tmp_path: Path):
    stored = (np.arange(40 * 30).reshape(40, 30) * 3 + 200).astype(np.uint16)
    write_xray(tmp_path / "dx.dcm", stored)
    prompts(tmp_path, [{"label": "lung", "voxel": [2, 3, 20, 30]}])
    study = load_study(find_studies(tmp_path)[0])
    assert study.modality == "X-Ray" and study.image.shape == (40, 30, 3) and not study.is_3d
    assert (study.image[..., 0] == study.image[..., 2]).all()
    np.testing.assert_array_equal(study.image[..., 0], intensity.scale_percentiles(stored[None].astype(float))[0])
    assert study.boxes.tolist() == [[2, 3, 20, 30]] and study.spacing == (0.15, 0.15)


def test_monochrome1_is_inverted(tmp_path: Path):
    stored = np.tile(np.arange(32, dtype=np.uint16) * 100 + 100, (16, 1))
    normal = load_dicom_volume([write_xray(tmp_path / "m2.dcm", stored)]).values[0]
    inverted = load_dicom_volume([write_xray(tmp_path / "m1.dcm", stored, photometric="MONOCHROME1")]).values[0]
    np.testing.assert_array_equal(inverted, normal[:, ::-1])


def test_colour_photo_is_kept_rgb(tmp_path: Path):
    rgb = np.zeros((24, 32, 3), np.uint8)
    rgb[..., 0], rgb[..., 1], rgb[..., 2] = 200, np.arange(32, dtype=np.uint8)[None, :] * 7, 30
    write_colour_photo(tmp_path / "skin.dcm", rgb)
    prompts(tmp_path, [{"voxel": [1, 1, 20, 20]}])
    study = load_study(find_studies(tmp_path)[0])
    assert study.modality == "Dermoscopy"
    np.testing.assert_array_equal(study.image, rgb)


def test_jpeg_baseline_ycbcr_photo_decodes_to_rgb(tmp_path: Path):
    rgb = np.zeros((32, 48, 3), np.uint8)
    rgb[..., 0] = np.linspace(20, 230, 48).astype(np.uint8)[None, :]
    rgb[..., 1], rgb[..., 2] = 120, np.linspace(200, 40, 32).astype(np.uint8)[:, None]
    write_jpeg_photo(tmp_path / "endo.dcm", rgb, modality="ES")
    prompts(tmp_path, [{"voxel": [1, 1, 30, 30]}])
    study = load_study(find_studies(tmp_path)[0])
    assert study.modality == "Endoscopy" and study.image.shape == (32, 48, 3)
    assert np.abs(study.image.astype(int) - rgb).mean() < 3  # lossy JPEG, but RGB (not YCbCr) channels


# ---------------------------------------------------------------- sidecar boxes


def test_mm_boxes_on_oblique_reversed_geometry(tmp_path: Path):
    spec = SeriesSpec(
        stored=ramp_volume(9, 30, 34), row_dir=OBLIQUE_ROW, col_dir=OBLIQUE_COL, step=-2.0, pixel_spacing=(0.9, 0.6)
    )
    folder = tmp_path / "obl"
    write_series(folder, spec)
    # volume slice z holds stored slice 8 - z (reversed); a box over volume x 3..20, y 4..25, z 2..6
    lo, hi = world_of(spec, 3, 4, 8 - 2), world_of(spec, 20, 25, 8 - 6)
    mixed_corner_a = world_of(spec, 20, 4, 8 - 6)
    mixed_corner_b = world_of(spec, 3, 25, 8 - 2)
    prompts(
        folder,
        [
            {"label": "liver", "mm": [hi.tolist(), lo.tolist()]},
            {"label": "spleen", "mm": [mixed_corner_a.tolist(), mixed_corner_b.tolist()]},
            {"label": "voxel", "voxel": [3, 4, 2, 20, 25, 6]},
        ],
    )
    study = load_study(find_studies(tmp_path)[0])
    assert study.boxes.tolist() == [[3, 4, 2, 20, 25, 6]] * 3
    # a corner off a voxel centre by less than half a voxel rounds to it
    nudged = world_of(spec, 3.4, 4.45, 8 - 2 + 0.3)
    prompts(folder, [{"mm": [nudged.tolist(), hi.tolist()]}])
    assert load_study(find_studies(tmp_path)[0]).boxes.tolist() == [[3, 4, 2, 20, 25, 6]]


@pytest.mark.parametrize(
    "box, message",
    [
        ({"label": "lesion", "voxel": [3, 4, 2, 40, 25, 6]}, r"box #2 \(lesion\) .* outside the image"),
        ({"label": "lesion", "voxel": [20, 4, 2, 3, 25, 6]}, r"box #2 \(lesion\) .* inverted or has no area"),
        ({"label": "lesion", "voxel": [3, 4, 2, 3, 25, 6]}, r"box #2 \(lesion\) .* inverted or has no area"),
        ({"label": "lesion", "voxel": [3, 4, 6, 20, 25, 2]}, r"box #2 \(lesion\) .* inverted along z"),
        ({"label": "lesion", "voxel": [3, 4, 20, 25]}, r"box #2 \(lesion\): a 3D volume needs"),
        ({"label": "lesion", "voxel": [3.5, 4, 2, 20, 25, 6]}, "must be integers"),
        ({"label": "lesion", "mm": [[0, 0, 0]]}, "two opposite corners"),
        ({"label": "lesion", "mm": [[0, 0, 500], [10, 10, 510]]}, r"box #2 \(lesion\) .* outside the image"),
        ({"label": "lesion", "voxel": [3, 4, 2, 20, 25, 6], "colour": "red"}, "box #2 must be an object"),
        ({"voxel": [1, 1, 1, 2, 2, 2], "mm": [[0, 0, 0], [1, 1, 1]]}, "exactly one of"),
    ],
)
def test_invalid_boxes_are_named(tmp_path: Path, box: dict, message: str):
    spec = SeriesSpec(stored=ramp_volume(8, 30, 34))
    folder = tmp_path / "s"
    write_series(folder, spec)
    prompts(folder, [{"voxel": [1, 1, 1, 5, 5, 5]}, box])
    with pytest.raises(StudyError, match=message):
        load_study(find_studies(tmp_path)[0])


@pytest.mark.parametrize(
    "document, message",
    [
        (None, "no box prompts: write .*prompts.json"),
        ("{not json", "not valid JSON"),
        ({"boxes": []}, "non-empty list"),
        ({"boxes": [{"voxel": [1, 1, 1, 5, 5, 5]}], "windw": {}}, r"unknown key\(s\) \['windw'\]"),
        ({"boxes": [{"voxel": [1, 1, 1, 5, 5, 5]}], "window": {"level": 40, "width": 0}}, "width must be a positive"),
        ({"boxes": [{"voxel": [1, 1, 1, 5, 5, 5]}], "modality": "sonar"}, "unknown modality"),
    ],
)
def test_bad_sidecars_are_clear_errors(tmp_path: Path, document, message: str):
    folder = tmp_path / "s"
    write_series(folder, SeriesSpec(stored=ramp_volume(8, 30, 34)))
    if document is not None:
        (folder / "prompts.json").write_text(document if isinstance(document, str) else json.dumps(document))
    with pytest.raises(StudyError, match=message):
        load_study(find_studies(tmp_path)[0])


def test_mm_box_needs_geometry(tmp_path: Path):
    write_xray(tmp_path / "dx.dcm", np.ones((20, 20), np.uint16))
    prompts(tmp_path, [{"mm": [[0, 0, 0], [5, 5, 0]]}])
    with pytest.raises(StudyError, match="no patient geometry"):
        load_study(find_studies(tmp_path)[0])


# ---------------------------------------------------------------- DICOM SEG out


def label_volume(shape: tuple[int, int, int]) -> np.ndarray:
    labels = np.zeros(shape, np.uint16)
    labels[1:4, 2:9, 3:12] = 1
    labels[3:6, 10:15, 5:9] = 3  # box 2 (label 2) stays empty: a segment without frames
    return labels


def write_outcome(tmp_path: Path, labels: np.ndarray, study_name: str | None = None):
    source = find_studies(tmp_path / "in")[0]
    outcome = StudyOutcome(name=source.name, modality="CT", labels=labels, metrics={"provenance": dict(PROVENANCE)})
    OutputWriter(tmp_path / "out").write(source, outcome)
    assert outcome.ok, outcome.error
    return source, output_path(tmp_path / "out", source)


def test_seg_round_trip_single_frame_series(tmp_path: Path):
    spec = SeriesSpec(stored=ramp_volume(7, 16, 18), row_dir=OBLIQUE_ROW, col_dir=OBLIQUE_COL, step=-2.5)
    folder = tmp_path / "in" / "ct"
    write_series(folder, spec)
    prompts(
        folder,
        [
            {"label": "liver", "voxel": [3, 2, 1, 11, 8, 3]},
            {"voxel": [0, 0, 0, 4, 4, 1]},
            {"label": "kidney", "voxel": [5, 10, 3, 8, 14, 5]},
        ],
    )
    labels = label_volume((7, 16, 18))
    source, path = write_outcome(tmp_path, labels)
    assert path.name == "ct.seg.dcm"

    seg = hd.seg.segread(path)
    assert seg.SegmentationType == "BINARY" and seg.Modality == "SEG"
    assert [s.SegmentLabel for s in seg.SegmentSequence] == ["liver", "box 2", "kidney"]
    algorithm = seg.SegmentSequence[0].SegmentationAlgorithmIdentificationSequence[0]
    assert algorithm.AlgorithmName == "litemedsam-fleet" and algorithm.AlgorithmVersion == "0.1.0"
    assert SHA in str(algorithm.AlgorithmParameters)
    source_headers = {
        pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID: pydicom.dcmread(p, stop_before_pixels=True)
        for p in source.files
    }
    first = next(iter(source_headers.values()))
    assert seg.FrameOfReferenceUID == first.FrameOfReferenceUID
    assert seg.StudyInstanceUID == first.StudyInstanceUID
    referenced = {item.ReferencedSOPInstanceUID for item in seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence}
    assert referenced == set(source_headers)

    # every frame: its source slice (by ReferencedSOPInstanceUID) and position match, and the mask is the labels'
    layout = read_layout(source.files)
    z_of_uid = {uid: z for z, uid in enumerate(layout.slice_uids)}
    raw = pydicom.dcmread(path)
    frames = raw.pixel_array.reshape(-1, 16, 18)
    for index, item in enumerate(raw.PerFrameFunctionalGroupsSequence):
        uid = item.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        segment = int(item.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
        z = z_of_uid[uid]
        position = item.PlanePositionSequence[0].ImagePositionPatient
        np.testing.assert_allclose(
            [float(v) for v in position], [float(v) for v in source_headers[uid].ImagePositionPatient]
        )
        np.testing.assert_array_equal(frames[index].astype(bool), labels[z] == segment)
    assert {
        int(i.SegmentIdentificationSequence[0].ReferencedSegmentNumber) for i in raw.PerFrameFunctionalGroupsSequence
    } == {1, 3}

    decoded = seg.get_pixels_by_source_instance(list(layout.slice_uids), combine_segments=True)
    np.testing.assert_array_equal(decoded, labels)


def test_seg_round_trip_multiframe_source(tmp_path: Path):
    spec = SeriesSpec(stored=ramp_volume(7, 16, 18))
    (tmp_path / "in" / "enh").mkdir(parents=True)
    order = [6, 2, 0, 5, 1, 4, 3]
    path = write_enhanced_ct(tmp_path / "in" / "enh" / "enh.dcm", spec, order)
    prompts(
        path.parent, [{"voxel": [3, 2, 1, 11, 8, 3]}, {"voxel": [0, 0, 0, 4, 4, 1]}, {"voxel": [5, 10, 3, 8, 14, 5]}]
    )
    labels = label_volume((7, 16, 18))
    _, seg_path = write_outcome(tmp_path, labels)
    seg = hd.seg.segread(seg_path)
    source_uid = pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID
    frame_numbers = [order.index(z) + 1 for z in range(7)]  # 1-based source frame holding volume slice z
    decoded = seg.get_pixels_by_source_frame(source_uid, frame_numbers, combine_segments=True)
    np.testing.assert_array_equal(decoded, labels)


def test_seg_for_a_2d_radiograph(tmp_path: Path):
    (tmp_path / "in").mkdir()
    write_xray(tmp_path / "in" / "dx.dcm", np.arange(600, dtype=np.uint16).reshape(30, 20))
    prompts(tmp_path / "in", [{"voxel": [1, 1, 10, 10]}, {"voxel": [5, 5, 15, 25]}])
    labels = np.zeros((30, 20), np.uint16)
    labels[2:9, 2:9], labels[12:20, 6:14] = 1, 2
    source, path = write_outcome(tmp_path, labels)
    seg = hd.seg.segread(path)
    uid = pydicom.dcmread(source.files[0], stop_before_pixels=True).SOPInstanceUID
    np.testing.assert_array_equal(seg.get_pixels_by_source_instance([uid], combine_segments=True)[0], labels)


def test_seg_uids_are_stable_across_rewrites(tmp_path: Path):
    write_series(tmp_path / "in" / "ct", SeriesSpec(stored=ramp_volume(7, 16, 18)))
    prompts(
        tmp_path / "in" / "ct",
        [{"voxel": [3, 2, 1, 11, 8, 3]}, {"voxel": [0, 0, 0, 4, 4, 1]}, {"voxel": [5, 10, 3, 8, 14, 5]}],
    )
    labels = label_volume((7, 16, 18))
    _, path = write_outcome(tmp_path, labels)
    first = pydicom.dcmread(path, stop_before_pixels=True)
    _, path = write_outcome(tmp_path, labels)
    second = pydicom.dcmread(path, stop_before_pixels=True)
    assert (first.SOPInstanceUID, first.SeriesInstanceUID) == (second.SOPInstanceUID, second.SeriesInstanceUID)
    labels[0, 0, 0] = 1
    _, path = write_outcome(tmp_path, labels)
    assert pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID != first.SOPInstanceUID


def test_seg_labels_beyond_the_boxes_are_an_error_not_a_crash(tmp_path: Path):
    write_series(tmp_path / "in" / "ct", SeriesSpec(stored=ramp_volume(3, 8, 8)))
    prompts(tmp_path / "in" / "ct", [{"voxel": [1, 1, 0, 5, 5, 2]}])
    source = find_studies(tmp_path / "in")[0]
    labels = np.zeros((3, 8, 8), np.uint16)
    labels[1, 2, 2] = 2
    outcome = StudyOutcome(name=source.name, labels=labels, metrics={"provenance": PROVENANCE})
    writer = OutputWriter(tmp_path / "out")
    writer.write(source, outcome)
    assert not outcome.ok and "labels go up to 2 but the study has 1 boxes" in outcome.error
    record = json.loads(writer.metrics_path.read_text().splitlines()[-1])
    assert record["status"] == "error"
