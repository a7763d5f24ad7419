"""The page's thumbnail of a finished job: its mask over the middle of its segmented slices.

Every other file of a job (SEG, NIfTI, labels.npz) is written by the producer's own writers (gateway.pipeline).
"""

from __future__ import annotations

import io

import numpy as np

from producer.formats.structures import label_colours

THUMBNAIL_SIZE = 192


def _thumbnail_slice(image: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(grey or RGB plane, label plane): a 2D study as it is; a volume at the middle of its segmented slices
    (the middle slice when the mask is empty)."""
    if labels.ndim == 2:
        return image, labels
    segmented = np.flatnonzero(labels.reshape(labels.shape[0], -1).any(axis=1))
    z = int(segmented[len(segmented) // 2]) if len(segmented) else labels.shape[0] // 2
    return image[z], labels[z]


def thumbnail_png(image: np.ndarray, labels: np.ndarray, names: tuple[str, ...] = ()) -> bytes:
    """The study's 8-bit image with each label blended in its colour (the SEG's: by `names` where they name a known
    structure, else the palette), longest side THUMBNAIL_SIZE."""
    from PIL import Image

    plane, mask = _thumbnail_slice(image, labels)
    rgb = np.repeat(plane[..., None], 3, axis=2) if plane.ndim == 2 else plane[..., :3]
    rgb = rgb.astype(np.float32)
    colours = label_colours(int(mask.max()), names).astype(np.float32)
    for label in np.unique(mask[mask > 0]):
        colour = colours[int(label)]
        where = mask == label
        rgb[where] = 0.45 * rgb[where] + 0.55 * colour
    picture = Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8), "RGB")
    picture.thumbnail((THUMBNAIL_SIZE, THUMBNAIL_SIZE))
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return buffer.getvalue()
