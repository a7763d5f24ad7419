"""A batch's manifest in Redis as typed records: its meta (one per batch) and one entry per study.

The producer that submits a batch writes them (producer.fleet); any producer reads them back (`producer status`,
`producer results` elsewhere, the Python API) through worker.ledger.BatchLedger. Both carry `version`: a reader
refuses a manifest of a version it does not know, naming it, instead of misreading it (a batch written before the
field existed reads as version 0).
"""

from __future__ import annotations

import json
from typing import Any, Self

from pydantic import BaseModel, ConfigDict, ValidationError

from worker.contract.errors import validation_message

MANIFEST_VERSION = 1


class ManifestError(ValueError):
    """A batch's manifest this producer cannot read: another version, or a record that does not fit."""


class _Record(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    version: int = MANIFEST_VERSION

    @classmethod
    def from_json(cls, raw: bytes | str, what: str) -> Self:
        """The record stored as `raw`; a ManifestError naming `what` if it is of another version than this
        producer's, or does not fit."""
        try:
            data = json.loads(raw)
        except ValueError as error:
            raise ManifestError(f"{what} is not JSON ({error})") from None
        if not isinstance(data, dict):
            raise ManifestError(f"{what} is not a JSON object")
        version = data.get("version", 0)
        if version != MANIFEST_VERSION:
            written = "before manifests had versions" if version == 0 else f"as manifest version {version!r}"
            raise ManifestError(
                f"{what} was written {written}; this producer reads manifest version {MANIFEST_VERSION} only: read "
                "it with the producer that submitted it, or submit the studies again (stored results are reused)"
            )
        try:
            return cls.model_validate(data)
        except ValidationError as error:
            raise ManifestError(f"{what} does not fit: {validation_message(error, whole='record')}") from None

    def to_json(self) -> str:
        return self.model_dump_json()


class BatchMeta(_Record):
    """One batch: what was asked and how far its submitter got."""

    batch_id: str
    created_at: float
    study_dir: str = ""  # the folder submitted ("" for studies given in memory)
    total: int  # studies in the batch (once sealed: all of them)
    sealed: bool = False  # False while the submitter is still enqueuing (or if it died doing so)
    interrupted: bool = False  # sealed after Ctrl-C, with the studies enqueued until then
    submitted_at: float | None = None
    force: bool = False
    queue: str = ""
    producer: str = ""  # the submitting host
    dicom_formats: tuple[str, ...] = ()  # what `results` writes DICOM studies as (empty: the default)
    split: bool = True


class StudyEntry(_Record):
    """One study of a batch: where it came from, what its writers need, and where it was sent."""

    source: dict[str, Any] | None = None  # producer.source_codec's JSON of its StudySource (None: given in memory)
    output_context: dict[str, Any] | None = None  # producer.formats.output_context.OutputContext.to_json()
    enqueued_at: float | None = None
    modality: str = ""
    image_digest: str = ""
    queue: str = ""
    result_key: str = ""
    task_id: str = ""
