"""What a segment is and how it looks: display colours and, for labels that name a known structure, SNOMED CT codes.

Every picture and object the project makes paints label k in the same colour: the overlays, the gateway's
thumbnails, the DICOM SEG (RecommendedDisplayCIELabValue) and the RTSTRUCT (ROIDisplayColor).
- A label whose name names a known structure (a small table of abdominal, thoracic and neuro structures and of
  lesions, with the names the public data sets use: "liver", "Kidney_L", "postcava", "liver tumour", ...) gets
  that structure's SNOMED CT category and type and a conventional colour (close to 3D Slicer's anatomy colours).
  A lesion word wins over an organ word: "liver tumour" is a neoplasm, not the liver.
- Any other label ("box 1", "target") is SNOMED "Tissue" / "Tissue" (a box says nothing about anatomy) in the
  palette colour of its label number.
- A colour chosen for a label (an interactive session's, `colour`) wins over both; its meaning stays the table's.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

import numpy as np
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

PALETTE: tuple[tuple[int, int, int], ...] = (
    (230, 25, 75),
    (60, 180, 75),
    (255, 225, 25),
    (0, 130, 200),
    (245, 130, 48),
    (145, 30, 180),
    (70, 240, 240),
    (240, 50, 230),
    (210, 245, 60),
    (250, 190, 212),
    (0, 128, 128),
    (220, 190, 255),
    (170, 110, 40),
    (255, 250, 200),
    (128, 0, 0),
    (170, 255, 195),
    (128, 128, 0),
    (255, 215, 180),
    (0, 0, 128),
)

ANATOMICAL_STRUCTURE = codes.SCT.AnatomicalStructure
# pydicom's code dictionary has no entry for this CID 7150 concept; the code is SNOMED CT's.
MORPHOLOGICALLY_ABNORMAL = Code("49755003", "SCT", "Morphologically Abnormal Structure")
TISSUE = codes.SCT.Tissue


@dataclass(frozen=True)
class Structure:
    """A segment's meaning: what a SEG says it is (category, type) and the colour it is drawn in."""

    category: Code
    type: Code
    rgb: tuple[int, int, int]


@dataclass(frozen=True)
class KnownStructure:
    words: tuple[str, ...]  # names as they appear in labels (lower case, words separated by single spaces)
    structure: Structure


def _organ(code: Code, rgb: tuple[int, int, int], *words: str) -> KnownStructure:
    return KnownStructure(words, Structure(ANATOMICAL_STRUCTURE, code, rgb))


