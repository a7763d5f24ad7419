"""Interactive sessions' steps on a fleet worker (worker.contract.sessions): the step, and what a process keeps.

Each worker process keeps a bounded LRU of the sessions it served (LITEMEDSAM_SESSION_CACHE_SESSIONS sessions,
LITEMEDSAM_SESSION_CACHE_MB of images and masks): the session's image (fetched once from the
store by its digest), its LabelSegmenter (on the process's one engine, whose embedding cache keeps the slices
encoded) and each label's last mask under its version. A step whose `base` version this process holds starts from
that mask; any other (a session new to this process, evicted, or a mask version it never made) rebuilds the base
from the label's prompt (LabelSegmenter.label_mask), re-encoding what its cache lacks. Both give the same mask bit
for bit, since a label's mask is a deterministic function of its prompt.

A closed session (the gateway announces its id in Keys.session_closed on DELETE and on its idle timeout) is
dropped by the process's CloseWatcher within about a second: its image, masks and the engine cache's embeddings
of its image (unless another session held here shows the same image).

While a step runs, a thread keeps the step's busy key alive (Keys.session_busy, a TTL of BUSY_TTL); the gateway
reads it to tell a running step from a dead worker. The reply goes onto the step's reply list.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field

import numpy as np

from worker.contract.arrays import StoreError
from worker.contract.identity import image_digest
from worker.contract.keys import Keys
from worker.contract.messages import unpack_image
from worker.contract.prompts import Prompts
from worker.contract.sessions import SessionReply, SessionStep
from worker.contract.settings import SessionSettings
from worker.contract.study import Study, StudyError
from worker.engine.cache import EmbeddingCache
from worker.engine.engine import study_key
from worker.engine.labelwise import LabelSegmenter
from worker.store import BlobStore

log = logging.getLogger(__name__)
BUSY_TTL = 3.0  # seconds the busy key lives without a refresh
BUSY_REFRESH = 1.0
CLOSE_SWEEP = 1.0  # seconds between looks for closed sessions
KNOWN_PER_SESSION = 4  # the cache remembers the image keys of up to 4 x its bound of sessions it held


@dataclass
class Held:
    """One session as this process holds it."""

    study: Study
    segmenter: LabelSegmenter
    masks: dict[int, tuple[str, np.ndarray]] = field(default_factory=dict)  # label -> (version, (D, H, W) bool)

    def nbytes(self) -> int:
        return int(self.study.image.nbytes + sum(mask.nbytes for _, mask in self.masks.values()))


class SessionCache:
    """The sessions a process holds, least recently used first out, bounded in number and bytes; thread-safe (the
    CloseWatcher drops closed ones from its own thread)."""

    def __init__(self, max_sessions: int, max_bytes: int):
        self.max_sessions, self.max_bytes = max_sessions, max_bytes
        self._held: OrderedDict[str, Held] = OrderedDict()
        # session -> its image's embedding key (worker.engine.engine.study_key), kept a while after an eviction so
        # that closing the session still drops its encoded slices from the engine's cache
        self._known: OrderedDict[str, str] = OrderedDict()
        self._lock = threading.RLock()

    @classmethod
    def of(cls, settings: SessionSettings) -> SessionCache:
        return cls(settings.cache_sessions, settings.cache_bytes)

    def get(self, session_id: str) -> Held | None:
        with self._lock:
            held = self._held.get(session_id)
            if held is not None:
                self._held.move_to_end(session_id)
            return held

    def put(self, session_id: str, held: Held) -> None:
        key = study_key(held.study)
        with self._lock:
            self._held[session_id] = held
            self._held.move_to_end(session_id)
            self._known[session_id] = key
            self._known.move_to_end(session_id)
            while len(self._known) > KNOWN_PER_SESSION * self.max_sessions:
                self._known.popitem(last=False)
            self.trim()

    def trim(self) -> None:
        """Drop the least recently used sessions past the bounds (never the most recent one)."""
        with self._lock:
            while len(self._held) > 1 and (
                len(self._held) > self.max_sessions or sum(h.nbytes() for h in self._held.values()) > self.max_bytes
            ):
                evicted, _ = self._held.popitem(last=False)
                log.info("session %s evicted from this worker's cache", evicted[:8])

    def known(self) -> list[str]:
        """The sessions this process holds or held (evicted ones for a while)."""
        with self._lock:
            return list(self._known)

    def drop(self, session_id: str, embeddings: EmbeddingCache | None, key: str | None = None) -> tuple[bool, int]:
        """Forget a closed session: its image, segmenter and masks, and (unless another session held here shows the
        same image) its slices' embeddings; `key`: its image's embedding key where this cache may no longer know it
        (a step that ran while the session was dropped). (whether it was held, embeddings dropped)."""
        with self._lock:
            held = self._held.pop(session_id, None) is not None
            key = self._known.pop(session_id, None) or key
            shared = key is not None and any(self._known.get(other) == key for other in self._held)
        dropped = embeddings.forget(key) if embeddings is not None and key is not None and not shared else 0
        return held, dropped

    def __len__(self) -> int:
        with self._lock:
            return len(self._held)


class CloseWatcher:
    """Drops what this process holds of closed sessions (Keys.session_closed): on a timer in a thread, every
    CLOSE_SWEEP seconds, and before each step (`sweep`). A Redis outage only delays it (logged)."""

    def __init__(self, cache: SessionCache, client, keys: Keys, embeddings: EmbeddingCache | None):
        self.cache, self.client, self.key, self.embeddings = cache, client, keys.session_closed(), embeddings
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="session-close-watcher", daemon=True)

    def start(self) -> CloseWatcher:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.wait(CLOSE_SWEEP):
            try:
                self.sweep()
            except Exception as error:  # the next sweep tries again
                log.warning("closed sessions not looked up: %s", error)

    def sweep(self) -> list[str]:
        """Drop every known session the gateway closed; their ids."""
        known = self.cache.known()
        if not known:
            return []
        scores = self.client.zmscore(self.key, known)
        closed = [session for session, score in zip(known, scores, strict=True) if score is not None]
        for session in closed:
            held, dropped = self.cache.drop(session, self.embeddings)
            log.info(
                "session %s closed: dropped from this worker (%s, %d slice embedding(s))",
                session[:8],
                "image and masks" if held else "not held",
                dropped,
            )
        return closed

    def settle(self, session_id: str, key: str) -> bool:
        """After a step of `session_id` (image embedding key `key`): if the session was closed while the step ran,
        drop it again with whatever the step put back or encoded after the sweep dropped it. Whether it was."""
        if self.client.zscore(self.key, session_id) is None:
            return False
        held, dropped = self.cache.drop(session_id, self.embeddings, key)
        log.info("session %s closed during a step: dropped again (%d slice embedding(s))", session_id[:8], dropped)
        return True


_cache: SessionCache | None = None
_watcher: CloseWatcher | None = None


def process_cache(ctx) -> SessionCache:
    """This worker process's sessions (made on first use, in the child that runs the steps, with the thread that
    drops closed ones)."""
    global _cache, _watcher
    if _cache is None:
        _cache = SessionCache.of(SessionSettings.from_env())  # LITEMEDSAM_SESSION_CACHE_SESSIONS and _CACHE_MB
        _watcher = CloseWatcher(_cache, ctx.ledger.client, ctx.keys, getattr(ctx.engine, "cache", None)).start()
    return _cache


def close_watcher() -> CloseWatcher | None:
    return _watcher


def load_study(store: BlobStore, step: SessionStep) -> Study:
    """The session's image from the store, checked against its digest, as a study without prompts."""
    blob = store.get(Keys.input_blob(step.image_digest))
    if blob is None:
        raise StoreError(f"session image {step.image_digest[:12]} is no longer in the store")
    image = unpack_image(blob)
    if image_digest(image) != step.image_digest or tuple(image.shape) != tuple(step.image_shape):
        raise StoreError(f"session image {step.image_digest[:12]} in the store does not match its digest")
    return Study(step.study_id, step.modality, image, Prompts((), step.dims), step.spacing)


