"""Interactive sessions: one image held open, labels a person prompts one interaction at a time.

A session opens an image without prompts (any study format: `StudyFormat.load_image`), then takes interactions per
named label: a box (which restarts that label: its box alone through the route's strategy) or a click (the refiner's
one step on the label's mask, earlier clicks as guards). Both are worker.engine.labelwise's steps, so the session's
label map is, voxel for voxel, what `Engine.segment` gives for the session's prompts (`Session.prompts()`); the
engine's embedding cache keeps every slice encoded once, so a click costs decoder calls only.

- Labels are numbered 1, 2, ... in the order they are first named; the label map paints them by the routing's
  overlap rule (as every output does: npz `segs` holds label k for the k-th label).
- Undo/redo per label: each interaction keeps the slices it changed (packed bits) and the prompt before it.
- A label's display colour is the structure table's (producer.formats.structures) until one is chosen
  (`set_colour`); the chosen one is in every answer and in the session's SEG and RTSTRUCT.
- A session answers with what changed: the slices whose mask of that label changed, each as a run-length code
  (`rle`) a browser can paint, with the seconds spent and the label's volume in ml (3D with spacing).
- `SessionStore` bounds what sessions hold: their number, their bytes (image, masks, undo history) and an idle
  timeout; a session past it is closed on the next look at the store. Closing a session (DELETE or idle) closes
  its LabelWork: the embeddings of its image are dropped where they were computed (here, or on fleet workers).
- Who computes a step is a `SessionEngine`'s `LabelWork` (the one choice between them: the gateway's
  make_session_engine): `LocalSessions` runs every session on one engine in this process, one interaction at a
  time; producer.fleet_sessions.FleetSessions sends each step to a fleet worker. Each label's mask carries a
  version (a fresh id at every change, undo and redo included) that a fleet worker uses to know whether the mask
  it holds is the one the session holds. Undo and redo stay here: they restore stored masks.
Not here: HTTP (producer.gateway.routes.sessions) and writing outputs (the study formats' writers, via `result`).
"""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Protocol

import numpy as np

from producer.formats.base import StudySource
from producer.formats.outcome import StudyOutcome
from producer.formats.output_context import OutputContext
from producer.formats.structures import Colour, check_colour, segment_structure
from worker.contract.prompts import VOXEL, Box, Click, LabelPrompt, Prompts
from worker.contract.study import Study, StudyError
from worker.contract.validation import check_boxes, check_clicks, check_image
from worker.engine.labelwise import LabelSegmenter, label_size, paint, volume_shape

MAX_LABELS = 255
MAX_NAME = 64
GATEWAY = "gateway"  # who computed a change made in this process (local sessions, undo and redo)


def new_session_id() -> str:
    return secrets.token_hex(16)


def new_version() -> str:
    """A label mask's version: an id never used before."""
    return secrets.token_hex(8)


class SessionUnavailable(RuntimeError):
    """No one can compute a session's step now (no live fleet worker, the fleet unreachable): that interaction
    fails (HTTP 503), the session stays as it was."""


def rle(mask: np.ndarray) -> list[int]:
    """Run lengths of a bool mask in row-major order, alternating off/on, starting with off (possibly 0)."""
    flat = np.ascontiguousarray(mask, dtype=bool).ravel()
    if flat.size == 0:
        return []
    edges = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    bounds = np.concatenate(([0], edges, [flat.size]))
    runs = np.diff(bounds).tolist()
    return [0, *runs] if flat[0] else runs


def unrle(runs: list[int], shape: tuple[int, ...]) -> np.ndarray:
    """The inverse of rle (for tests and clients written in Python)."""
    flat = np.zeros(int(np.prod(shape)), dtype=bool)
    position, on = 0, False
    for run in runs:
        if on:
            flat[position : position + run] = True
        position, on = position + run, not on
    if position != flat.size:
        raise ValueError(f"runs cover {position} pixels, the mask has {flat.size}")
    return flat.reshape(shape)


