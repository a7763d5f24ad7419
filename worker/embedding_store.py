"""Exact arrays in the blob store, and claims on pieces of work, for a study split across workers.

- Codec: an array travels as its raw bytes behind a small JSON header (dtype, shape, blake2b of the bytes);
  reading checks all three against what the reader expects, so a slice embedding arrives bit for bit as it
  left the encoder (float32) and a truncated or foreign blob is refused, never guessed at. No pickle, no npz
  (a float32 embedding hardly compresses: 4 MiB either way, and raw bytes cost no inflate time).
- EmbeddingBlobs: slice embeddings of one embedding space (worker.engine.engine.Engine.embedding_space),
  written once (put_once: a second encoding of the same slice is identical and is dropped), with a TTL.
- Claims: `SET NX` with a TTL in Redis, one per piece of work (a slice, a PET view, the vote). A claim is a
  lease: whoever holds it is doing that work now; if it dies the claim lapses and someone else does it. Renewal
  and release only touch a claim the caller still owns (compare-and-set scripts).
"""

from __future__ import annotations

import hashlib
import json
import logging

import numpy as np

from worker.contract.arrays import StoreError
from worker.contract.keys import Keys
from worker.store import BlobStore

log = logging.getLogger(__name__)
MAGIC = b"LMSARR1\n"
EMBEDDING_DTYPE = np.dtype("<f4")
HEADER_LIMIT = 4096


def pack_exact(array: np.ndarray) -> bytes:
    """An array as header + raw little-endian bytes (C order)."""
    array = np.ascontiguousarray(array)
    if array.dtype.byteorder == ">":
        array = array.astype(array.dtype.newbyteorder("<"))
    data = array.tobytes()
    header = json.dumps(
        {
            "dtype": array.dtype.str,
            "shape": list(array.shape),
            "blake2b": hashlib.blake2b(data, digest_size=16).hexdigest(),
        }
    ).encode()
    return MAGIC + len(header).to_bytes(4, "little") + header + data


def unpack_exact(blob: bytes, dtype, shape: tuple[int, ...] | None = None) -> np.ndarray:
    """The array packed by pack_exact, checked: its dtype must be `dtype` (and its shape `shape` if given), its
    bytes complete and matching their digest; StoreError otherwise."""
    view = memoryview(blob)
    if len(blob) < len(MAGIC) + 4 or bytes(view[: len(MAGIC)]) != MAGIC:
        raise StoreError("not an exact-array blob (bad magic)")
    size = int.from_bytes(view[len(MAGIC) : len(MAGIC) + 4], "little")
    start = len(MAGIC) + 4
    if not 0 < size <= HEADER_LIMIT or len(blob) < start + size:
        raise StoreError("exact-array blob: bad header length")
    try:
        header = json.loads(bytes(view[start : start + size]))
        found = np.dtype(header["dtype"])
        found_shape = tuple(int(n) for n in header["shape"])
        digest = str(header["blake2b"])
    except (ValueError, KeyError, TypeError) as error:
        raise StoreError(f"exact-array blob: unreadable header ({error})") from None
    wanted = np.dtype(dtype)
    if found != wanted or found.hasobject:
        raise StoreError(f"exact-array blob holds {found}, expected {wanted}")
    if shape is not None and found_shape != tuple(shape):
        raise StoreError(f"exact-array blob has shape {found_shape}, expected {tuple(shape)}")
    data = view[start + size :]
    if len(data) != int(np.prod(found_shape, dtype=np.int64)) * found.itemsize:
        raise StoreError(f"exact-array blob: {len(data)} bytes for shape {found_shape} of {found}")
    if hashlib.blake2b(data, digest_size=16).hexdigest() != digest:
        raise StoreError("exact-array blob: bytes do not match their digest")
    return np.frombuffer(data, dtype=found).reshape(found_shape).copy()


class EmbeddingBlobs:
    """The stored slice embeddings of one embedding space."""

    def __init__(self, store: BlobStore, space: str, ttl: int):
        self.store, self.space, self.ttl = store, space, int(ttl)

    def _key(self, view: str, index: int) -> str:
        return Keys.embedding_blob(self.space, view, index)

    def put(self, view: str, index: int, embedding: np.ndarray) -> bool:
        """Store once; False if this slice was stored already (by another part: the same bytes)."""
        return self.store.put_once(
            self._key(view, index), pack_exact(embedding.astype(EMBEDDING_DTYPE, copy=False)), self.ttl
        )

    def get(self, view: str, index: int) -> np.ndarray | None:
        """The slice's embedding, or None if it is not stored (or unreadable: then it is dropped)."""
        blob = self.store.get(self._key(view, index))
        if blob is None:
            return None
        try:
            return unpack_exact(blob, EMBEDDING_DTYPE)
        except StoreError as error:
            log.warning(
                "embedding %s/%s/%d unreadable (%s): dropped, encoded again", self.space[:12], view, index, error
            )
            self.store.delete(self._key(view, index))
            return None

    def exists(self, view: str, index: int) -> bool:
        return self.store.exists(self._key(view, index))

    def delete(self, view: str, indices) -> None:
        for index in indices:
            self.store.delete(self._key(view, index))


_RENEW = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('pexpire', KEYS[1], ARGV[2]) end return 0"
_RELEASE = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end return 0"


class Claims:
    """Leases on pieces of work: Redis keys set only if absent, with a TTL."""

    def __init__(self, client, ttl: float):
        self.client = client
        self.ttl_ms = max(100, int(ttl * 1000))
        self._renew = client.register_script(_RENEW)
        self._release = client.register_script(_RELEASE)

    def claim(self, key: str, owner: str) -> bool:
        return bool(self.client.set(key, owner, nx=True, px=self.ttl_ms))

    def holder(self, key: str) -> str | None:
        value = self.client.get(key)
        return value.decode() if value is not None else None

    def renew(self, key: str, owner: str) -> bool:
        """Extend a claim this owner still holds; False if it lapsed (someone else may be doing the work)."""
        return bool(self._renew(keys=[key], args=[owner, self.ttl_ms]))

    def release(self, key: str, owner: str) -> None:
        self._release(keys=[key], args=[owner])
