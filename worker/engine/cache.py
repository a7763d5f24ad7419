"""A least-recently-used store of slice embeddings, bounded in bytes.

One per process; keys name the study content, the model, the view and the slice, so all boxes of a study
(and a re-run of the same study) share it. Values are owned copies, never views of an inference buffer.
`forget` drops one study's entries (a closed interactive session's, from another thread: the cache takes a lock;
the computing itself runs outside it).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass

import numpy as np


@dataclass
class CacheStats:
    hits: int = 0
    misses: int = 0
    evictions: int = 0


class EmbeddingCache:
    def __init__(self, max_bytes: int):
        if max_bytes < 0:
            raise ValueError("cache size must be >= 0 bytes")
        self.max_bytes = int(max_bytes)
        self.stats = CacheStats()
        self._items: OrderedDict[Hashable, np.ndarray] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    @property
    def nbytes(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._items)

    def get_or_compute(self, key: Hashable, compute: Callable[[], np.ndarray]) -> np.ndarray:
        with self._lock:
            found = self._items.get(key)
            if found is not None:
                self._items.move_to_end(key)
                self.stats.hits += 1
                return found
            self.stats.misses += 1
        value = np.array(compute(), copy=True)
        self._put(key, value)
        return value

    def forget(self, study: str) -> int:
        """Drop every entry of one study (keys are tuples whose first element is the study's key); how many."""
        with self._lock:
            gone = [key for key in self._items if isinstance(key, tuple) and key and key[0] == study]
            for key in gone:
                self._bytes -= self._items.pop(key).nbytes
            return len(gone)

    def _put(self, key: Hashable, value: np.ndarray) -> None:
        if value.nbytes > self.max_bytes:
            return
        with self._lock:
            previous = self._items.pop(key, None)
            if previous is not None:
                self._bytes -= previous.nbytes
            self._items[key] = value
            self._bytes += value.nbytes
            while self._bytes > self.max_bytes:
                _, evicted = self._items.popitem(last=False)
                self._bytes -= evicted.nbytes
                self.stats.evictions += 1
