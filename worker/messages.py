"""What travels between producer and worker, as typed dataclasses with JSON (and npz) encodings.

- TaskMessage: the Celery task argument; JSON metadata only (the image is a blob named by its digest).
- Outcome: one study's final state in a batch (written once to Redis by whoever finishes it).
- ResultRecord: the stored result, labels + metrics in one npz blob (metrics as UTF-8 JSON bytes), so a
  write-once store of the record stores both or neither.
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from worker.store import StoreError, pack_arrays, unpack_arrays

MESSAGE_VERSION = 1


@dataclass(frozen=True)
class TaskMessage:
    batch_id: str
    name: str  # the study's name in the batch (output file stem)
    study_id: str
    modality: str
    image_digest: str  # the input blob is Keys.input_blob(image_digest)
    image_shape: tuple[int, ...]
    boxes: list[list[float]]
    boxes_dtype: str
    boxes_shape: tuple[int, ...]
    spacing: tuple[float, ...] | None = None
    expected_key: str = ""  # the producer's result key (from the published engine identity), "" if unknown
    force: bool = False
    queue: str = ""
    enqueued_at: float = 0.0  # epoch seconds
    upload_seconds: float = 0.0
    version: int = MESSAGE_VERSION

    def boxes_array(self) -> np.ndarray:
        return np.asarray(self.boxes, dtype=np.dtype(self.boxes_dtype)).reshape(self.boxes_shape)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TaskMessage":
        if data.get("version") != MESSAGE_VERSION:
            raise ValueError(f"task message version {data.get('version')!r}, this worker reads {MESSAGE_VERSION}")
        fields = dict(data)
        fields["image_shape"] = tuple(int(n) for n in fields["image_shape"])
        fields["boxes_shape"] = tuple(int(n) for n in fields["boxes_shape"])
        if fields.get("spacing") is not None:
            fields["spacing"] = tuple(float(v) for v in fields["spacing"])
        return cls(**fields)


@dataclass
class Outcome:
    name: str
    status: str  # "ok" or "error"
    modality: str = ""
    error: str = ""
    result_key: str = ""
    metrics: dict[str, Any] = field(default_factory=dict)
    finished_at: float = field(default_factory=time.time)

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str | bytes) -> "Outcome":
        return cls(**json.loads(text))


@dataclass
class ResultRecord:
    labels: np.ndarray
    metrics: dict[str, Any]

    def to_bytes(self) -> bytes:
        metrics = np.frombuffer(json.dumps(self.metrics).encode(), dtype=np.uint8)
        return pack_arrays(segs=self.labels.astype(np.uint16, copy=False), metrics=metrics)

    @classmethod
    def from_bytes(cls, blob: bytes) -> "ResultRecord":
        arrays = unpack_arrays(blob)
        if "segs" not in arrays or "metrics" not in arrays:
            raise StoreError(f"result blob lacks segs/metrics (has {sorted(arrays)})")
        return cls(arrays["segs"], json.loads(arrays["metrics"].tobytes().decode()))


def pack_image(image: np.ndarray) -> bytes:
    return pack_arrays(imgs=image)


def unpack_image(blob: bytes) -> np.ndarray:
    arrays = unpack_arrays(blob)
    if "imgs" not in arrays:
        raise StoreError(f"input blob lacks imgs (has {sorted(arrays)})")
    return arrays["imgs"]
