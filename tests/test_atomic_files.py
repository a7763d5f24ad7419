"""worker.contract.files: a target is only ever absent, the old file, or the complete new file."""

from __future__ import annotations

import os
import threading

import pytest

from worker.contract.files import PARTIAL_PREFIX, atomic_path, write_bytes_atomic, write_text_atomic


def leftovers(folder):
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(PARTIAL_PREFIX))


def test_writes_replace_the_target_and_leave_nothing_beside_it(tmp_path):
    target = tmp_path / "deep" / "er" / "result.seg.nii.gz"
    with atomic_path(target) as partial:
        assert partial.parent == target.parent and partial.name.endswith(target.name)  # the suffix a writer reads
        assert partial.name.startswith(PARTIAL_PREFIX) and not partial.exists() and not target.exists()
        partial.write_bytes(b"first")
        assert not target.exists()  # nothing published before the block ends
    assert target.read_bytes() == b"first"
    write_bytes_atomic(target, b"second")
    assert target.read_bytes() == b"second" and leftovers(target.parent) == []


def test_a_failed_write_keeps_the_old_file_and_removes_the_partial_one(tmp_path):
    target = tmp_path / "job.json"
    write_text_atomic(target, "old")
    with pytest.raises(RuntimeError), atomic_path(target) as partial:
        partial.write_text("half")
        raise RuntimeError("the writer failed")
    assert target.read_text() == "old" and leftovers(tmp_path) == []


def test_mode_is_applied_before_publishing(tmp_path):
    target = tmp_path / "record.json"
    write_text_atomic(target, "{}", mode=0o600)
    assert target.stat().st_mode & 0o777 == 0o600
    write_text_atomic(target, "{}", mode=0o644)
    assert target.stat().st_mode & 0o777 == 0o644


def test_exclusive_writes_once(tmp_path):
    target = tmp_path / "blob"
    write_bytes_atomic(target, b"first", exclusive=True)
    with pytest.raises(FileExistsError):
        write_bytes_atomic(target, b"second", exclusive=True)
    assert target.read_bytes() == b"first" and leftovers(tmp_path) == []


def test_concurrent_writers_never_expose_a_partial_file(tmp_path):
    target = tmp_path / "shared.bin"
    payloads = [bytes([n]) * 200_000 for n in range(8)]
    seen, stop = set(), threading.Event()

    def read():
        while not stop.is_set():
            try:
                data = target.read_bytes()
            except FileNotFoundError:
                continue
            seen.add(data[:1] * len(data) == data and len(data) == 200_000)

    reader = threading.Thread(target=read)
    reader.start()
    writers = [threading.Thread(target=write_bytes_atomic, args=(target, payload)) for payload in payloads * 3]
    for thread in writers:
        thread.start()
    for thread in writers:
        thread.join()
    stop.set()
    reader.join()
    assert target.read_bytes() in payloads and seen <= {True} and leftovers(tmp_path) == []
    assert os.listdir(tmp_path) == ["shared.bin"]
