"""Writing a file so that no reader ever sees half of it: write a temporary file beside it, then rename it over.

The temporary file is in the target's folder (a rename is atomic only within one file system), hidden, unique per
writer (`.partial-<random>-<name>`: two processes or threads writing the same target never share one), and keeps
the target's suffix (writers that pick a format by suffix, as nibabel does for `.nii.gz`, still do). It is
removed whatever happens; only a complete file is ever published.

    with atomic_path(target) as partial:      # any writer: partial is a fresh path, not created yet
        np.savez_compressed(partial, ...)
    write_bytes_atomic(target, blob)           # the common cases
    write_text_atomic(target, text, mode=0o644)

`exclusive=True` publishes with a hard link instead of a rename: the target is written once, and a second writer
gets FileExistsError instead of replacing it (write-once results on a shared folder). Standard library only.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

PARTIAL_PREFIX = ".partial-"


def partial_path(path: Path, prefix: str = PARTIAL_PREFIX) -> Path:
    """A fresh temporary name beside `path`, ending with its name."""
    return path.with_name(f"{prefix}{secrets.token_hex(6)}-{path.name}")


@contextmanager
def atomic_path(
    path: Path | str, *, mode: int | None = None, exclusive: bool = False, prefix: str = PARTIAL_PREFIX
) -> Iterator[Path]:
    """Yield a temporary path beside `path` for the caller to write; when the block ends without an exception,
    publish it as `path` (optionally chmod `mode` first). The temporary file never outlives the block; `prefix`
    names it for a folder's own clean-up rules (the file store's sweep)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = partial_path(path, prefix)
    try:
        yield partial
        if mode is not None:
            os.chmod(partial, mode)
        if exclusive:
            os.link(partial, path)  # atomic, and fails if the name exists
        else:
            os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)


def write_bytes_atomic(
    path: Path | str, data: bytes, *, mode: int | None = None, exclusive: bool = False, prefix: str = PARTIAL_PREFIX
) -> None:
    with atomic_path(path, mode=mode, exclusive=exclusive, prefix=prefix) as partial:
        with open(partial, "xb") as handle:
            handle.write(data)


def write_text_atomic(path: Path | str, text: str, *, mode: int | None = None, encoding: str = "utf-8") -> None:
    with atomic_path(path, mode=mode) as partial:
        with open(partial, "x", encoding=encoding) as handle:
            handle.write(text)
