"""The bad-input corpus: one folder of studies that are each wrong in one way, beside two good ones.

`write_corpus(folder)` returns {study name: a fragment its error must contain} (None for the good ones).
Used by the embedded run (tests/test_bad_inputs.py) and by real fleet workers (tests/test_faults.py).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pydicom

from dicom_factory import SeriesSpec, ramp_volume, write_series
from worker.contract.study import Study

RNG = np.random.default_rng(2024)
GOOD_2D = "2DBox_CT_good"
GOOD_3D = "3DBox_MR_good"


def _npz(folder: Path, name: str, **arrays) -> Path:
    path = folder / f"{name}.npz"
    np.savez_compressed(path, **arrays)
    return path


def _image_2d() -> np.ndarray:
    return RNG.integers(0, 255, (64, 80, 3), dtype=np.uint8)


def _npz_corpus(folder: Path) -> dict[str, str | None]:
    image, box = _image_2d(), np.array([[10, 10, 40, 50]])
    volume = RNG.integers(0, 255, (6, 32, 32), dtype=np.uint8)
    _npz(folder, GOOD_2D, imgs=image, boxes=box)
    _npz(folder, GOOD_3D, imgs=volume, boxes=np.array([[4, 4, 1, 20, 20, 4]]))
    (folder / "2DBox_CT_truncated.npz").write_bytes((folder / f"{GOOD_2D}.npz").read_bytes()[:200])
    (folder / "2DBox_CT_notazip.npz").write_bytes(b"PK\x03\x04 this is not a zip archive at all")
    _npz(folder, "2DBox_CT_pickled", imgs=np.array([{"a": 1}], dtype=object), boxes=box)
    _npz(folder, "2DBox_CT_nokeys", image=image, box=box)
    _npz(folder, "2DBox_CT_floatimage", imgs=image.astype(np.float32), boxes=box)
    _npz(folder, "2DBox_CT_textboxes", imgs=image, boxes=np.array([["a", "b", "c", "d"]]))
    _npz(folder, "2DBox_CT_nanbox", imgs=image, boxes=np.array([[10.0, np.nan, 40.0, 50.0]]))
    _npz(folder, "2DBox_CT_infbox", imgs=image, boxes=np.array([[10.0, 10.0, np.inf, 50.0]]))
    _npz(folder, "2DBox_CT_emptyimage", imgs=np.zeros((0, 80, 3), np.uint8), boxes=box)
    _npz(folder, "2DBox_CT_noboxes", imgs=image, boxes=np.zeros((0, 4)))
    _npz(folder, "2DBox_CT_outside", imgs=image, boxes=np.array([[10, 10, 400, 50]]))
    _npz(folder, "2DBox_CT_inverted", imgs=image, boxes=np.array([[40, 10, 10, 50]]))
    _npz(folder, "2DBox_CT_zeroarea", imgs=image, boxes=np.array([[10, 10, 10, 50]]))
    _npz(folder, "2DBox_CT_toomanyboxes", imgs=image, boxes=np.tile(box, (65536, 1)))
    _npz(folder, "2DBox_CT_2dboxon3d", imgs=volume, boxes=box)
    _npz(folder, "3DBox_CT_huge", imgs=np.zeros((40, 512, 512), np.uint8), boxes=np.array([[1, 1, 1, 5, 5, 5]]))
    return {
        GOOD_2D: None,
        GOOD_3D: None,
        "2DBox_CT_truncated": "corrupt or truncated",
        "2DBox_CT_notazip": "corrupt or truncated",
        "2DBox_CT_pickled": "unreadable",
        "2DBox_CT_nokeys": "lacks key(s) ['boxes', 'imgs']",
        "2DBox_CT_floatimage": "uint8",
        "2DBox_CT_textboxes": "numeric",
        "2DBox_CT_nanbox": "NaN or infinity",
        "2DBox_CT_infbox": "NaN or infinity",
        "2DBox_CT_emptyimage": "empty",
        "2DBox_CT_noboxes": "no boxes",
        "2DBox_CT_outside": "outside the image",
        "2DBox_CT_inverted": "[40, 10, 10, 50] is inverted",
        "2DBox_CT_zeroarea": "[10, 10, 10, 50] is inverted or has zero area",
        "2DBox_CT_toomanyboxes": "more than the 65535 labels",
        "2DBox_CT_2dboxon3d": "2D prompts given for a volume",
        "3DBox_CT_huge": "above the limit",
    }


HUGE_LIMIT = 40 * 512 * 512 - 1  # LITEMEDSAM_MAX_VOXELS for the corpus run: 3DBox_CT_huge is one voxel over


def _dicom_corpus(folder: Path) -> dict[str, str | None]:
    cases = {"nopixels": "no 'Pixel Data'", "mixedsizes": "mixed image sizes", "gap": "inconsistent slice spacing"}
    for case in cases:
        series = folder / f"dicom_{case}"
        paths = write_series(series, SeriesSpec(stored=ramp_volume(5, 12, 12)), shuffle_seed=None)
        if case == "nopixels":
            ds = pydicom.dcmread(paths[2])
            del ds.PixelData
            ds.save_as(paths[2])
        elif case == "mixedsizes":
            ds = pydicom.dcmread(paths[3])
            ds.Rows, ds.Columns = 6, 12
            ds.PixelData = np.zeros((6, 12), np.int16).tobytes()
            ds.save_as(paths[3])
        else:
            paths[2].unlink()
        (series / "prompts.json").write_text(json.dumps({"boxes": [{"voxel": [1, 1, 0, 8, 8, 3]}]}))
    return {f"dicom_{case}": fragment for case, fragment in cases.items()}


ODD_SPEC = {  # how each odd-but-valid series is written (tests/test_dicom_anonymised.py checks what is read back)
    "dicom_signed": {"stored_offset": -1000},  # signed 16-bit with negative stored values
    "dicom_monochrome1": {"modality": "MR"},
    "dicom_nonsquare": {"pixel_spacing": (0.9, 0.5)},
    "dicom_mixedsyntax": {},  # every other file RLE Lossless, the rest native
    "dicom_duplicate": {},  # one instance stored twice under another file name
    "dicom_split": {},  # one series across two folders, prompts.json in their common folder
}


def odd_series_spec(name: str) -> SeriesSpec:
    options = dict(ODD_SPEC[name])
    offset = options.pop("stored_offset", 0)
    return SeriesSpec(stored=(ramp_volume(5, 12, 12, seed=3) + offset).astype(np.int16), **options)


def _odd_dicom_corpus(folder: Path) -> dict[str, str | None]:
    """Real-world oddities: each either segmented correctly (None) or refused with a specific reason."""
    from pydicom.uid import RLELossless

    box = json.dumps({"boxes": [{"voxel": [1, 1, 0, 8, 8, 3]}]})
    for name in ODD_SPEC:
        series = folder / name
        paths = write_series(series, odd_series_spec(name), shuffle_seed=None)
        for index, path in enumerate(paths):
            ds = pydicom.dcmread(path)
            if name == "dicom_monochrome1":
                ds.PhotometricInterpretation = "MONOCHROME1"
            elif name == "dicom_mixedsyntax" and index % 2:
                ds.compress(RLELossless)
            else:
                continue
            ds.save_as(path)
        if name == "dicom_duplicate":
            (series / "copy_of_IM0002").write_bytes(paths[2].read_bytes())
        if name == "dicom_split":
            for part, members in (("a", paths[:3]), ("b", paths[3:])):
                (series / part).mkdir()
                for path in members:
                    path.rename(series / part / path.name)
        (series / "prompts.json").write_text(box)
    lost = folder / "dicom_lostposition"
    paths = write_series(lost, SeriesSpec(stored=ramp_volume(5, 12, 12)), shuffle_seed=None)
    ds = pydicom.dcmread(paths[2])
    del ds.ImagePositionPatient
    ds.save_as(paths[2])
    (lost / "prompts.json").write_text(box)
    return {**{name: None for name in ODD_SPEC}, "dicom_lostposition": "IM0002: no ImagePositionPatient"}


def _nifti_corpus(folder: Path) -> dict[str, str | None]:
    (folder / "broken.nii.gz").write_bytes(b"\x1f\x8b\x08\x00 not really gzip, and no NIfTI header")
    prompts = {"modality": "MR", "boxes": [{"voxel": [1, 1, 0, 4, 4, 2]}]}
    (folder / "broken.prompts.json").write_text(json.dumps(prompts))
    return {"broken": "unreadable NIfTI"}


def write_corpus(folder: Path) -> dict[str, str | None]:
    folder.mkdir(parents=True, exist_ok=True)
    return {**_npz_corpus(folder), **_dicom_corpus(folder), **_odd_dicom_corpus(folder), **_nifti_corpus(folder)}


def expected_outputs(expected: dict[str, str | None]) -> set[str]:
    """The files a run of the corpus writes besides metrics.jsonl: one mask per good study."""
    return {
        f"{name}.seg.dcm" if name.startswith("dicom_") else f"{name}.npz"
        for name, fragment in expected.items()
        if fragment is None
    }


def bad_studies_in_memory() -> dict[str, tuple[Study, str | None]]:
    """Studies a buggy or hostile producer could send straight to the workers, skipping its own checks:
    {name: (study, a fragment of the worker's error, None for the good one)}."""
    image, box = _image_2d(), np.array([[10, 10, 40, 50]])
    volume = RNG.integers(0, 255, (6, 32, 32), dtype=np.uint8)
    cases = {
        "good": (Study("good", "CT", image, box), None),
        "floatimage": (Study("floatimage", "CT", image.astype(np.float32), box), "expected uint8"),
        "nanbox": (Study("nanbox", "CT", image, np.array([[10.0, np.nan, 40.0, 50.0]])), "NaN or infinity"),
        "outside": (Study("outside", "CT", image, np.array([[10, 10, 400, 50]])), "outside the image"),
        "inverted": (Study("inverted", "CT", image, np.array([[40, 10, 10, 50]])), "inverted"),
        "toomany": (Study("toomany", "CT", image, np.tile(box, (65536, 1))), "more than the 65535 labels"),
        "2dboxon3d": (Study("2dboxon3d", "MR", volume, box), "2D prompts given for a volume"),
        "emptyimage": (Study("emptyimage", "CT", np.zeros((0, 80, 3), np.uint8), box), "empty"),
        # a box array of the wrong shape is no Study at all (Prompts.from_boxes refuses it where it is built); a
        # task message carrying one is judged by the worker: tests/test_fleet_units.py
        "fourdims": (
            Study("fourdims", "CT", np.zeros((2, 6, 32, 32), np.uint8), np.array([[1, 1, 0, 9, 9, 1]])),
            "image has 4 dimensions",
        ),
    }
    return cases
