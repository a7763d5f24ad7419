"""What travels between producer and worker, as pydantic models with JSON (and npz) encodings.

- TaskMessage: the Celery task argument; JSON metadata only (the image is a blob named by its digest).
- Outcome: one study's final state in a batch (written once to Redis by whoever finishes it).
- Progress: how far a running study is (slice steps done of total), written by its worker.
- ResultRecord: the stored result, labels + metrics in one npz blob (metrics as UTF-8 JSON bytes), so a
  write-once store of the record stores both or neither.

A message that does not parse raises MessageError (a ValueError) naming the fields at fault: the worker reports it
for that message alone.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from worker.contract.arrays import StoreError, pack_arrays, unpack_arrays
from worker.contract.errors import validation_message
from worker.contract.metrics import StudyMetrics
from worker.contract.prompts import Box, Click, LabelPrompt, Prompts

MESSAGE_VERSION = 2  # 2: prompts with clicks (`labels`); a version 1 message is refused by name


class WireClick(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    point: list[int | float]
    foreground: bool = True


class WireLabel(BaseModel):
    """One label's voxel prompts on the wire (the producer maps mm to voxels before it sends)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    box: list[int | float] | None = None
    clicks: list[WireClick] = []


class MessageError(ValueError):
    """A task message, outcome or progress entry that does not parse: what is wrong with it, in one line."""


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


class TaskMessage(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    batch_id: str
    name: str  # the study's name in the batch (output file stem)
    study_id: str
    modality: str
    image_digest: str  # the input blob is Keys.input_blob(image_digest)
    image_shape: tuple[int, ...]
    boxes: list[list[int | float]]
    boxes_dtype: str
    boxes_shape: tuple[int, ...]
    spacing: tuple[float, ...] | None = None
    force: bool = False
    queue: str = ""
    enqueued_at: float = 0.0  # epoch seconds
    upload_seconds: float = 0.0
    version: int = MESSAGE_VERSION
    split: bool = True  # False (`producer submit --split off`): never split this study across workers
    # prompts that are not box-only (clicks, labels of clicks alone): every label here, `boxes` then empty
    labels: list[WireLabel] | None = None
    dims: Literal[2, 3] | None = None  # with `labels`: the prompts' dimensionality

    @field_validator("boxes", mode="before")
    @classmethod
    def _numeric_boxes(cls, value: Any) -> Any:
        rows = value if isinstance(value, list) else []
        if not all(isinstance(row, list) and all(_is_number(v) for v in row) for row in rows):
            raise ValueError("boxes must be a numeric array")
        return value

    @classmethod
    def create(cls, **fields: Any) -> TaskMessage:
        """A new message; MessageError (one line) if the fields cannot make one."""
        try:
            return cls(**fields)
        except ValidationError as error:
            raise MessageError(validation_message(error)) from None

    def boxes_array(self) -> np.ndarray:
        return np.asarray(self.boxes, dtype=np.dtype(self.boxes_dtype)).reshape(self.boxes_shape)

    @staticmethod
    def prompt_fields(prompts: Prompts) -> dict[str, Any]:
        """The message fields that carry these voxel prompts: box-only as the challenge's box array (bit for bit,
        in its number type), anything else label by label."""
        if prompts.boxes_only:
            boxes = prompts.box_array()
            return {"boxes": boxes.tolist(), "boxes_dtype": boxes.dtype.str, "boxes_shape": tuple(boxes.shape)}
        labels = [
            WireLabel(
                box=list(label.box.coords) if label.box is not None else None,
                clicks=[WireClick(point=list(click.point), foreground=click.foreground) for click in label.clicks],
            )
            for label in prompts.labels
        ]
        width = 6 if prompts.is_3d else 4
        return {"boxes": [], "boxes_dtype": "<i8", "boxes_shape": (0, width), "labels": labels, "dims": prompts.dims}

    def prompts(self) -> Prompts:
        """The study's voxel prompts (PromptError, a StudyError, if they are none)."""
        if self.labels is None:
            return Prompts.from_boxes(self.boxes_array())
        return Prompts(
            tuple(
                LabelPrompt(
                    Box(tuple(label.box)) if label.box is not None else None,
                    tuple(Click(tuple(click.point), click.foreground) for click in label.clicks),
                )
                for label in self.labels
            ),
            self.dims or 3,
        )

    def to_wire(self) -> dict[str, Any]:
        """The Celery task argument (plain JSON types)."""
        return self.model_dump(mode="json")

    @classmethod
    def from_wire(cls, data: Any) -> TaskMessage:
        """A message as the worker received it; MessageError if it is not one this worker reads."""
        if not isinstance(data, dict):
            raise MessageError(f"a task message is a JSON object, got {type(data).__name__}")
        if data.get("version") != MESSAGE_VERSION:
            raise MessageError(f"task message version {data.get('version')!r}, this worker reads {MESSAGE_VERSION}")
        try:
            return cls.model_validate(data)
        except ValidationError as error:
            raise MessageError(validation_message(error)) from None


class Outcome(BaseModel):
    name: str
    status: Literal["ok", "error"]
    modality: str = ""
    error: str = ""
    result_key: str = ""
    metrics: StudyMetrics = Field(default_factory=StudyMetrics)
    finished_at: float = Field(default_factory=time.time)

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def to_json(self) -> str:
        """The ledger's form: the metrics as StudyMetrics.to_dict() writes them."""
        return json.dumps({**self.model_dump(exclude={"metrics"}), "metrics": self.metrics.to_dict()})

    @classmethod
    def from_json(cls, text: str | bytes) -> Outcome:
        try:
            return cls.model_validate_json(text)
        except ValidationError as error:
            raise MessageError(f"outcome: {validation_message(error)}") from None


class Progress(BaseModel):
    """Slice steps done of total for a running study, by which node, when (epoch seconds)."""

    model_config = ConfigDict(frozen=True)

    done: int
    total: int
    node: str = ""
    updated_at: float = 0.0

    @model_validator(mode="before")
    @classmethod
    def _from_list(cls, data: Any) -> Any:
        """Entries written before progress was an object: [done, total, node, updated_at]."""
        if isinstance(data, list):
            return dict(zip(("done", "total", "node", "updated_at"), data))
        return data

    @classmethod
    def from_json(cls, text: str | bytes) -> Progress:
        try:
            return cls.model_validate_json(text)
        except ValidationError as error:
            raise MessageError(f"progress: {validation_message(error)}") from None


@dataclass
class ResultRecord:
    labels: np.ndarray
    metrics: StudyMetrics

    def to_bytes(self) -> bytes:
        metrics = np.frombuffer(json.dumps(self.metrics.to_dict()).encode(), dtype=np.uint8)
        return pack_arrays(segs=self.labels.astype(np.uint16, copy=False), metrics=metrics)

    @classmethod
    def from_bytes(cls, blob: bytes) -> ResultRecord:
        arrays = unpack_arrays(blob)
        if "segs" not in arrays or "metrics" not in arrays:
            raise StoreError(f"result blob lacks segs/metrics (has {sorted(arrays)})")
        try:
            metrics = StudyMetrics.model_validate_json(arrays["metrics"].tobytes())
        except ValidationError as error:
            raise StoreError(f"result blob's metrics do not parse ({validation_message(error)})") from None
        return cls(arrays["segs"], metrics)


def pack_image(image: np.ndarray) -> bytes:
    return pack_arrays(imgs=image)


def unpack_image(blob: bytes) -> np.ndarray:
    arrays = unpack_arrays(blob)
    if "imgs" not in arrays:
        raise StoreError(f"input blob lacks imgs (has {sorted(arrays)})")
    return arrays["imgs"]
