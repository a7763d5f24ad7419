"""Group DICOM image headers into studies: one per series, or one per 2D image in a series of separate images.

- Files are grouped by SeriesInstanceUID; a SOPInstanceUID seen twice (a copied file) is kept once, with a note.
- Files without a SeriesInstanceUID (anonymised exports blank it) are grouped by what a series' files share: their
  folder, FrameOfReferenceUID, orientation, rows/columns, pixel spacing and modality. Such a group gets a UID
  derived from its files' SOP Instance UIDs (stable across runs) and a note saying how it was grouped.
- Instances with patient geometry (ImagePositionPatient, or per-frame plane positions) form the series' volume.
- Instances without it are projection images or photographs: a series holding one of them is one 2D study; a
  series holding several (two radiograph views, a set of ultrasound captures) yields one 2D study per instance,
  keyed in the prompts sidecar by SOPInstanceUID. An instance without geometry in a series whose other instances
  have it, and of their size, is a slice that lost its position: it stays in the volume, which is then refused
  naming it (rather than silently segmenting the rest, or splitting it off as a 2D study).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from producer.formats.dicom_files import DicomHeader, derived_uid

UNGROUPED_NOTE = (
    "{count} file(s) without a SeriesInstanceUID grouped as one series by what they share (folder, "
    "frame of reference, orientation, rows/columns, pixel spacing, modality)"
)


@dataclass(frozen=True)
class DicomGroup:
    files: tuple[Path, ...]
    uid: str  # SeriesInstanceUID, or SOPInstanceUID for a 2D image split out of its series
    section: str  # "series" or "instances": where a keyed prompts.json lists this study
    modality: str
    series_number: int | None
    instance_index: int | None = None  # 1-based position among the series' separate 2D images
    notes: tuple[str, ...] = ()  # how the group was formed, when not by its SeriesInstanceUID

    @property
    def folder(self) -> Path:
        """The deepest folder holding all the group's files: where its prompts.json lives."""
        return Path(os.path.commonpath([str(path.parent) for path in self.files]))


def _dedupe(headers: Iterable[DicomHeader]) -> tuple[list[DicomHeader], list[tuple[Path, str]]]:
    kept: dict[str, DicomHeader] = {}
    duplicates = []
    for header in headers:
        first = kept.setdefault(header.sop_instance_uid, header)
        if first is not header:
            duplicates.append((header.path, f"duplicate of {first.path} (same SOPInstanceUID), ignored"))
    return list(kept.values()), duplicates


def _series_groups(uid: str, members: list[DicomHeader], by_traits: bool = False) -> list[DicomGroup]:
    first = members[0]
    placed = [h for h in members if h.has_plane_geometry]
    sizes = {h.traits[2:4] for h in placed}
    lost = [h for h in members if not h.has_plane_geometry and h.traits[2:4] in sizes]
    placed += lost  # slices that lost their position: the volume's reader names them
    loose = [h for h in members if not h.has_plane_geometry and h not in lost]
    groups = []
    if placed:
        note = UNGROUPED_NOTE.format(count=len(placed)) if by_traits else ""
        groups.append(
            DicomGroup(
                tuple(sorted(h.path for h in placed)),
                uid,
                "series",
                first.modality,
                first.series_number,
                notes=(note,) if note else (),
            )
        )
    if len(loose) == 1 and not placed:
        groups.append(DicomGroup((loose[0].path,), uid, "series", first.modality, first.series_number))
    elif loose:
        for index, header in enumerate(sorted(loose, key=lambda h: h.path), start=1):
            groups.append(
                DicomGroup(
                    (header.path,), header.sop_instance_uid, "instances", header.modality, header.series_number, index
                )
            )
    return groups


def _derived_series_uid(members: list[DicomHeader]) -> str:
    """The UID the DICOM writers derive too (producer.formats.dicom_reference), from the volume's instances."""
    placed = [h for h in members if h.has_plane_geometry] or members
    return derived_uid("series", [h.sop_instance_uid for h in placed])


def group_headers(headers: Iterable[DicomHeader]) -> tuple[list[DicomGroup], list[tuple[Path, str]]]:
    """(studies, notes) where notes are (path, reason) for files left out."""
    unique, notes = _dedupe(headers)
    by_series: dict[str, list[DicomHeader]] = {}
    by_traits: dict[tuple, list[DicomHeader]] = {}
    for header in unique:
        if header.series_uid:
            by_series.setdefault(header.series_uid, []).append(header)
        else:
            by_traits.setdefault((str(header.path.parent), header.traits), []).append(header)
    groups = [group for uid, members in by_series.items() for group in _series_groups(uid, members)]
    groups += [
        group
        for members in by_traits.values()
        for group in _series_groups(_derived_series_uid(members), members, by_traits=True)
    ]
    return sorted(groups, key=lambda g: (str(g.folder), g.series_number or 0, g.uid)), notes