@dataclass
class Step:
    """What one interaction changed, kept to undo it: the label's prompt before, its slices before."""

    prompt: LabelPrompt
    slices: dict[int, tuple[tuple[int, int], np.ndarray]]  # z -> (shape, packed bits)


@dataclass
class LabelState:
    name: str
    number: int
    prompt: LabelPrompt
    mask: np.ndarray  # (D, H, W) bool
    undo: list[Step] = field(default_factory=list)
    redo: list[Step] = field(default_factory=list)
    version: str = ""  # "" while the mask is empty and never changed; else new_version() at every change
    colour: Colour | None = None  # chosen for the label (Session.set_colour); None: the structure table's

    def display_colour(self) -> Colour:
        """The colour the label is drawn and written in (the chosen one, else the structure table's)."""
        return segment_structure(self.number, self.name, self.colour).rgb

    def nbytes(self) -> int:
        steps = self.undo + self.redo
        return int(self.mask.nbytes + sum(p.nbytes for s in steps for _, p in s.slices.values()))


@dataclass
class Change:
    """An interaction's answer."""

    label: LabelState
    changed: list[int]
    seconds: float
    worker: str = ""  # who computed it: a fleet worker's node, or "gateway"


class LabelWork(Protocol):
    """Who computes one session's label masks (the gateway's engine, or a fleet worker)."""

    def box(self, label: LabelState, box: Box, version: str) -> np.ndarray:
        """(D, H, W) bool: the label restarted with this box (its mask becomes `version`)."""
        ...

    def click(self, label: LabelState, click: Click, version: str) -> np.ndarray:
        """(D, H, W) bool: the label's mask after one more click (its mask becomes `version`)."""
        ...

    def overlap(self) -> str:
        """The routing's overlap rule for this session's modality."""
        ...

    @property
    def where(self) -> str:
        """Who computed the last step."""
        ...

    def close(self) -> None:
        """The session is closed: drop what was computed for it (embeddings here; a fleet worker's cache)."""
        ...


class SessionEngine(Protocol):
    """Opens each session's LabelWork and says which lock its interactions take."""

    mode: str

    def open(self, session_id: str, study: Study) -> LabelWork: ...

    def session_lock(self) -> threading.Lock: ...


def _pack(mask: np.ndarray, slices: list[int]) -> dict[int, tuple[tuple[int, int], np.ndarray]]:
    return {z: (mask[z].shape, np.packbits(mask[z])) for z in slices}


def _unpack(packed: tuple[tuple[int, int], np.ndarray]) -> np.ndarray:
    shape, bits = packed
    return np.unpackbits(bits, count=shape[0] * shape[1]).reshape(shape).astype(bool)


def _changed(old: np.ndarray, new: np.ndarray) -> list[int]:
    return np.flatnonzero((old != new).any(axis=(1, 2))).tolist()


