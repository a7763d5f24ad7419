"""Turn a found study source into a Study the engine can run, and the OutputContext its writers need.

Each format does it its own way (producer.formats.registry): npz gives the challenge arrays as stored; DICOM and
NIfTI read the prompts sidecar first (cheap, and a missing one fails before any pixel is decoded), then the image
(DICOM headers are read once: the same layout gives the volume and the writers' DicomReference), then
producer.formats.hospital builds the 8-bit Study.
"""

from __future__ import annotations

from producer.formats.base import StudySource
from producer.formats.output_context import OutputContext
from producer.formats.registry import format_of
from producer.formats.sidecar import SidecarPrompts
from worker.contract.study import Study


def load_study_and_context(source: StudySource, prompts: SidecarPrompts | None = None) -> tuple[Study, OutputContext]:
    """The study and its writers' context; `prompts` given in memory (a gateway job's) are used instead of the
    source's sidecar, which is then never read (producer.formats.base.prompts_of)."""
    return format_of(source).load(source, prompts)


def load_study(source: StudySource) -> Study:
    return load_study_and_context(source)[0]


def context_of(source: StudySource) -> OutputContext:
    """The writers' context read from the source's headers and sidecar only (no pixels): for an outcome that
    came without one (a batch stored before contexts existed, or a caller's own outcome)."""
    return format_of(source).context(source)
