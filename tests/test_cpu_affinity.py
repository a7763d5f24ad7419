"""Engine processes of one host must not share one core (issue 10, part 1).

Unit tests of the one decision (worker.cpu_affinity.plan) and of what the engine asks OpenVINO; then real
processes segmenting at the same time with the real model, their threads watched through /proc:
- two `worker start --concurrency 1 --threads 1` (what `ops/fleet/fleet.sh start 2` runs on a 2-core host);
- one `worker start --concurrency 2 --threads 1`;
- the same with `--cpus all` (each pool process bound to its own core);
- two embedded `producer submit --threads 1` runs.

While both processes segment, every 0.1 s each process's busiest thread is sampled: the cores it may run on
(Cpus_allowed_list: OpenVINO's pinning sets it while a thread infers), the core it ran on and the CPU time it
gained. With OpenVINO's default pinning, both 1-thread processes were confined to core 0 in nearly every sample
(and so shared one core); the test fails if they were confined to one same core in more than a fifth of the
samples, whatever other work loads the machine.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from conftest import SHARED_CASES
from fleet_support import REPO, WorkerProcess, claim_redis, fleet_env, wait_for_nodes
from worker.cpu_affinity import format_cpu_list, parse_cpu_list, plan

TSSM = SHARED_CASES / "imgs" / "3DBox_CT_tssm.npz"
SUBVOLUME = 10  # slices per study: about 10-30 s of work at 1 thread, long enough to watch
SAME_CORE_LIMIT = 0.2  # the share of samples in which both processes may be confined to one same core


# ------------------------------------------------------------------------------------------- the decision


def test_cpu_list_round_trip():
    assert parse_cpu_list("0-3,6, 8-9") == (0, 1, 2, 3, 6, 8, 9)
    assert format_cpu_list((0, 1, 2, 3, 6, 8, 9)) == "0-3,6,8-9"
    assert format_cpu_list((5,)) == "5"
    for bad in ("", "a", "3-1", "-2", "1,,x"):
        with pytest.raises(ValueError):
            parse_cpu_list(bad)


def test_no_core_list_means_no_binding_and_no_openvino_pinning():
    for slot in range(4):
        binding = plan(None, slot, 1, allowed=(0, 1))
        assert binding.cores == () and not binding.pinned
        assert binding.openvino_config() == {"ENABLE_CPU_PINNING": False}
    assert plan("", 0, 2, allowed=(0, 1)).cores == ()


@pytest.mark.parametrize(
    "concurrency, threads, allowed, expected",
    [
        (2, 1, (0, 1), [(0,), (1,)]),  # fleet.sh-like layout on 2 cores
        (2, 2, (0, 1, 2, 3), [(0, 1), (2, 3)]),
        (4, 1, (2, 3, 6, 7), [(2,), (3,), (6,), (7,)]),  # a container cpuset: the allowed cores, not 0..n
        (3, 2, (0, 1, 2, 3), [(0, 1), (2, 3), (0, 1)]),  # oversubscribed: wraps round
        (1, 0, (0, 1, 2), [(0, 1, 2)]),  # threads 0: one process, all cores
        (1, 8, (0, 1), [(0, 1)]),  # more threads than cores
    ],
)
def test_all_splits_the_allowed_cores_by_pool_index(concurrency, threads, allowed, expected):
    got = [plan("all", slot, threads, allowed=allowed).cores for slot in range(concurrency)]
    assert got == expected
    assert all(
        plan("all", slot, threads, allowed=allowed).openvino_config() == {"ENABLE_CPU_PINNING": True}
        for slot in range(concurrency)
    )


def test_explicit_list_is_bounded_by_the_allowed_cores():
    assert plan("0-7", 1, 2, allowed=(2, 3, 4, 5)).cores == (4, 5)
    assert plan("1,3", 0, 1, allowed=(0, 1, 2, 3)).cores == (1,)
    with pytest.raises(ValueError, match="no core this process may use"):
        plan("6-7", 0, 1, allowed=(0, 1))


def test_engine_asks_openvino_to_pin_only_inside_an_explicit_core_set():
    from worker.engine.runtime import RuntimeSettings

    assert RuntimeSettings("f32", 1).compile_config()["ENABLE_CPU_PINNING"] is False
    assert RuntimeSettings("f32", 1, None, (1,)).compile_config()["ENABLE_CPU_PINNING"] is True


def test_binding_applies_to_every_thread_of_the_process():
    if not hasattr(os, "sched_setaffinity"):
        pytest.skip("no CPU affinity API on this platform")
    code = (
        "import os, threading, time\n"
        "from worker.cpu_affinity import CoreBinding\n"
        "stop = threading.Event(); t = threading.Thread(target=stop.wait); t.start()\n"
        "core = min(os.sched_getaffinity(0))\n"
        "CoreBinding((core,)).apply()\n"
        "masks = {tid: sorted(os.sched_getaffinity(int(tid))) for tid in os.listdir('/proc/self/task')}\n"
        "stop.set(); t.join()\n"
        "print(len(masks), all(m == [core] for m in masks.values()))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["2", "True"]


# ------------------------------------------------------------------------------------- real processes


@dataclass
class ThreadSample:
    allowed: tuple[int, ...]
    core: int
    cpu_gained: float


@dataclass
class Watch:
    """Samples of each watched process's busiest thread."""

    pids: list[int]
    samples: dict[int, list[ThreadSample | None]] = field(default_factory=dict)
    cpu_seconds: dict[int, float] = field(default_factory=dict)
    wall: float = 0.0


