"""The coordinator's embedding source for a study split by slices (worker.fanout): take, wait or encode.

For a slice the engine's cache lacks, in this order: (1) a slice this coordinator encoded ahead (below), (2) the
embedding a part stored (fetched ahead of use by a background thread for the next few slices of the order), (3) if
another worker holds a live claim on the slice: rather than wait, encode ahead here the next slice of the order
that nobody holds (within `prefetch` positions; claimed, kept in memory until the propagation reaches it), then
look again; only when there is none, wait for the claim's result (at most until it lapses, and never longer than
`wait_max`), (4) claim it and encode it here. So the coordinator decodes whatever the parts have ready and encodes
the rest itself, and neither side idles while the other works. Before each slice the coordinator publishes its
position in the order; parts walk their ranges forward and skip what it has passed. The engine sees only the
EmbeddingSource protocol: no Redis there.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass

import numpy as np

from worker.contract.keys import Keys
from worker.embedding_store import Claims, EmbeddingBlobs
from worker.fanout import SplitBoard

log = logging.getLogger(__name__)
POLL = 0.02  # seconds between looks at a claimed slice


@dataclass
class SourceStats:
    encoded: int = 0  # slices this coordinator encoded (encoded_ahead included)
    encoded_ahead: int = 0  # ... of which while a part held the slice it needed (outside the engine's own count)
    ahead_seconds: float = 0.0  # their encoder time (preprocess included)
    fetched: int = 0  # embeddings taken from the store (encoded by parts)
    prefetched: int = 0  # ... of which the background thread had fetched before they were needed
    waits: int = 0  # slices a live claim of another worker made it wait for
    wait_seconds: float = 0.0
    fetch_seconds: float = 0.0  # time the propagation spent getting stored embeddings (not prefetched)
    gave_up_waiting: int = 0  # waits that hit wait_max: encoded here anyway
    store_errors: int = 0  # slices encoded here because Redis or the store failed

    def as_dict(self) -> dict:
        data = asdict(self)
        data["wait_seconds"] = round(self.wait_seconds, 3)
        data["ahead_seconds"] = round(self.ahead_seconds, 3)
        data["fetch_seconds"] = round(self.fetch_seconds, 3)
        return data


def _store_errors() -> tuple[type[BaseException], ...]:
    import redis

    from worker.contract.arrays import StoreError

    return (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, StoreError, OSError)


class CooperativeSource:
    def __init__(
        self,
        blobs: EmbeddingBlobs,
        claims: Claims,
        keys: Keys,
        board: SplitBoard,
        orders: dict[str, list[int]],
        owner: str,
        prefetch: int,
        wait_max: float,
        encode_slice: Callable[[str, int], np.ndarray] | None = None,
    ):
        """`encode_slice(view, index)`: this worker's embedding of any slice of the study (for encoding ahead;
        None: never encode ahead, wait for claimed slices)."""
        self.blobs, self.claims, self.keys, self.board = blobs, claims, keys, board
        self.orders = orders
        self.positions = {view: {z: p for p, z in enumerate(order)} for view, order in orders.items()}
        self.owner, self.prefetch, self.wait_max = owner, int(prefetch), float(wait_max)
        self.encode_slice = encode_slice
        self.stats = SourceStats()
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="prefetch") if self.prefetch > 0 else None
        self._pending: dict[tuple[str, int], Future] = {}
        self._served: set[tuple[str, int]] = set()
        self._ahead: dict[tuple[str, int], np.ndarray] = {}  # encoded here ahead of use, claim still held

    def embedding(self, view: str, index: int, encode: Callable[[], np.ndarray]) -> np.ndarray:
        position = self.positions.get(view, {}).get(index)
        if position is None:  # not a slice of the plan (cannot happen with the same boxes): plain encode
            self.stats.encoded += 1
            return encode()
        try:
            return self._cooperate(view, index, position, encode)
        except _store_errors() as error:  # Redis or the store away for longer than its retries: work alone
            log.warning("slice %s/%d: store or claims unavailable (%s): encoded here", view, index, error)
            self.stats.store_errors += 1
            self.stats.encoded += 1
            return encode()

    def _cooperate(self, view: str, index: int, position: int, encode: Callable[[], np.ndarray]) -> np.ndarray:
        self.board.set_cursor(view, position)
        self._served.add((view, index))
        self._prefetch_after(view, position)
        ahead = self._ahead.pop((view, index), None)
        if ahead is not None:  # its claim lapses by itself: parts skip what the cursor has passed
            return ahead
        claim = self.keys.slice_claim(self.blobs.space, view, index)
        found = self._stored(view, index)
        if found is not None:
            return found
        deadline = time.monotonic() + self.wait_max
        while not self.claims.claim(claim, self.owner):
            found = self._stored(view, index)
            if found is not None:
                return found
            if self._encode_ahead(view, position):
                continue  # a part still holds this slice: something useful was done meanwhile; look again
            found = self._wait(view, index, claim, deadline)
            if found is not None:
                return found
            if time.monotonic() >= deadline:  # a claim renewed by someone too slow: do it here, once
                self.stats.gave_up_waiting += 1
                break
        else:  # claimed: but a part may have stored it and let go of its claim since the last look
            found = self._stored(view, index)
            if found is not None:
                return found
        self.stats.encoded += 1
        return encode()

    def _encode_ahead(self, view: str, position: int) -> bool:
        """Encode the next slice of the order after `position` (within `prefetch`) that no one holds, is not
        stored and is not already here; keep it (and its claim) until the propagation reaches it."""
        if self.encode_slice is None:
            return False
        for ahead in self.orders[view][position + 1 : position + 1 + max(1, self.prefetch)]:
            key = (view, ahead)
            if key in self._ahead or key in self._served or self.blobs.exists(view, ahead):
                continue
            if not self.claims.claim(self.keys.slice_claim(self.blobs.space, view, ahead), self.owner):
                continue
            started = time.perf_counter()
            self._ahead[key] = self.encode_slice(view, ahead)
            self.stats.ahead_seconds += time.perf_counter() - started
            self.stats.encoded += 1
            self.stats.encoded_ahead += 1
            return True
        return False

    def _stored(self, view: str, index: int) -> np.ndarray | None:
        pending = self._pending.pop((view, index), None)
        if pending is not None:
            found = pending.result()
            if found is not None:
                self.stats.fetched += 1
                self.stats.prefetched += 1
                return found
        started = time.perf_counter()
        found = self.blobs.get(view, index)
        self.stats.fetch_seconds += time.perf_counter() - started
        if found is not None:
            self.stats.fetched += 1
        return found

    def _wait(self, view: str, index: int, claim: str, deadline: float) -> np.ndarray | None:
        """Wait while another worker holds the slice's claim; its embedding once stored, else None."""
        started = time.monotonic()
        self.stats.waits += 1
        try:
            while time.monotonic() < deadline:
                found = self.blobs.get(view, index)
                if found is not None:
                    self.stats.fetched += 1
                    return found
                if self.claims.holder(claim) is None:  # stored just now, or released without a blob / lapsed
                    found = self.blobs.get(view, index)
                    if found is not None:
                        self.stats.fetched += 1
                    return found
                time.sleep(POLL)
            return None
        finally:
            self.stats.wait_seconds += time.monotonic() - started

    def _prefetch_after(self, view: str, position: int) -> None:
        if self._pool is None:
            return
        order = self.orders[view]
        for ahead in order[position + 1 : position + 1 + self.prefetch]:
            key = (view, ahead)
            if key in self._served or key in self._ahead:
                continue
            pending = self._pending.get(key)
            # look again for a slice that was not stored at the last look (parts work just ahead of the cursor)
            if pending is None or (pending.done() and not pending.cancelled() and pending.result() is None):
                self._pending[key] = self._pool.submit(self._fetch_quietly, view, ahead)

    def _fetch_quietly(self, view: str, index: int) -> np.ndarray | None:
        try:
            return self.blobs.get(view, index)
        except Exception as error:  # the propagation fetches it again itself
            log.warning("prefetch of slice %s/%d failed: %s", view, index, error)
            return None

    def close(self) -> None:
        for view, index in self._ahead:  # not reached (the study failed): let parts of a retry have them
            try:
                self.claims.release(self.keys.slice_claim(self.blobs.space, view, index), self.owner)
            except Exception:  # the claim lapses by itself
                pass
        self._ahead.clear()
        if self._pool is not None:
            for future in self._pending.values():
                future.cancel()
            self._pool.shutdown(wait=True)
            self._pending.clear()
