"""DICOM Modality tag -> the routing table's modality names (worker/routing.toml).

| DICOM Modality | routing modality |
| --- | --- |
| CT | CT |
| MR | MR |
| PT | PET |
| US | US |
| CR, DX, IO, PX | X-Ray |
| MG | Mammography |
| OP | Fundus |
| ES | Endoscopy |
| SM | Microscope |
| XC | Dermoscopy |
| OCT, OPT | OCT |

Any other tag (OT, XA, NM, ...) has no route: the study fails with a message asking for a "modality" override in
its prompts sidecar. Overrides accept a routing name (any case) or one of the DICOM tags above.
"""

from __future__ import annotations

from worker.contract.study import StudyError

ROUTING_MODALITIES = (
    "CT",
    "MR",
    "PET",
    "US",
    "X-Ray",
    "Dermoscopy",
    "Endoscopy",
    "Fundus",
    "Microscope",
    "Mammography",
    "OCT",
)

DICOM_TO_ROUTING = {
    "CT": "CT",
    "MR": "MR",
    "PT": "PET",
    "US": "US",
    "CR": "X-Ray",
    "DX": "X-Ray",
    "IO": "X-Ray",
    "PX": "X-Ray",
    "MG": "Mammography",
    "OP": "Fundus",
    "ES": "Endoscopy",
    "SM": "Microscope",
    "XC": "Dermoscopy",
    "OCT": "OCT",
    "OPT": "OCT",
}

_BY_LOWER_NAME = {name.lower(): name for name in ROUTING_MODALITIES}


def from_dicom_tag(tag: str) -> str:
    """The routing modality for a DICOM Modality value, or a StudyError naming the way out (a sidecar override)."""
    routed = DICOM_TO_ROUTING.get(tag.strip().upper())
    if routed is None:
        raise StudyError(
            f'DICOM Modality {tag!r} has no routing modality; set "modality" in the study\'s prompts '
            f"sidecar to one of {', '.join(ROUTING_MODALITIES)}"
        )
    return routed


def normalise(name: str) -> str:
    """A sidecar override: a routing name in any case ("x-ray", "pet") or a DICOM tag ("PT", "DX")."""
    cleaned = name.strip()
    if cleaned.lower() in _BY_LOWER_NAME:
        return _BY_LOWER_NAME[cleaned.lower()]
    if cleaned.upper() in DICOM_TO_ROUTING:
        return DICOM_TO_ROUTING[cleaned.upper()]
    raise StudyError(
        f"unknown modality {name!r}: use one of {', '.join(ROUTING_MODALITIES)} "
        f"(or a DICOM tag: {', '.join(DICOM_TO_ROUTING)})"
    )
