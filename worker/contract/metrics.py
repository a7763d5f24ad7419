"""How one study was segmented: stage times, counts, provenance and the fleet's notes (`extra`), as typed models.

The engine fills times, counts, provenance and the route's settings in `extra`; a fleet worker adds where and when
the study ran (node, delivery, queue wait, transfer seconds); the producer adds what it downloaded. Every key
somebody reads is a typed field; keys nobody reads back (a newer worker's notes) are kept as they are.

`StudyMetrics.to_dict()` is the JSON form (result records, outcomes, metrics.jsonl): unset notes are left out, and so
is a section nothing filled (an error outcome carries only `extra`).
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class StageTimes(BaseModel):
    """Seconds spent per engine stage for one study."""

    load: float = 0.0
    preprocess: float = 0.0
    encode: float = 0.0
    decode: float = 0.0
    postprocess: float = 0.0
    vote: float = 0.0
    write: float = 0.0
    total: float = 0.0


class Counts(BaseModel):
    boxes: int = 0
    slices_encoded: int = 0
    decoder_calls: int = 0
    cache_hits: int = 0
    cache_misses: int = 0
    cache_evictions: int = 0


class Provenance(BaseModel):
    model: str = ""
    model_sha256: str = ""
    precision: str = ""  # the profile that ran (never "fast": what it resolved to)
    encoder_precision: str = ""  # what each model part ran at for this study's strategy
    decoder_precision: str = ""
    precision_choice: str = ""  # for `--precision fast`: which profile it chose and why
    strategy: str = ""
    package_version: str = ""
    overlap: str = ""  # the rule that gave overlapping pixels an owner: "smaller" or "later" (worker/engine/overlap.py)
    note: str = ""

    model_config = ConfigDict(protected_namespaces=())  # a field called `model` is ours, not pydantic's


class Transfer(BaseModel):
    """Seconds spent moving the study's bytes: producer upload, worker download/upload, producer download."""

    model_config = ConfigDict(extra="allow")

    upload: float | None = None
    input_download: float | None = None
    result_upload: float | None = None
    result_download: float | None = None


class MetricsExtra(BaseModel):
    """The route's settings (engine) and where, when and how the fleet ran the study."""

    model_config = ConfigDict(extra="allow")

    # the engine: the route's settings for this study
    margin: float | None = None
    interpolation: str | None = None
    box_rounding: str | None = None
    # the fleet
    cached: bool | None = None  # served from the content-addressed store, not computed for this request
    cache_hit_by: str | None = None  # "producer" or the worker node that found it stored
    duplicate_of_stored: bool | None = None  # another delivery stored the result first: this is that one
    result_key: str | None = None
    batch_id: str | None = None
    task_id: str | None = None
    queue: str | None = None
    node: str | None = None  # the worker node that ran (or judged) the study
    host: str | None = None
    pid: int | None = None
    delivery: int | None = None  # how many deliveries of the study had started when this one ran
    enqueued_at: float | None = None
    started_at: float | None = None
    queue_wait: float | None = None
    transfer: Transfer | None = None
    # a study split across workers (worker.fanout): mode, reason, the parts (node, seconds, slices encoded)
    split: dict[str, Any] | None = None


def _section_is_default(section: BaseModel) -> bool:
    return section == type(section)()


class StudyMetrics(BaseModel):
    times: StageTimes = Field(default_factory=StageTimes)
    counts: Counts = Field(default_factory=Counts)
    provenance: Provenance = Field(default_factory=Provenance)
    extra: MetricsExtra = Field(default_factory=MetricsExtra)

    def note(self, **values: Any) -> None:
        """Set notes in `extra` (typed fields are validated; others are kept as given)."""
        self.extra = MetricsExtra.model_validate({**self.extra.model_dump(exclude_none=True), **values})

    def transfer(self) -> Transfer:
        """The transfer section of `extra`, created on first use."""
        if self.extra.transfer is None:
            self.extra.transfer = Transfer()
        return self.extra.transfer

    def to_dict(self) -> dict[str, Any]:
        """The JSON form: a section nothing filled is left out, and so is every unset note."""
        data: dict[str, Any] = {}
        for name in ("times", "counts", "provenance"):
            section: BaseModel = getattr(self, name)
            if not _section_is_default(section):
                data[name] = section.model_dump()
        extra = self.extra.model_dump(exclude_none=True)
        if extra:
            data["extra"] = extra
        return data
