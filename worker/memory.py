"""The per-study memory guard of a worker process: refuse a study that cannot fit, stop one that outgrows it.

The limit is on the resident memory (RSS) of the process running the study: the compiled model, the embedding
cache and the study's arrays together. Before the engine starts, the study's estimated need
(Engine.memory_needed) plus what the process already holds must fit under the limit, else the study ends
with an error at once. While it runs, a watchdog thread samples RSS; past the limit (an estimate that was
wrong, a leak) it records the study's error outcome and ends the process at once, so the host never starts
swapping or meets the kernel's OOM killer. Celery then starts a fresh process; the redelivered message finds
the recorded outcome and is dropped.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from worker.contract.settings import environment, variable

log = logging.getLogger(__name__)
LIMIT_ENV = variable("task_memory_mb")  # Environment.task_memory_mb (set by the worker's parent)
EXIT_CODE = 75  # what the process exits with when the guard stops it
_PAGE = os.sysconf("SC_PAGE_SIZE")


def rss_bytes() -> int:
    """Resident set size of this process."""
    try:
        with open("/proc/self/statm", "rb") as statm:
            return int(statm.read().split()[1]) * _PAGE
    except OSError:  # not Linux
        import psutil

        return psutil.Process().memory_info().rss


def host_memory_bytes() -> int:
    """Memory this host (or container, by its cgroup limit) has."""
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            raw = open(path).read().strip()
        except OSError:
            continue
        if raw.isdigit():
            total = min(total, int(raw))
    return total


def default_limit_mb(concurrency: int) -> int:
    """80 % of the host's memory shared between the worker's processes."""
    return int(0.8 * host_memory_bytes() / max(1, concurrency)) >> 20


def mb(size: int) -> str:
    return f"{size / (1 << 20):,.0f} MB"


@dataclass(frozen=True)
class MemoryGuard:
    limit: int  # bytes of RSS; 0 turns the guard off
    interval: float = 0.1  # seconds between RSS samples while a study runs

    @classmethod
    def from_env(cls) -> MemoryGuard:
        megabytes = environment().task_memory_mb  # a bad value: a ValueError naming the variable
        return cls(int(megabytes) << 20 if megabytes else 0)

    def refusal(self, needed: int) -> str | None:
        """Why a study needing `needed` more bytes cannot start here, or None if it fits."""
        if not self.limit:
            return None
        held = rss_bytes()
        if held + needed <= self.limit:
            return None
        return (
            f"memory guard: this study needs about {mb(needed)} on top of the {mb(held)} the worker process "
            f"holds, above its limit of {mb(self.limit)} ({LIMIT_ENV}); run it on a worker with more memory "
            "(or a smaller embedding cache, LITEMEDSAM_CACHE_MB)"
        )

    @contextmanager
    def watch(self, on_exceeded: Callable[[int], None]) -> Iterator[None]:
        """Run the body under the watchdog; past the limit: on_exceeded(rss), then the process exits."""
        if not self.limit:
            yield
            return
        done = threading.Event()
        watchdog = threading.Thread(target=self._watch, args=(done, on_exceeded), name="memory-guard", daemon=True)
        watchdog.start()
        try:
            yield
        finally:
            done.set()
            watchdog.join()

    def _watch(self, done: threading.Event, on_exceeded: Callable[[int], None]) -> None:
        while not done.wait(self.interval):
            rss = rss_bytes()
            if rss > self.limit:
                try:
                    on_exceeded(rss)
                except Exception:
                    log.exception("memory guard: could not record the study's outcome")
                finally:
                    log.critical(
                        "memory guard: RSS %s above the limit %s: ending this process", mb(rss), mb(self.limit)
                    )
                    os._exit(EXIT_CODE)
