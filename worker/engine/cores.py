"""The cores one engine process runs on, as the engine applies them (which cores a process gets is decided in
worker.cpu_affinity, the one place for that rule; the engine only applies the binding it is given).
"""

from __future__ import annotations

import os
from dataclasses import dataclass


def format_cpu_list(cores) -> str:
    """(0, 1, 2, 5) -> `0-2,5`."""
    ordered, parts = sorted(cores), []
    start = prev = None
    for core in ordered + [None]:
        if core is not None and prev is not None and core == prev + 1:
            prev = core
            continue
        if start is not None:
            parts.append(f"{start}" if start == prev else f"{start}-{prev}")
        start = prev = core
    return ",".join(parts)


@dataclass(frozen=True)
class CoreBinding:
    """The cores one engine process runs on; empty: no affinity of its own, OpenVINO pinning off."""

    cores: tuple[int, ...] = ()
    note: str = ""  # why the binding is what it is (logged)

    @property
    def pinned(self) -> bool:
        return bool(self.cores)

    def openvino_config(self) -> dict:
        """OpenVINO compile properties: pin threads only inside an explicit core set of this process."""
        return {"ENABLE_CPU_PINNING": self.pinned}

    def apply(self) -> None:
        """Restrict every thread of this process to the binding's cores (call before OpenVINO compiles)."""
        if not self.pinned:
            return
        try:
            threads = [int(tid) for tid in os.listdir("/proc/self/task")]
        except OSError:
            threads = [0]
        for tid in threads:
            try:
                os.sched_setaffinity(tid, self.cores)
            except ProcessLookupError:  # a thread that ended meanwhile
                pass

    def describe(self) -> str:
        if not self.pinned:
            return "no pinning (the kernel places threads)"
        return f"cores {format_cpu_list(self.cores)}" + (f" ({self.note})" if self.note else "")
