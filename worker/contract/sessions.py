"""An interactive session's step on a fleet worker: the message the gateway sends, the reply the worker gives.

The gateway keeps a session's image, labels, undo history and prompts; a fleet worker computes each step. A step
names the session's image by its digest (the input blob in the store, as a job's image: Keys.input_blob), the label
by its number, the label's prompt before the step (its box and clicks, in order), the step (a box or a click) and
two mask versions: `base`, the label's mask the gateway holds now, and `version`, the name the new mask takes if
the gateway adopts it. Versions are opaque ids the gateway draws afresh for every attempt, never reused, so a
worker that holds the label's mask under `base` steps from it, and any other worker (a new one after a death, one
that evicted the session, one holding a mask the gateway never adopted) rebuilds the base from the prompt
(worker.engine.labelwise.LabelSegmenter.label_mask): the answer is the same, bit for bit, either way.

A closed session (DELETE, or the gateway's idle timeout) is announced by its id in Keys.session_closed; every
worker process that holds anything of it drops it within about a second (worker.sessions.CloseWatcher).

The reply is exact and never pickled: an npz (worker.contract.arrays, allow_pickle=False) holding the slices it
sends as packed bits, their indices, and a small JSON header. `full` replies carry every slice (the worker did not
hold `base`); the others carry the slices that differ from `base`.

numpy, pydantic and the standard library only (the contract's rule).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from worker.contract.arrays import StoreError, pack_arrays, unpack_arrays
from worker.contract.errors import validation_message
from worker.contract.messages import MessageError, WireClick, WireLabel
from worker.contract.prompts import Box, Click, LabelPrompt

SESSION_MESSAGE_VERSION = 1
HEX_ID = r"^[0-9a-f]{8,64}$"
CLOSED_KEEP = 86400.0  # seconds a closed session's id stays in Keys.session_closed (workers look every second)


class SessionStep(BaseModel):
    """One interaction of a session, as a Celery task argument (JSON)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    session_id: str = Field(pattern=HEX_ID)
    request_id: str = Field(pattern=HEX_ID)  # names the reply (Keys.session_reply) and the busy mark
    study_id: str
    modality: str
    image_digest: str = Field(pattern=HEX_ID)
    image_shape: tuple[int, ...]
    spacing: tuple[float, ...] | None = None
    dims: Literal[2, 3]
    label: int = Field(ge=1, le=65535)
    prompt: WireLabel  # the label's prompt before this step
    step: Literal["box", "click"]
    box: list[int | float] | None = None
    click: WireClick | None = None
    base: str = Field("", pattern=r"^([0-9a-f]{8,64})?$")  # the mask version the gateway holds ("": empty label)
    version: str = Field(pattern=HEX_ID)
    reply_ttl: int = Field(60, ge=1)
    message_version: int = SESSION_MESSAGE_VERSION

    @model_validator(mode="after")
    def _one_step(self) -> SessionStep:
        if self.step == "box" and (self.box is None or self.click is not None):
            raise ValueError("a box step carries a box and no click")
        if self.step == "click" and (self.click is None or self.box is not None):
            raise ValueError("a click step carries a click and no box")
        return self

    @staticmethod
    def wire_prompt(prompt: LabelPrompt) -> WireLabel:
        return WireLabel(
            box=list(prompt.box.coords) if prompt.box is not None else None,
            clicks=[WireClick(point=list(c.point), foreground=c.foreground) for c in prompt.clicks],
        )

    def label_prompt(self) -> LabelPrompt:
        box = self.prompt.box
        return LabelPrompt(
            Box(tuple(box)) if box is not None else None,
            tuple(Click(tuple(c.point), c.foreground) for c in self.prompt.clicks),
        )

    def new_box(self) -> Box:
        assert self.box is not None
        return Box(tuple(self.box))

    def new_click(self) -> Click:
        assert self.click is not None
        return Click(tuple(self.click.point), self.click.foreground)

    def to_wire(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    @classmethod
    def from_wire(cls, data: Any) -> SessionStep:
        if not isinstance(data, dict):
            raise MessageError(f"a session step is a JSON object, got {type(data).__name__}")
        if data.get("message_version") != SESSION_MESSAGE_VERSION:
            raise MessageError(
                f"session step version {data.get('message_version')!r}, this worker reads {SESSION_MESSAGE_VERSION}"
            )
        try:
            return cls.model_validate(data)
        except ValidationError as error:
            raise MessageError(validation_message(error)) from None


@dataclass
class SessionReply:
    """What a worker answers a step with: the new mask's slices (all of them when `full`), or an error."""

    node: str
    version: str
    slices: dict[int, np.ndarray] = field(default_factory=dict)  # z -> (H, W) bool
    full: bool = False
    replayed: bool = False  # the worker rebuilt the base mask from the prompt
    seconds: float = 0.0
    overlap: str = ""  # the routing's overlap rule for the study's modality, as the worker's engine has it
    error: str = ""
    invalid: bool = False  # the error is the step's input (a StudyError), not the worker

    def to_bytes(self) -> bytes:
        zs = sorted(self.slices)
        shape = next(iter(self.slices.values())).shape if zs else (0, 0)
        bits = np.stack([np.packbits(self.slices[z].ravel()) for z in zs]) if zs else np.zeros((0, 0), np.uint8)
        header = {
            "node": self.node,
            "version": self.version,
            "full": self.full,
            "replayed": self.replayed,
            "seconds": self.seconds,
            "overlap": self.overlap,
            "error": self.error,
            "invalid": self.invalid,
            "shape": list(shape),
        }
        meta = np.frombuffer(json.dumps(header).encode(), dtype=np.uint8)
        return pack_arrays(meta=meta, z=np.asarray(zs, dtype=np.int32), bits=bits)

    @classmethod
    def from_bytes(cls, blob: bytes) -> SessionReply:
        arrays = unpack_arrays(blob)
        if set(arrays) != {"meta", "z", "bits"}:
            raise StoreError(f"a session reply holds meta, z and bits (this one: {sorted(arrays)})")
        try:
            header = json.loads(arrays["meta"].tobytes())
            height, width = (int(v) for v in header["shape"])
            zs = [int(z) for z in arrays["z"]]
            bits = arrays["bits"]
            if bits.dtype != np.uint8 or bits.shape[0] != len(zs):
                raise ValueError("bits do not match the slice list")
            slices = {
                z: np.unpackbits(bits[i], count=height * width).reshape(height, width).astype(bool)
                for i, z in enumerate(zs)
            }
            return cls(
                node=str(header["node"]),
                version=str(header["version"]),
                slices=slices,
                full=bool(header["full"]),
                replayed=bool(header["replayed"]),
                seconds=float(header["seconds"]),
                overlap=str(header["overlap"]),
                error=str(header["error"]),
                invalid=bool(header["invalid"]),
            )
        except (ValueError, KeyError, TypeError) as error:
            raise StoreError(f"unreadable session reply ({error})") from None