class Session:
    """One open image and its labels; one interaction at a time (a lock: the shared engine's, in-process), each
    step computed by the session's LabelWork."""

    def __init__(
        self,
        study: Study,
        context: OutputContext,
        source: StudySource | None,
        engine: SessionEngine,
        owner: str = "",
        origin: dict | None = None,
        session_id: str | None = None,
    ):
        check_image(study.image)
        self.id = session_id or new_session_id()
        self.owner = owner
        self.study, self.context, self.source = study, context, source
        self.origin = dict(origin or {})  # where the image came from ({"dicomweb", "study", "series"} or upload)
        self.shape = volume_shape(study)
        self.work = engine.open(self.id, study)
        self.labels: list[LabelState] = []
        self.lock = engine.session_lock()
        self.created = self.last_used = time.time()

    # ---------------------------------------------------------------- what the session holds
    @property
    def is_3d(self) -> bool:
        return self.study.prompts.is_3d

    def nbytes(self) -> int:
        return int(self.study.image.nbytes + sum(label.nbytes() for label in self.labels))

    def prompts(self) -> Prompts:
        return Prompts(tuple(label.prompt for label in self.labels), self.study.prompts.dims)

    def label(self, name: str, create: bool = False) -> LabelState:
        """The label called `name`; with `create`, a new one if there is none (added to the session only once
        its first interaction succeeds)."""
        name = name.strip()
        for label in self.labels:
            if label.name == name:
                return label
        if not create:
            raise KeyError(f"no label {name!r} in this session")
        if not name or len(name) > MAX_NAME:
            raise StudyError(f"a label's name is 1 to {MAX_NAME} characters")
        if len(self.labels) >= MAX_LABELS:
            raise StudyError(f"a session holds at most {MAX_LABELS} labels")
        return LabelState(name, len(self.labels) + 1, LabelPrompt(), np.zeros(self.shape, dtype=bool))

    def label_map(self) -> np.ndarray:
        """uint16 labels (label k for the k-th label; a 2D image: (H, W)), as Engine.segment paints them."""
        masks = [label.mask for label in self.labels]
        sizes = [label_size(label.prompt, label.mask) for label in self.labels]
        labels = paint(masks, sizes, self.work.overlap()) if masks else np.zeros(self.shape, dtype=np.uint16)
        return labels if self.is_3d else labels[0]

    def volume_ml(self, label: LabelState) -> float | None:
        spacing = self.study.spacing
        if not self.is_3d or spacing is None or len(spacing) < 3:
            return None
        return float(label.mask.sum() * float(np.prod(spacing[:3])) / 1000.0)

    # ---------------------------------------------------------------- interactions
    def _check_box(self, coords: list[float]) -> Box:
        width = 6 if self.is_3d else 4
        if len(coords) != width:
            raise StudyError(f"a box on this {'3D' if self.is_3d else '2D'} image has {width} coordinates")
        box = Box(tuple(coords), VOXEL)
        check_boxes(np.asarray([coords], dtype=np.float64), self.study.image.shape, self.is_3d)
        return box

    def _check_click(self, point: list[float], positive: bool) -> Click:
        dims = 3 if self.is_3d else 2
        if len(point) != dims:
            raise StudyError(f"a click on this {dims}D image is [x, y{', z' if dims == 3 else ''}]")
        click = Click(tuple(float(v) for v in point), bool(positive), VOXEL)
        check_clicks(Prompts((LabelPrompt(None, (click,)),), dims), self.study.image.shape, self.is_3d)
        return click

    def interact(
        self, name: str, box: list[float] | None = None, point: list[float] | None = None, positive: bool = True
    ) -> Change:
        """A box (restarts the label) or a click (one refinement step) on the label called `name`."""
        if (box is None) == (point is None):
            raise StudyError("an interaction is a box or a click, one of them")
        with self.lock:
            started = time.perf_counter()
            label = self.label(name, create=True)
            version = new_version()
            if box is not None:
                new_box = self._check_box(box)
                prompt = LabelPrompt(new_box)
                mask = self.work.box(label, new_box, version)
            else:
                click = self._check_click(point or [], positive)
                if label.prompt.box is None and not label.prompt.foreground and not click.foreground:
                    raise StudyError(f"label {name!r} starts with a box or a foreground click")
                mask = self.work.click(label, click, version)
                prompt = LabelPrompt(label.prompt.box, (*label.prompt.clicks, click))
            changed = _changed(label.mask, mask)
            label.undo.append(Step(label.prompt, _pack(label.mask, changed)))
            label.redo.clear()
            label.prompt, label.mask, label.version = prompt, mask, version
            if label not in self.labels:
                self.labels.append(label)
            self.last_used = time.time()
            return Change(label, changed, time.perf_counter() - started, self.work.where)

    def undo(self, name: str) -> Change:
        return self._step(name, forward=False)

    def redo(self, name: str) -> Change:
        return self._step(name, forward=True)

    def _step(self, name: str, forward: bool) -> Change:
        with self.lock:
            started = time.perf_counter()
            label = self.label(name)
            source, target = (label.redo, label.undo) if forward else (label.undo, label.redo)
            if not source:
                raise StudyError(f"nothing to {'redo' if forward else 'undo'} for label {name!r}")
            step = source.pop()
            changed = sorted(step.slices)
            target.append(Step(label.prompt, _pack(label.mask, changed)))
            mask = label.mask.copy()
            for z, packed in step.slices.items():
                mask[z] = _unpack(packed)
            label.prompt, label.mask, label.version = step.prompt, mask, new_version()
            self.last_used = time.time()
            return Change(label, changed, time.perf_counter() - started, GATEWAY)

    def close(self) -> None:
        """Closed (deleted or idle): whoever computed its steps drops what it keeps of it."""
        self.work.close()

    def set_colour(self, name: str, colour) -> LabelState:
        """Choose the label's display colour: the viewer's overlay, the SEG's RecommendedDisplayCIELabValue and the
        RTSTRUCT's ROIDisplayColor of that segment. KeyError for a label the session lacks; StudyError for a
        colour that is not three integers 0..255."""
        try:
            rgb = check_colour(colour)
        except (TypeError, ValueError) as error:
            raise StudyError(str(error)) from None
        with self.lock:
            label = self.label(name)
            label.colour = rgb
            self.last_used = time.time()
            return label

    # ---------------------------------------------------------------- results
    def describe(self, label: LabelState) -> dict:
        return {
            "name": label.name,
            "number": label.number,
            "box": list(label.prompt.box.coords) if label.prompt.box else None,
            "clicks": [{"point": list(c.point), "positive": c.foreground} for c in label.prompt.clicks],
            "volume_ml": self.volume_ml(label),
            "colour": list(label.display_colour()),
            "can_undo": bool(label.undo),
            "can_redo": bool(label.redo),
        }

    def answer(self, change: Change) -> dict:
        label = change.label
        return {
            "label": label.name,
            "number": label.number,
            "changed": change.changed,
            "masks": {str(z): rle(label.mask[z]) for z in change.changed},
            "seconds": round(change.seconds, 4),
            "worker": change.worker,
            "volume_ml": self.volume_ml(label),
            "colour": list(label.display_colour()),
        }

    def outcome(self) -> tuple[StudyOutcome, OutputContext]:
        """The label map as an outcome for the study formats' writers, with the session's label names."""
        if not self.labels:
            raise StudyError("the session has no labels yet: draw a box or click first")
        context = replace(
            self.context,
            segment_labels=tuple(label.name for label in self.labels),
            segment_colours=tuple(label.colour for label in self.labels),
        )
        outcome = StudyOutcome(name=self.study.study_id, labels=self.label_map(), context=context)
        outcome.metrics = {"provenance": {"strategy": "interactive", "note": "interactive session"}}
        return outcome, context

    def write_results(self, folder: Path, dicom_formats: tuple[str, ...] = ("seg",)) -> dict[str, Path]:
        """The session's result files in `folder`: labels.npz always; the source format's SEG (and RTSTRUCT when
        asked) / NIfTI where it gives them (a DICOM series: its SEG and a NIfTI on its grid; a NIfTI: a NIfTI)."""
        from producer.formats.npz import write_segs
        from producer.formats.registry import format_of
        from producer.outputs import OutputWriter

        outcome, _ = self.outcome()
        folder.mkdir(parents=True, exist_ok=True)
        files = {"npz": folder / "labels.npz"}
        write_segs(files["npz"], outcome.labels)
        if self.source is not None:
            writer = OutputWriter(folder, dicom_formats)
            writer.write(self.source, outcome)
            if not outcome.ok:
                raise StudyError(outcome.error)
            offered = format_of(self.source).downloads(writer.folder, self.source, outcome)
            files.update({kind: folder / name for kind, name in offered.items()})
            rtstruct = folder / f"{self.source.name}.rtstruct.dcm"
            if "rtstruct" in dicom_formats and rtstruct.is_file():
                files["rtstruct"] = rtstruct
        return files


