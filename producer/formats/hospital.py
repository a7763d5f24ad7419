"""A decoded DICOM/NIfTI image plus its prompts -> the Study the engine runs (challenge layout, 8-bit).

- One slice (D == 1) is a 2D study: image uint8 (H, W, 3), grey repeated to three channels, colour kept;
  boxes (N, 4); spacing (x, y) when known.
- More slices: a 3D study, image uint8 (D, H, W), boxes (N, 6), spacing (x, y, z). Colour volumes are refused.
- Modality: the sidecar's "modality" override, else the DICOM Modality tag mapped by producer.formats.modality,
  else a fallback (a BIDS sidecar's "Modality" for NIfTI), else a StudyError asking for the override.
- 8-bit rules: producer.formats.intensity (the passthrough of native 8-bit data applies to 2D images only).
"""

from __future__ import annotations

import numpy as np

from producer.formats import modality as modalities
from producer.formats.boxes import resolve_prompts
from producer.formats.intensity import Window, to_uint8
from producer.formats.sidecar import SidecarPrompts
from producer.formats.volume import ImageVolume
from worker.contract.prompts import Prompts
from worker.contract.study import Study, StudyError


def resolve_modality(override: str | None, volume: ImageVolume, fallback: str | None, where: str) -> str:
    """The sidecar's (or a session's) override, else the DICOM tag, else the fallback, else a StudyError."""
    if override:
        return modalities.normalise(override)
    if volume.modality_tag:
        return modalities.from_dicom_tag(volume.modality_tag)
    if fallback:
        return modalities.normalise(fallback)
    raise StudyError(
        f'no modality: {where} has no Modality tag; set "modality" in its prompts sidecar '
        f"({', '.join(modalities.ROUTING_MODALITIES)})"
    )


def prepare_image(volume: ImageVolume, modality: str, window: Window | None) -> np.ndarray:
    if volume.depth > 1:
        if volume.is_colour:
            raise StudyError("colour volumes are not supported: the 3D strategies take grey slices")
        return to_uint8(volume.values, modality, window, passthrough=False)
    plane = to_uint8(volume.values, modality, window, passthrough=volume.native_8bit)[0]
    return np.ascontiguousarray(plane if plane.ndim == 3 else np.repeat(plane[..., None], 3, axis=2))


def image_study(
    name: str,
    volume: ImageVolume,
    prompts: Prompts | None = None,
    modality: str | None = None,
    window: Window | None = None,
    fallback_modality: str | None = None,
) -> Study:
    """The 8-bit Study of a decoded image; `prompts` None: none yet (an interactive session's image)."""
    chosen = resolve_modality(modality, volume, fallback_modality, name)
    is_3d = volume.depth > 1
    image = prepare_image(volume, chosen, window)
    spacing = volume.spacing if is_3d or volume.spacing is None else tuple(volume.spacing[:2])
    return Study(name, chosen, image, prompts or Prompts((), 3 if is_3d else 2), spacing)


def build_study(name: str, volume: ImageVolume, prompts: SidecarPrompts, fallback_modality: str | None = None) -> Study:
    is_3d = volume.depth > 1
    resolved = resolve_prompts(prompts.boxes, tuple(volume.values.shape[:3]), volume.geometry, is_3d)
    return image_study(name, volume, resolved, prompts.modality, prompts.window, fallback_modality)
