import numpy as np
import pytest

from worker.engine.cache import EmbeddingCache


def test_lru_bounded_in_bytes_and_counts():
    block = np.zeros(1024, np.uint8)
    cache = EmbeddingCache(max_bytes=3 * 1024)
    for key in "abc":
        cache.get_or_compute(key, lambda: block)
    assert cache.nbytes == 3 * 1024 and cache.stats.misses == 3
    cache.get_or_compute("a", pytest.fail)  # hit: refreshes "a"
    cache.get_or_compute("d", lambda: block)  # evicts the least recently used: "b"
    assert cache.stats.hits == 1 and cache.stats.evictions == 1 and len(cache) == 3
    calls = []
    cache.get_or_compute("b", lambda: calls.append(1) or block)
    assert calls == [1]
    cache.get_or_compute("a", pytest.fail)


def test_stores_a_copy_not_the_callers_buffer():
    buffer = np.arange(10, dtype=np.float32)
    cache = EmbeddingCache(max_bytes=1 << 20)
    cache.get_or_compute("k", lambda: buffer)
    buffer[:] = -1  # an inference request reusing its output buffer
    assert cache.get_or_compute("k", pytest.fail)[3] == 3


def test_value_larger_than_bound_is_not_kept():
    cache = EmbeddingCache(max_bytes=10)
    cache.get_or_compute("big", lambda: np.zeros(100, np.uint8))
    assert len(cache) == 0 and cache.nbytes == 0