class LocalWork:
    """A session's labels on the gateway's own engine (LabelSegmenter's steps)."""

    where = GATEWAY

    def __init__(self, segmenter: LabelSegmenter):
        self.segmenter = segmenter

    def box(self, label: LabelState, box: Box, version: str) -> np.ndarray:
        return self.segmenter.box_mask(box)

    def click(self, label: LabelState, click: Click, version: str) -> np.ndarray:
        return self.segmenter.click(label.mask, label.prompt.clicks, click).mask

    def overlap(self) -> str:
        return self.segmenter.engine.routing.route(self.segmenter.study.modality).overlap

    def close(self) -> None:
        """Drop the image's slice embeddings from the shared engine's cache (a session of the same image still open
        re-encodes them: slower, the same masks)."""
        from worker.engine.engine import study_key

        self.segmenter.engine.cache.forget(study_key(self.segmenter.study))


class LocalSessions:
    """The engine every session of a service shares, made on first use, and the lock that lets one interaction
    (or one session's set-up) use it at a time."""

    mode = "embedded"

    def __init__(self, settings: object | None = None):
        self.settings = settings  # worker.engine.engine.EngineSettings; None: the defaults
        self.lock = threading.Lock()
        self._engine = None

    def segmenter(self, study: Study) -> LabelSegmenter:
        from worker.engine.engine import Engine, EngineSettings

        with self.lock:
            if self._engine is None:
                self._engine = Engine(self.settings or EngineSettings())  # type: ignore[arg-type]
            return LabelSegmenter(self._engine, study)

    def open(self, session_id: str, study: Study) -> LocalWork:
        return LocalWork(self.segmenter(study))

    def session_lock(self) -> threading.Lock:
        return self.lock  # one engine: one interaction at a time, whichever session


