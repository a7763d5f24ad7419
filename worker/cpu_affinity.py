"""Which CPU cores an engine process runs on: the one place that decides it, for every way an engine starts
(each prefork child of `worker start`, several `worker start` processes on one host, the embedded run).

The rule (measured on a 2-core AMD EPYC, ops/bench/RESULTS.md "CPU pinning"):
- No core list given (the default): the process keeps every core it may use and OpenVINO's own thread pinning
  is switched off, so the kernel spreads the threads of all engine processes of the host. OpenVINO pins by
  itself otherwise, and every process pins from the first core of its mask: two 1-thread processes both ran on
  core 0, each at half speed. Unpinned is safe whoever else runs on the host (other workers, other fleets,
  containers that share cores under a CPU quota), which no process can know about.
- A core list given (`worker start --cpus 0-3` or `--cpus all`, `LITEMEDSAM_CPUS`): the worker owns those cores.
  They are intersected with the cores the process may use (its affinity, i.e. a container's cpuset), and pool
  process i gets the i-th block of `threads` cores (wrapping round when concurrency x threads exceeds them).
  That block becomes the process's affinity before OpenVINO starts any thread, and OpenVINO pins its threads
  inside it.
"""

from __future__ import annotations

import os

from worker.engine.cores import CoreBinding, format_cpu_list

ALL = "all"


def parse_cpu_list(text: str) -> tuple[int, ...]:
    """`0-3,6` -> (0, 1, 2, 3, 6) (the Linux cpu-list format, as in taskset -c and cgroup cpuset files)."""
    cores: set[int] = set()
    for item in filter(None, (part.strip() for part in text.split(","))):
        first, sep, last = item.partition("-")
        try:
            lo, hi = int(first), int(last) if sep else int(first)
        except ValueError:
            raise ValueError(f"CPU list {text!r}: {item!r} is not a core number or range like 0-3") from None
        if lo < 0 or hi < lo:
            raise ValueError(f"CPU list {text!r}: bad range {item!r}")
        cores.update(range(lo, hi + 1))
    if not cores:
        raise ValueError(f"CPU list {text!r} names no core")
    return tuple(sorted(cores))


def allowed_cores() -> tuple[int, ...]:
    """The cores this process may run on (its affinity mask, which a container's cpuset bounds)."""
    try:
        return tuple(sorted(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux: no affinity API
        return tuple(range(os.cpu_count() or 1))


def plan(requested: str | None, slot: int, threads: int, allowed: tuple[int, ...] | None = None) -> CoreBinding:
    """The cores of engine process `slot` (a pool index from 0) that runs `threads` OpenVINO threads.

    `requested`: None or "" (no explicit cores: no binding), "all" (every core this process may use), or a cpu
    list ("0-3,6"). Explicit cores outside the process's allowed set are dropped; none left is an error.
    """
    if not requested:
        return CoreBinding(note="no core list given")
    if not hasattr(os, "sched_setaffinity"):
        raise ValueError("a CPU list needs Linux (no CPU affinity API here)")
    allowed = tuple(allowed if allowed is not None else allowed_cores())
    owned = allowed if requested.strip().lower() == ALL else tuple(c for c in parse_cpu_list(requested) if c in allowed)
    if not owned:
        raise ValueError(
            f"CPU list {requested!r} has no core this process may use (allowed: {format_cpu_list(allowed)})"
        )
    width = max(1, min(threads if threads > 0 else len(owned), len(owned)))
    blocks = max(1, len(owned) // width)
    first = (slot % blocks) * width
    note = f"pool process {slot} of the cores {format_cpu_list(owned)}"
    if slot >= blocks:
        note += f" (more processes than blocks of {width} core(s): shares a block)"
    return CoreBinding(owned[first : first + width], note)
