"""The fleet end to end: a private Redis database, two real `worker start` processes (1 OpenVINO thread each),
the real LiteMedSAM model, and the producer's API and CLI.

Expected masks come from the embedded run (producer.embedded, same model, same thread count), computed in a
background thread while the workers run, and must match bit for bit.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pytest

from conftest import SHARED_CASES
from fleet_support import (
    REPO,
    RedisSlot,
    WorkerProcess,
    fleet_env,
    many_boxes,
    mirrored_copy,
    read_segs,
    wait_for_nodes,
)
from producer import api
from producer.discovery import find_studies
from worker.contract.budget import TimeBudget
from worker.contract.keys import Keys
from worker.contract.settings import FleetSettings
from worker.ledger import BatchLedger

pytestmark = [pytest.mark.fleet, pytest.mark.model]
THREADS = 1  # per worker process, and for the embedded reference run
TIMEOUT = 300


@dataclass
class Fleet:
    slot: RedisSlot
    settings: FleetSettings
    env: dict[str, str]
    workers: list[WorkerProcess]
    metrics_port: int
    ledger: BatchLedger

    @property
    def nodes(self) -> set[str]:
        return {w.node for w in self.workers}

    def logs(self) -> str:
        return "\n".join(f"--- {w.node}\n{w.log_tail()}" for w in self.workers)


@dataclass
class Cases:
    main: Path  # the big batch: the 2D cases and one 3D CT (the 3D study keeps one worker busy: both work)
    force: Path  # two of main's studies, for --force
    nowait: Path  # new content, for --no-wait / status / results from other processes
    bad: Path  # one good new study, one with inverted boxes, one corrupt file
    slow: Path  # a new study run with a 1 s soft time limit
    lost: Path  # a new study whose worker process is killed while it runs


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _link(source: Path, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, folder / source.name)


def _inverted(source: Path, target: Path) -> Path:
    with np.load(source, allow_pickle=False) as data:
        boxes = data["boxes"].copy()
        boxes[0, [0, 2]] = boxes[0, [2, 0]]  # x_min > x_max
        np.savez_compressed(target, imgs=data["imgs"], boxes=boxes)
    return target


def _sources(root: Path) -> tuple[list[Path], list[Path]]:
    """(the main batch, its 2D CT studies): shared dev cases when present, else generated phantoms."""
    shared = SHARED_CASES / "imgs"
    names = ["2DBox_CT_amos000475", "2DBox_CT_amos000690", "2DBox_Microscope_stardist2d", "3DBox_CT_tssm"]
    if all((shared / f"{n}.npz").is_file() for n in names):
        main = [shared / f"{n}.npz" for n in names]
        return main, main[:2]
    from producer.phantoms import write_phantoms

    written = {p.stem: p for p in write_phantoms(root / "phantoms", with_gts=False)}
    main = [written["2DBox_CT_phantom"], written["3DBox_CT_phantom"]]
    return main, main[:1]


@pytest.fixture(scope="module")
def cases(tmp_path_factory) -> Cases:
    root = tmp_path_factory.mktemp("fleet-cases")
    main_sources, ct_2d = _sources(root)
    folders = Cases(*(root / n for n in ("main", "force", "nowait", "bad", "slow", "lost")))
    for folder in (folders.main, folders.force, folders.nowait, folders.bad, folders.slow, folders.lost):
        folder.mkdir()
    for source in main_sources:
        _link(source, folders.main)
    for index, source in enumerate(ct_2d):
        _link(source, folders.force)
        mirrored_copy(source, folders.nowait / f"2DBox_CT_mirrory{index}.npz", "y")
    mirrored_copy(mirrored_copy(ct_2d[0], root / "tmp-x.npz", "x"), folders.bad / "2DBox_CT_good.npz", "y")
    _inverted(ct_2d[-1], folders.bad / "2DBox_CT_inverted.npz")
    (folders.bad / "2DBox_CT_corrupt.npz").write_bytes(b"PK\x03\x04 this is not a zip archive")
    many_boxes(ct_2d[0], folders.slow / "2DBox_CT_slow.npz")
    many_boxes(mirrored_copy(ct_2d[0], root / "tmp-lost.npz", "x"), folders.lost / "2DBox_CT_lost.npz", 20)
    return folders


class Expected:
    """Embedded-run masks (threads=THREADS), computed in a background thread; get(name) waits for them."""

    def __init__(self, models_dir: Path, folders: list[Path]):
        self._pool = ThreadPoolExecutor(1)
        self._future: Future = self._pool.submit(self._run, models_dir, folders)

    @staticmethod
    def _run(models_dir: Path, folders: list[Path]) -> dict[str, np.ndarray]:
        from producer.embedded import EmbeddedRunner
        from worker.engine.engine import EngineSettings

        runner = EmbeddedRunner(EngineSettings(models_dir=models_dir, threads=THREADS))
        masks = {}
        for folder in folders:
            for source in find_studies(folder):
                outcome = runner.run_one(source)
                if outcome.ok:
                    masks[source.name] = outcome.labels
        return masks

    def get(self, name: str) -> np.ndarray:
        return self._future.result(timeout=TIMEOUT)[name]

    def close(self) -> None:
        self._pool.shutdown(wait=True)


@pytest.fixture(scope="module")
def fleet(slot, real_models_dir, tmp_path_factory) -> Fleet:
    logs = tmp_path_factory.mktemp("fleet-logs")
    env, port, host = fleet_env(slot.url, slot.namespace, real_models_dir), _free_port(), socket.gethostname()
    workers = [
        WorkerProcess(f"fleet-a-{slot.namespace}@{host}", env, logs / "a.log", "--metrics-port", str(port)),
        WorkerProcess(f"fleet-b-{slot.namespace}@{host}", env, logs / "b.log"),
    ]
    settings = FleetSettings(broker_url=slot.url, namespace=slot.namespace)
    try:
        from worker.app import make_app

        wait_for_nodes(make_app(settings), [w.node for w in workers], workers)
        from worker.contract.settings import redis_client

        yield Fleet(
            slot,
            settings,
            env,
            workers,
            port,
            BatchLedger(redis_client(slot.url), Keys(slot.namespace), settings.batch_ttl),
        )
    finally:
        for worker in workers:
            worker.stop()


@pytest.fixture(scope="module")
def expected(slot, real_models_dir, cases) -> Expected:
    """Started before the workers, so the reference run overlaps their start-up."""
    reference = Expected(real_models_dir, [cases.main, cases.nowait, cases.bad])
    yield reference
    reference.close()


@pytest.fixture(scope="module")
def first_batch(expected, fleet, cases, tmp_path_factory):
    out = tmp_path_factory.mktemp("out-first")
    before = fleet.ledger.executions()
    batch = api.submit(cases.main, out_dir=out, settings=fleet.settings, timeout=TIMEOUT)
    return batch, out, before


def _cli(fleet: Fleet, *args: str, timeout: float = TIMEOUT) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [sys.executable, "-m", "producer.cli", *args, "--broker", fleet.slot.url],
        env=fleet.env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert result.returncode == 0, f"{args}: {result.stderr[-3000:]}\n{fleet.logs()}"
    return result


def _assert_masks(out: Path, names, expected: Expected) -> None:
    for name in names:
        got, want = read_segs(out / f"{name}.npz"), expected.get(name)
        assert got.dtype == np.uint16 and want.dtype == np.uint16
        assert np.array_equal(got, want), f"{name}: {np.count_nonzero(got != want)} voxels differ"


def _outcomes(batch: api.Batch) -> dict:
    return {o.name: o for o in batch.outcomes}


def test_batch_on_two_workers_matches_the_embedded_run_bit_for_bit(expected, fleet, cases, first_batch):
    batch, out, before = first_batch
    names = [s.name for s in find_studies(cases.main)]
    outcomes = _outcomes(batch)
    assert sorted(outcomes) == sorted(names) == sorted(batch.names)
    assert all(o.ok for o in outcomes.values()), [(o.name, o.error) for o in outcomes.values()] + [fleet.logs()]
    assert fleet.ledger.runs(batch.batch_id) == {name: 1 for name in names}  # each study ran exactly once
    assert len(fleet.ledger.outcomes(batch.batch_id)) == len(names)
    _assert_masks(out, names, expected)
    after = fleet.ledger.executions()
    assert sum(after.values()) - sum(before.values()) == len(names)
    extras = [o.metrics["extra"] for o in outcomes.values()]
    assert {e["node"] for e in extras} == fleet.nodes, "both workers must have segmented studies"
    manifest_sha = json.loads((Path(fleet.env["LITEMEDSAM_MODELS_DIR"]) / "litemedsam" / "manifest.json").read_text())[
        "sha256"
    ]
    for o in outcomes.values():
        extra, times, counts = o.metrics["extra"], o.metrics["times"], o.metrics["counts"]
        assert extra["cached"] is False and extra["queue_wait"] >= 0 and extra["pid"] > 0 and extra["host"]
        assert {"upload", "input_download", "result_upload", "result_download"} <= set(extra["transfer"])
        assert times["encode"] > 0 and times["total"] > 0 and times["write"] > 0
        assert counts["boxes"] > 0 and counts["slices_encoded"] > 0
        assert o.metrics["provenance"]["model_sha256"] == manifest_sha
        assert o.metrics["provenance"]["precision"] == "f32"
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert sorted(line["study"] for line in lines) == sorted(names)


def test_workers_answer_pings_and_serve_prometheus_metrics(fleet, first_batch):
    ping = subprocess.run(
        [sys.executable, "-m", "worker.cli", "ping"],
        env=fleet.env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert ping.returncode == 0 and all(f"{node}: pong" in ping.stdout for node in fleet.nodes), ping.stderr
    assert "queue litemedsam: engine" in ping.stdout
    inspect = subprocess.run(
        [sys.executable, "-m", "celery", "-A", "worker.app", "inspect", "ping"],
        env=fleet.env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert inspect.returncode == 0 and all(node in inspect.stdout for node in fleet.nodes), inspect.stderr
    text = urllib.request.urlopen(f"http://127.0.0.1:{fleet.metrics_port}/metrics", timeout=10).read().decode()
    samples = {
        line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line and not line.startswith("#")
    }
    done = sum(v for k, v in samples.items() if k.startswith("litemedsam_studies_total{") and 'status="ok"' in k)
    assert done >= 1, text
    assert samples['litemedsam_stage_seconds_count{stage="encode"}'] == done
    assert "litemedsam_embedding_cache_hit_ratio" in samples


def test_no_wait_then_status_and_results_from_other_processes(fleet, cases, expected, tmp_path):
    submitted = _cli(fleet, "submit", str(cases.nowait), "--no-wait")
    batch_id = submitted.stdout.strip().splitlines()[-1]
    names = sorted(s.name for s in find_studies(cases.nowait))
    status = json.loads(_cli(fleet, "status", batch_id, "--json").stdout)
    assert status["batch_id"] == batch_id and status["total"] == len(names) and status["sealed"]
    assert sorted(s["name"] for s in status["studies"]) == names
    assert {s["state"] for s in status["studies"]} <= {"queued", "running", "ok"}
    _cli(fleet, "results", batch_id, "--out", str(tmp_path), "--timeout", str(TIMEOUT))
    _assert_masks(tmp_path, names, expected)
    final = json.loads(_cli(fleet, "status", batch_id, "--json").stdout)
    assert {s["state"] for s in final["studies"]} == {"ok"} and not any(s["cached"] for s in final["studies"])
    report = json.loads(_cli(fleet, "report", batch_id, "--json").stdout)
    assert report["studies"] == len(names) and report["computed"] == len(names)
    assert any(s["stage"] == "encode" and s["n"] == len(names) for s in report["stages"])


def test_resubmission_is_served_from_the_store_and_force_recomputes(fleet, cases, expected, first_batch, tmp_path):
    first, _, _ = first_batch
    names = sorted(first.names)
    before = fleet.ledger.executions()
    again = api.submit(cases.main, out_dir=tmp_path / "cached", settings=fleet.settings, timeout=TIMEOUT)
    assert (again.cached, again.queued) == (len(names), 0)
    assert all(o.ok and o.metrics["extra"]["cached"] is True for o in again.outcomes)
    assert fleet.ledger.runs(again.batch_id) == {} and fleet.ledger.executions() == before  # no task ran
    _assert_masks(tmp_path / "cached", names, expected)
    lines = [json.loads(line) for line in (tmp_path / "cached" / "metrics.jsonl").read_text().splitlines()]
    assert all(line["metrics"]["extra"]["cached"] is True and line["metrics"]["times"]["encode"] > 0 for line in lines)

    forced_names = sorted(s.name for s in find_studies(cases.force))
    forced = api.submit(cases.force, out_dir=tmp_path / "forced", settings=fleet.settings, force=True, timeout=TIMEOUT)
    assert forced.queued == len(forced_names)
    assert all(o.ok and o.metrics["extra"]["cached"] is False for o in forced.outcomes)
    assert fleet.ledger.runs(forced.batch_id) == {name: 1 for name in forced_names}
    assert sum(fleet.ledger.executions().values()) == sum(before.values()) + len(forced_names)
    _assert_masks(tmp_path / "forced", forced_names, expected)


def test_bad_studies_end_as_errors_and_the_rest_completes(fleet, cases, expected, tmp_path):
    batch = api.submit(cases.bad, out_dir=tmp_path, settings=fleet.settings, timeout=TIMEOUT)
    outcomes = _outcomes(batch)
    assert outcomes["2DBox_CT_good"].ok
    _assert_masks(tmp_path, ["2DBox_CT_good"], expected)
    inverted, corrupt = outcomes["2DBox_CT_inverted"], outcomes["2DBox_CT_corrupt"]
    assert inverted.status == "error" and "box 0" in inverted.error and "inverted" in inverted.error
    assert fleet.ledger.runs(batch.batch_id).get("2DBox_CT_inverted") == 1  # the worker judged it, once
    assert corrupt.status == "error" and "corrupt" in corrupt.error  # the producer could not read it
    assert "2DBox_CT_corrupt" not in fleet.ledger.runs(batch.batch_id)
    assert not (tmp_path / "2DBox_CT_inverted.npz").exists()
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    lines = {record["study"]: record for record in records}
    assert lines["2DBox_CT_inverted"]["error"] == inverted.error
    assert all(w.alive() for w in fleet.workers)


def test_a_study_past_its_soft_time_limit_is_a_final_error(fleet, cases, tmp_path):
    tight = replace(fleet.settings, budget=TimeBudget(base=1, per_slice=0, per_box_slice=0))
    batch = api.submit(cases.slow, out_dir=tmp_path, settings=tight, timeout=TIMEOUT)
    (outcome,) = batch.outcomes
    assert outcome.status == "error" and "time limit" in outcome.error and "soft limit of 1" in outcome.error
    assert fleet.ledger.runs(batch.batch_id) == {outcome.name: 1}  # not retried
    assert all(w.alive() for w in fleet.workers)
    from worker.app import make_app

    replies = make_app(fleet.settings).control.ping(timeout=2.0)
    assert fleet.nodes <= {node for reply in replies for node in reply}


def test_a_study_whose_worker_process_dies_is_redelivered_and_completes_once(fleet, cases, tmp_path):
    import psutil

    batch = api.submit(cases.lost, wait=False, settings=fleet.settings)
    (name,) = batch.names
    deadline = time.monotonic() + TIMEOUT
    while name not in fleet.ledger.progress(batch.batch_id):  # wait until a worker runs it
        assert time.monotonic() < deadline, fleet.logs()
        time.sleep(0.05)
    node = fleet.ledger.progress(batch.batch_id)[name].node
    worker = next(w for w in fleet.workers if w.node == node)
    for child in psutil.Process(worker.process.pid).children(recursive=True):  # the pool process running it
        child.kill()
    done = api.results(batch.batch_id, tmp_path, settings=fleet.settings, timeout=TIMEOUT)
    (outcome,) = done.outcomes
    assert outcome.ok, outcome.error
    assert fleet.ledger.runs(batch.batch_id) == {name: 2} and outcome.metrics["extra"]["delivery"] == 2
    assert read_segs(tmp_path / f"{name}.npz").max() > 0
    assert all(w.alive() for w in fleet.workers)


def test_prompts_with_clicks_travel_to_a_worker_and_match_the_embedded_engine(fleet, real_models_dir):
    """The Python API with clicks (a label refined by clicks and a label of clicks alone): the task message carries
    them (version 2) and the worker's label map equals the in-process engine's, bit for bit."""
    from models.phantoms import build_phantoms
    from worker.contract.prompts import Box, Click, LabelPrompt, Prompts
    from worker.contract.study import Study
    from worker.engine.engine import Engine, EngineSettings

    phantom = next(p for p in build_phantoms() if p.name == "3DBox_CT_phantom")
    first = phantom.boxes[0].tolist()
    z = (first[2] + first[5]) // 2
    prompts = Prompts(
        (
            LabelPrompt(Box(tuple(first)), (Click((first[0], first[1], z), foreground=False),)),
            LabelPrompt(None, (Click(((first[0] + first[3]) // 2, (first[1] + first[4]) // 2, z)),)),
        ),
        dims=3,
    )
    study = Study("clicks", "CT", phantom.imgs, prompts, tuple(phantom.spacing))
    batch = api.submit_studies({"clicks": study}, settings=fleet.settings, timeout=TIMEOUT)
    (outcome,) = batch.outcomes
    assert outcome.ok, (outcome.error, fleet.logs())
    assert outcome.metrics["extra"]["labelwise"] is True
    expected = Engine(EngineSettings(models_dir=real_models_dir, threads=THREADS)).segment(study).labels
    assert np.array_equal(outcome.labels, expected), f"{np.count_nonzero(outcome.labels != expected)} voxels differ"