class SessionLimit(Exception):
    """Too many sessions or bytes open (HTTP 429)."""


@dataclass(frozen=True)
class SessionLimits:
    max_sessions: int = 8
    max_bytes: int = 4 << 30
    idle_seconds: float = 1800.0


class SessionStore:
    """The open sessions, bounded; idle ones closed when the store is next looked at. A closed session's work is
    closed (producer.sessions.LabelWork.close: it may tell the fleet) after the store's lock is let go."""

    def __init__(self, limits: SessionLimits | None = None, on_close: Callable[[Session, str], None] | None = None):
        self.limits = limits or SessionLimits()
        self.on_close = on_close
        self._sessions: dict[str, Session] = {}
        self._lock = threading.Lock()
        self._closing: list[Session] = []

    @contextmanager
    def _locked(self) -> Iterator[None]:
        closing: list[Session] = []
        try:
            with self._lock:
                try:
                    yield
                finally:
                    closing, self._closing = self._closing, []
        finally:
            for session in closing:
                session.close()

    def _expire(self) -> None:
        now = time.time()
        for session in list(self._sessions.values()):
            if now - session.last_used > self.limits.idle_seconds and not session.lock.locked():
                self._close(session.id, "idle")

    def _close(self, session_id: str, why: str) -> Session | None:
        session = self._sessions.pop(session_id, None)
        if session is not None:
            self._closing.append(session)
            if self.on_close is not None:
                self.on_close(session, why)
        return session

    def check_room(self, extra_bytes: int = 0) -> None:
        with self._locked():
            self._expire()
            if len(self._sessions) >= self.limits.max_sessions:
                raise SessionLimit(f"{len(self._sessions)} sessions are open, the most this service keeps")
            held = sum(session.nbytes() for session in self._sessions.values())
            if held + extra_bytes > self.limits.max_bytes:
                raise SessionLimit(f"open sessions hold {held >> 20} MB; this one would pass the service's bound")

    def add(self, session: Session) -> Session:
        self.check_room(session.nbytes())
        with self._locked():
            self._sessions[session.id] = session
        return session

    def get(self, session_id: str) -> Session:
        with self._locked():
            self._expire()
            session = self._sessions.get(session_id)
        if session is None:
            raise KeyError(session_id)
        return session

    def close(self, session_id: str, why: str = "deleted") -> bool:
        with self._locked():
            closed = self._close(session_id, why) is not None
        return closed

    def owned_by(self, owner: str | None) -> list[Session]:
        with self._locked():
            self._expire()
            owned = [s for s in self._sessions.values() if owner is None or s.owner == owner]
        return owned

    def __len__(self) -> int:
        return len(self._sessions)
