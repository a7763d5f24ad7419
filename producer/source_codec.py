"""StudySource <-> JSON for the batch manifest, so another process can write a batch's outputs.

pydantic validates and serialises the StudySource dataclass itself (a TypeAdapter over its type hints), so a field
added to StudySource (or to the SidecarRef it holds) round-trips without changes here. The JSON is what the
manifest has always stored: {"name", "path", "kind", "files": [...], "sidecar": {"path", "section", "uid",
"shared"} or null, "notes": [...]}, paths as strings; an entry written before a field existed reads with that
field's default. An entry that does not fit (a tampered manifest) is a StudyError naming the field.
"""

from __future__ import annotations

from typing import Any

from pydantic import TypeAdapter, ValidationError

from producer.formats.base import StudySource
from worker.contract.errors import validation_message
from worker.contract.study import StudyError

SOURCE = TypeAdapter(StudySource)


def source_to_json(source: StudySource) -> dict[str, Any]:
    return SOURCE.dump_python(source, mode="json")


def source_from_json(data: dict[str, Any]) -> StudySource:
    try:
        return SOURCE.validate_python(data)
    except ValidationError as error:
        problems = validation_message(error, whole="entry")
        raise StudyError(f"the batch manifest's study entry does not fit: {problems}") from None