def run_step(engine, store: BlobStore, cache: SessionCache, step: SessionStep, node: str) -> SessionReply:
    """The label's mask after the step, as a reply (an error reply for a step that cannot be)."""
    started = time.perf_counter()
    try:
        held = cache.get(step.session_id)
        if held is None or held.study.image.shape != tuple(step.image_shape):
            study = load_study(store, step)
            held = Held(study, LabelSegmenter(engine, study))
            cache.put(step.session_id, held)
        segmenter = held.segmenter
        kept = held.masks.get(step.label)
        holds_base = kept is not None and bool(step.base) and kept[0] == step.base
        base = kept[1] if kept is not None and holds_base else None
        replayed = False
        if step.step == "box":
            mask = segmenter.box_mask(step.new_box())
        else:
            prompt = step.label_prompt()
            if base is None:
                base = segmenter.label_mask(prompt)
                replayed = bool(step.base)
            mask = segmenter.click(base, prompt.clicks, step.new_click()).mask
        if kept is not None and holds_base:
            changed = np.flatnonzero((kept[1] != mask).any(axis=(1, 2))).tolist()
            slices, full = {z: mask[z] for z in changed}, False
        else:
            slices, full = {z: mask[z] for z in range(mask.shape[0])}, True
        held.masks[step.label] = (step.version, mask)
        cache.put(step.session_id, held)  # held again even if a close dropped it mid-step: `settle` then drops it
        overlap = engine.routing.route(step.modality).overlap
        return SessionReply(node, step.version, slices, full, replayed, time.perf_counter() - started, overlap)
    except StudyError as error:
        return SessionReply(node, step.version, error=str(error), invalid=True)
    except (StoreError, LookupError, ValueError) as error:
        log.error("session %s step %s failed: %s", step.session_id[:8], step.request_id[:8], error)
        return SessionReply(node, step.version, error=f"{type(error).__name__}: {error}")