# Lesions first: a label naming both ("liver tumour") is the lesion.
LESIONS = (
    KnownStructure(
        ("tumour", "tumor", "neoplasm", "cancer", "carcinoma", "metastasis", "metastases"),
        Structure(MORPHOLOGICALLY_ABNORMAL, codes.SCT.Neoplasm, (144, 238, 144)),
    ),
    KnownStructure(("lesion", "lesions"), Structure(MORPHOLOGICALLY_ABNORMAL, codes.SCT.Lesion, (255, 140, 0))),
    KnownStructure(("mass",), Structure(MORPHOLOGICALLY_ABNORMAL, codes.SCT.Mass, (255, 99, 71))),
    KnownStructure(("cyst", "cysts"), Structure(MORPHOLOGICALLY_ABNORMAL, codes.SCT.Cyst, (205, 205, 100))),
)
ORGANS = (
    _organ(codes.SCT.Liver, (221, 130, 101), "liver"),
    _organ(codes.SCT.Spleen, (157, 108, 162), "spleen"),
    _organ(codes.SCT.Kidney, (185, 102, 83), "kidney", "kidneys"),
    _organ(codes.SCT.Pancreas, (249, 180, 111), "pancreas"),
    _organ(codes.SCT.Gallbladder, (139, 150, 98), "gallbladder", "gall bladder"),
    _organ(codes.SCT.Stomach, (216, 132, 105), "stomach"),
    _organ(codes.SCT.Esophagus, (211, 171, 143), "esophagus", "oesophagus"),
    _organ(codes.SCT.Duodenum, (255, 253, 229), "duodenum"),
    _organ(codes.SCT.AdrenalGland, (244, 214, 49), "adrenal", "adrenal gland", "adrenal glands"),
    _organ(codes.SCT.Aorta, (224, 97, 76), "aorta"),
    _organ(codes.SCT.InferiorVenaCava, (0, 151, 206), "inferior vena cava", "ivc", "postcava", "vena cava"),
    _organ(codes.SCT.PortalVein, (0, 108, 184), "portal vein", "portal vein and splenic vein"),
    _organ(codes.SCT.Bladder, (222, 154, 132), "bladder", "urinary bladder"),
    _organ(codes.SCT.Prostate, (230, 158, 140), "prostate"),
    _organ(codes.SCT.Colon, (204, 168, 143), "colon"),
    _organ(codes.SCT.SmallIntestine, (205, 167, 142), "small intestine", "small bowel", "bowel"),
    _organ(codes.SCT.Rectum, (218, 166, 142), "rectum"),
    _organ(codes.SCT.Uterus, (244, 204, 186), "uterus"),
    _organ(codes.SCT.Lung, (197, 165, 145), "lung", "lungs"),
    _organ(codes.SCT.Heart, (206, 110, 84), "heart"),
    _organ(codes.SCT.Trachea, (182, 228, 255), "trachea"),
    _organ(codes.SCT.Thyroid, (220, 245, 20), "thyroid", "thyroid gland"),
    _organ(codes.SCT.Brain, (250, 250, 225), "brain"),
    _organ(codes.SCT.Vertebra, (241, 214, 145), "vertebra", "vertebrae", "spine"),
    _organ(codes.SCT.Femur, (255, 238, 170), "femur"),
    _organ(codes.SCT.Bone, (241, 214, 145), "bone", "bones"),
    _organ(codes.SCT.Muscle, (192, 104, 88), "muscle"),
)
KNOWN = LESIONS + ORGANS


def _normalised(label: str) -> str:
    """'Kidney_L', 'kidney-left', 'Gall Bladder 2' -> 'kidney l', 'kidney left', 'gall bladder 2'."""
    return " ".join(re.split(r"[^a-z0-9]+", label.lower())).strip()


def known_structure(label: str) -> Structure | None:
    """The table's entry whose name occurs in the label as whole words (lesions before organs), else None."""
    text = f" {_normalised(label)} "
    for known in KNOWN:
        if any(f" {word} " in text for word in known.words):
            return known.structure
    return None


def palette_colour(number: int) -> tuple[int, int, int]:
    """The palette colour of label number `number` (>= 1); the palette repeats past its end."""
    return PALETTE[(int(number) - 1) % len(PALETTE)]


Colour = tuple[int, int, int]


def segment_structure(number: int, label: str, colour: Colour | None = None) -> Structure:
    """What segment `number` (>= 1) named `label` is, and its colour: `colour` if one was chosen, else a known
    structure's, else Tissue in the palette colour of its number."""
    structure = known_structure(label) or Structure(TISSUE, TISSUE, palette_colour(number))
    return replace(structure, rgb=check_colour(colour)) if colour is not None else structure


def check_colour(colour) -> Colour:
    """An (r, g, b) of three integers 0..255 (a ValueError saying so otherwise)."""
    values = tuple(colour)
    if len(values) != 3 or not all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 255 for v in values):
        raise ValueError(f"a colour is three integers 0 to 255 (red, green, blue), not {list(values)!r}")
    return (values[0], values[1], values[2])


def chosen_colour(colours, number: int) -> Colour | None:
    """The colour chosen for label `number` in a per-label tuple of chosen colours (None where none was)."""
    return colours[number - 1] if number <= len(colours) else None


def label_colours(count: int, labels: tuple[str, ...] | list[str] = ()) -> np.ndarray:
    """uint8 (count + 1, 3): row k is the colour of label k (row 0 black), by name where `labels` names it."""
    rows = [(0, 0, 0)]
    for number in range(1, count + 1):
        name = labels[number - 1] if number <= len(labels) else ""
        rows.append(segment_structure(number, name).rgb)
    return np.array(rows, dtype=np.uint8)
