"""The study formats, one class per kind, in one table: the only place a StudySource's `kind` becomes behaviour.

Order matters for discovery: the first format that claims a file gets it, and DICOM, last, claims every file the
others do not (it reads the header to tell images from everything else).
"""

from __future__ import annotations

from producer.formats.base import StudyFormat, StudySource
from producer.formats.dicom_kind import DicomFormat
from producer.formats.nifti_kind import NiftiFormat
from producer.formats.npz_kind import NpzFormat
from worker.contract.study import StudyError

FORMATS: dict[str, StudyFormat] = {fmt.kind: fmt for fmt in (NpzFormat(), NiftiFormat(), DicomFormat())}
KINDS = tuple(FORMATS)


def format_of(source: StudySource) -> StudyFormat:
    try:
        return FORMATS[source.kind]
    except KeyError:
        raise StudyError(f"{source.name}: unknown study kind {source.kind!r}") from None