class Busy:
    """Keeps a step's busy key alive from a thread while the step runs (context manager)."""

    def __init__(self, client, key: str):
        self.client, self.key = client, key
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="session-busy", daemon=True)

    def _beat(self) -> None:
        while not self._stop.wait(BUSY_REFRESH):
            try:
                self.client.set(self.key, b"1", px=int(BUSY_TTL * 1000))
            except Exception as error:  # the gateway then re-sends; the step's reply still counts if it lands
                log.warning("session busy mark not refreshed: %s", error)

    def __enter__(self) -> Busy:
        self.client.set(self.key, b"1", px=int(BUSY_TTL * 1000))
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(BUSY_REFRESH * 2)


def serve_step(ctx, cache: SessionCache, step: SessionStep, watcher: CloseWatcher | None = None) -> SessionReply:
    """Run one step with its busy mark alive, then push its reply (the reply first, then the mark goes). Closed
    sessions are dropped first (`watcher`)."""
    client, keys = ctx.ledger.client, ctx.keys
    if watcher is not None:
        try:
            watcher.sweep()
        except Exception as error:  # the step goes on; the timer tries again
            log.warning("closed sessions not looked up: %s", error)
    busy_key = keys.session_busy(step.request_id)
    with Busy(client, busy_key):
        reply = run_step(ctx.engine, ctx.store, cache, step, ctx.node)
        reply_key = keys.session_reply(step.request_id)
        with client.pipeline() as pipe:
            pipe.rpush(reply_key, reply.to_bytes())
            pipe.expire(reply_key, step.reply_ttl)
            pipe.execute()
    client.delete(busy_key)
    if watcher is not None and (held := cache.get(step.session_id)) is not None:
        try:
            watcher.settle(step.session_id, study_key(held.study))
        except Exception as error:  # the timer's sweep drops it once Redis answers
            log.warning("closed sessions not looked up: %s", error)
    log.info(
        "session %s label %d %s: %s%s in %.3f s",
        step.session_id[:8],
        step.label,
        step.step,
        "error " + reply.error if reply.error else f"{len(reply.slices)} slice(s)",
        " (rebuilt from its prompt)" if reply.replayed else "",
        reply.seconds,
    )
    return reply