def _threads(pid: int) -> dict[int, tuple[float, int, tuple[int, ...]]]:
    """tid -> (CPU seconds, core last run on, allowed cores) for every thread of a process."""
    ticks = os.sysconf("SC_CLK_TCK")
    found = {}
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:  # the process ended
        return found
    for tid in tids:
        try:
            stat = Path(f"/proc/{pid}/task/{tid}/stat").read_text().rsplit(")", 1)[1].split()
            status = Path(f"/proc/{pid}/task/{tid}/status").read_text()
        except OSError:
            continue
        allowed = next(line.split()[1] for line in status.splitlines() if line.startswith("Cpus_allowed_list"))
        found[int(tid)] = ((int(stat[11]) + int(stat[12])) / ticks, int(stat[36]), parse_cpu_list(allowed))
    return found


def watch(pids: list[int], seconds: float, interval: float = 0.1) -> Watch:
    result = Watch(pids, {pid: [] for pid in pids})
    before = {pid: _threads(pid) for pid in pids}
    first = {pid: sum(cpu for cpu, _, _ in threads.values()) for pid, threads in before.items()}
    started = time.monotonic()
    while time.monotonic() - started < seconds:
        time.sleep(interval)
        for pid in pids:
            now = _threads(pid)
            gains = {tid: now[tid][0] - before[pid].get(tid, (0.0,))[0] for tid in now}
            busiest = max(gains, key=gains.get, default=None)
            busy = busiest is not None and gains[busiest] > 0
            result.samples[pid].append(ThreadSample(now[busiest][2], now[busiest][1], gains[busiest]) if busy else None)
            before[pid] = now
    result.wall = time.monotonic() - started
    result.cpu_seconds = {pid: sum(cpu for cpu, _, _ in before[pid].values()) - first[pid] for pid in pids}
    return result


def same_core_share(result: Watch) -> tuple[float, int]:
    """Of the samples where both processes' busiest threads were working: the share in which both were
    confined to one and the same core."""
    a, b = (result.samples[pid] for pid in result.pids)
    both = [(x, y) for x, y in zip(a, b) if x is not None and y is not None]
    confined = sum(1 for x, y in both if len(x.allowed) == 1 and x.allowed == y.allowed)
    return (confined / len(both) if both else 0.0), len(both)


def report(result: Watch) -> str:
    lines = [f"wall {result.wall:.1f} s, load {os.getloadavg()[0]:.2f}"]
    for pid in result.pids:
        busy = [s for s in result.samples[pid] if s is not None]
        masks = {format_cpu_list(s.allowed) for s in busy}
        cores: dict[int, float] = {}
        for sample in busy:
            cores[sample.core] = cores.get(sample.core, 0.0) + sample.cpu_gained
        lines.append(
            f"pid {pid}: CPU {result.cpu_seconds[pid]:.1f} s ({result.cpu_seconds[pid] / result.wall:.2f} "
            f"core), busiest thread allowed on {sorted(masks)}, CPU s per core "
            f"{ {c: round(v, 1) for c, v in sorted(cores.items())} }"
        )
    return "\n".join(lines)


def assert_not_sharing_one_core(result: Watch) -> None:
    share, samples = same_core_share(result)
    detail = report(result)
    print(f"confined to one same core in {share:.0%} of {samples} samples\n{detail}")  # shown with -rP
    assert samples >= 20, f"the two processes hardly worked at the same time ({samples} samples)\n{detail}"
    assert share <= SAME_CORE_LIMIT, (
        f"both engine processes were confined to one same core in {share:.0%} of {samples} samples\n{detail}"
    )


def subvolume(target: Path, start: int, depth: int = SUBVOLUME) -> Path:
    """Slices start .. start + depth - 1 of 3DBox_CT_tssm with the boxes that reach them (new content per start)."""
    from producer.derived import boxes_in_window

    with np.load(TSSM, allow_pickle=False) as data:
        image, spacing = data["imgs"][start : start + depth], data["spacing"]
        boxes = boxes_in_window(data["boxes"], start, start + depth)
    target.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(target, imgs=np.ascontiguousarray(image), boxes=boxes, spacing=spacing)
    return target


