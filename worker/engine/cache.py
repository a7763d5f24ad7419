"""A least-recently-used store of slice embeddings, bounded in bytes.

One per process; keys name the study content, the model, the view and the slice, so all boxes of a study
(and a re-run of the same study) share it. Values are owned copies, never views of an inference buffer.
"""

from __future__ import annotations

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

    @property
    def nbytes(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._items)

    def get_or_compute(self, key: Hashable, compute: Callable[[], np.ndarray]) -> np.ndarray:
        found = self._items.get(key)
        if found is not None:
            self._items.move_to_end(key)
            self.stats.hits += 1
            return found
        self.stats.misses += 1
        value = np.array(compute(), copy=True)
        self._put(key, value)
        return value

    def _put(self, key: Hashable, value: np.ndarray) -> None:
        if value.nbytes > self.max_bytes:
            return
        self._items[key] = value
        self._bytes += value.nbytes
        while self._bytes > self.max_bytes:
            _, evicted = self._items.popitem(last=False)
            self._bytes -= evicted.nbytes
            self.stats.evictions += 1
