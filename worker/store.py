"""The blob store: study images and result masks travel here as compressed npz bytes, never in a message.

Two backends behind one small interface, chosen by URL:
- `redis://host:port/db` (default: the broker's Redis): every blob has a TTL.
- `file:///shared/path`: a folder every producer and worker mounts (NFS, SMB, a bind mount) for studies too
  big for Redis values. Expiry is the file's mtime set into the future; expired files read as missing and
  `sweep()` deletes them.

`put_once` is write-once (Redis SET NX; a hard link in the folder), so a duplicate delivery of a study can
never replace a stored result with a second one. Arrays are read with allow_pickle=False: no pickle anywhere.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Protocol
from urllib.parse import unquote, urlparse

from worker.contract.arrays import StoreError
from worker.contract.files import atomic_path

REDIS_VALUE_LIMIT = 500 << 20  # Redis refuses values above 512 MiB; keep a margin


class BlobStore(Protocol):
    def put(self, key: str, blob: bytes, ttl: int) -> None: ...

    def put_once(self, key: str, blob: bytes, ttl: int) -> bool: ...

    def get(self, key: str) -> bytes | None: ...

    def exists(self, key: str) -> bool: ...

    def touch(self, key: str, ttl: int) -> bool: ...

    def delete(self, key: str) -> None: ...


class RedisStore:
    def __init__(self, client, prefix: str):
        self.client = client
        self.prefix = prefix

    def _key(self, key: str) -> str:
        return f"{self.prefix}:blob:{key}"

    @staticmethod
    def _check_size(key: str, blob: bytes) -> None:
        if len(blob) > REDIS_VALUE_LIMIT:
            raise StoreError(
                f"{key}: {len(blob) >> 20} MiB is too big for a Redis value; "
                "use a shared-folder store (LITEMEDSAM_STORE=file:///path)"
            )

    def put(self, key: str, blob: bytes, ttl: int) -> None:
        self._check_size(key, blob)
        self.client.set(self._key(key), blob, ex=ttl)

    def put_once(self, key: str, blob: bytes, ttl: int) -> bool:
        self._check_size(key, blob)
        return bool(self.client.set(self._key(key), blob, ex=ttl, nx=True))

    def get(self, key: str) -> bytes | None:
        return self.client.get(self._key(key))

    def exists(self, key: str) -> bool:
        return bool(self.client.exists(self._key(key)))

    def touch(self, key: str, ttl: int) -> bool:
        """Extend a blob's life; False if it is gone."""
        return bool(self.client.expire(self._key(key), ttl))

    def delete(self, key: str) -> None:
        self.client.delete(self._key(key))


STAGING_PREFIX = ".staging-"  # a blob being written (the sweep gives it an hour)


class FileStore:
    def __init__(self, root: Path, prefix: str):
        self.root = Path(root) / prefix
        self.root.mkdir(parents=True, exist_ok=True)

    def _path(self, key: str) -> Path:
        if ".." in key.split("/") or key.startswith("/"):
            raise ValueError(f"bad blob key {key!r}")
        return self.root / key

    @staticmethod
    def _stage(staged: Path, blob: bytes, ttl: int) -> None:
        with os.fdopen(os.open(staged, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb") as out:  # owner only
            out.write(blob)
        expires = time.time() + ttl  # the expiry is the blob's mtime
        os.utime(staged, (expires, expires))

    def put(self, key: str, blob: bytes, ttl: int) -> None:
        with atomic_path(self._path(key), prefix=STAGING_PREFIX) as staged:
            self._stage(staged, blob, ttl)

    def put_once(self, key: str, blob: bytes, ttl: int) -> bool:
        path = self._path(key)
        try:  # published with a hard link: atomic and fails if the name exists (write-once on a shared folder)
            with atomic_path(path, exclusive=True, prefix=STAGING_PREFIX) as staged:
                self._stage(staged, blob, ttl)
                self._expire_if_due(path)
            return True
        except FileExistsError:
            return False

    @staticmethod
    def _expire_if_due(path: Path) -> bool:
        try:
            if path.stat().st_mtime < time.time():
                path.unlink(missing_ok=True)
                return True
        except FileNotFoundError:
            return True
        return False

    def get(self, key: str) -> bytes | None:
        path = self._path(key)
        if self._expire_if_due(path):
            return None
        try:
            return path.read_bytes()
        except FileNotFoundError:
            return None

    def exists(self, key: str) -> bool:
        return not self._expire_if_due(self._path(key))

    def touch(self, key: str, ttl: int) -> bool:
        path = self._path(key)
        if self._expire_if_due(path):
            return False
        expires = time.time() + ttl
        os.utime(path, (expires, expires))
        return True

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    def sweep(self) -> int:
        """Delete expired blobs and abandoned staging files; returns how many."""
        removed = 0
        now = time.time()
        for path in self.root.rglob("*"):
            try:
                # a staging file is being written until its mtime is moved into the future: give it an hour
                due = now - 3600 if path.name.startswith(STAGING_PREFIX) else now
                if path.is_file() and path.stat().st_mtime < due:
                    path.unlink()
                    removed += 1
            except FileNotFoundError:
                continue
        return removed


def open_store(url: str, namespace: str, redis_client=None) -> BlobStore:
    """A store for `url`; a Redis store reuses `redis_client` when given (same server as the broker)."""
    parsed = urlparse(url)
    if parsed.scheme == "file":
        return FileStore(Path(unquote(parsed.path)), namespace)
    if parsed.scheme in ("redis", "rediss", "unix"):
        import redis

        return RedisStore(redis_client or redis.Redis.from_url(url), namespace)
    raise ValueError(f"unsupported store URL {url!r}: use redis://host:port/db or file:///shared/path")