def _need_cases_and_cores():
    if not TSSM.is_file():
        pytest.skip(f"{TSSM} not found")
    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("needs at least 2 cores")


def _pool_children(pid: int, count: int, timeout: float = 30.0) -> list[int]:
    import psutil

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        children = [p.pid for p in psutil.Process(pid).children()]
        if len(children) >= count:
            return sorted(children)[:count]
        time.sleep(0.2)
    raise TimeoutError(f"worker {pid} has no {count} pool process(es)")


def _run_on_fleet(tmp_path: Path, real_models_dir: Path, layouts: list[list[str]], concurrency_total: int):
    """Start workers (one per entry of `layouts`: its extra `worker start` args), submit two 3D studies at once,
    watch the pool processes while both run; returns the Watch and the batch. The studies only have to run while
    they are watched: the workers are then stopped without waiting for them to finish."""
    from producer import api
    from worker.app import make_app
    from worker.contract.settings import FleetSettings

    slot = claim_redis()
    if slot is None:
        pytest.skip("no Redis at 127.0.0.1:6379 (or no free database)")
    env = fleet_env(slot.url, slot.namespace, real_models_dir)
    workers = []
    try:
        for index, extra in enumerate(layouts):
            workers.append(WorkerProcess(f"pin{index}-{slot.namespace}@test", env, tmp_path / f"w{index}.log", *extra))
        settings = FleetSettings(broker_url=slot.url, namespace=slot.namespace)
        wait_for_nodes(make_app(settings), [w.node for w in workers], workers, timeout=240)
        pids = [pid for w in workers for pid in _pool_children(w.process.pid, concurrency_total // len(workers))]
        folder = tmp_path / "studies"
        subvolume(folder / "3DBox_CT_pinA.npz", 0)
        subvolume(folder / "3DBox_CT_pinB.npz", 12)
        batch = api.submit(folder, settings=settings, wait=False)
        time.sleep(1.0)  # the studies start within a poll
        result = watch(pids, seconds=8.0)
        return result, batch, workers
    finally:
        for worker in workers:
            worker.stop(grace=0)  # nothing to wait for: the watch is over
        slot.release()


@pytest.mark.fleet
@pytest.mark.model
@pytest.mark.parametrize(
    "layouts, processes",
    [
        pytest.param([["--concurrency", "1"], ["--concurrency", "1"]], 2, id="two-workers-x1"),
        pytest.param([["--concurrency", "2"]], 2, id="one-worker-c2"),
        pytest.param([["--concurrency", "2", "--cpus", "all"]], 2, id="one-worker-c2-cpus-all"),
    ],
)
def test_worker_processes_use_their_own_cores(tmp_path, real_models_dir, layouts, processes):
    _need_cases_and_cores()
    # WorkerProcess passes --concurrency 1 --threads 1; a later --concurrency overrides it (click: last wins)
    result, batch, workers = _run_on_fleet(tmp_path, real_models_dir, layouts, processes)
    assert sorted(batch.names) == ["3DBox_CT_pinA", "3DBox_CT_pinB"]
    assert_not_sharing_one_core(result)  # also: both pool processes were busy together (the studies ran)
    if any("--cpus" in extra for extra in layouts):
        masks = [{s.allowed for s in result.samples[pid] if s is not None} for pid in result.pids]
        assert all(len(m) == 1 and len(next(iter(m))) == 1 for m in masks), report(result)
        assert masks[0] != masks[1], f"pool processes bound to the same core\n{report(result)}"


@pytest.mark.model
def test_two_embedded_runs_use_their_own_cores(tmp_path, real_models_dir):
    _need_cases_and_cores()
    procs = []
    try:
        for name, start in (("a", 0), ("b", 12)):
            folder = tmp_path / name
            subvolume(folder / f"3DBox_CT_pin{name}.npz", start, depth=16)  # outlasts start-up + the watch
            procs.append(
                subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "producer.cli",
                        "submit",
                        str(folder),
                        "--out",
                        str(tmp_path / f"out-{name}"),
                        "--threads",
                        "1",
                        "--models-dir",
                        str(real_models_dir),
                    ],
                    cwd=REPO,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.PIPE,
                )
            )
        time.sleep(10.0)  # start-up and compile (from the compiled cache), then both segment
        result = watch([p.pid for p in procs], seconds=8.0)
        for proc in procs:  # still segmenting (the runs need not finish: the watch is what this test measures)
            if proc.poll() is not None:
                _, err = proc.communicate()
                assert proc.returncode == 0, err.decode(errors="replace")[-2000:]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert_not_sharing_one_core(result)
