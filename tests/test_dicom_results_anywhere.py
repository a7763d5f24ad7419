"""Results written anywhere (issue 14, part 2): a DICOM study submitted with a relative path from one folder, its
sources deleted, `producer results` from another folder writes the same SEG (and RTSTRUCT) as the waiting submit.
Real Redis (a claimed database), one real `worker start` process with the exported LiteMedSAM."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest

from dicom_factory import SeriesSpec, write_series
from fleet_support import REPO, WorkerProcess, claim_redis, fleet_env, wait_for_nodes
from worker.contract.settings import FleetSettings

pytestmark = [pytest.mark.fleet, pytest.mark.model]
TIMEOUT = 300
VOLATILE = (
    "ContentDate",
    "ContentTime",
    "InstanceCreationDate",
    "InstanceCreationTime",
    "StructureSetDate",
    "StructureSetTime",
    "SeriesDate",
    "SeriesTime",
)


@pytest.fixture(scope="module")
def fleet(real_models_dir, tmp_path_factory):
    slot = claim_redis()
    if slot is None:
        pytest.skip("no Redis at 127.0.0.1:6379 (or no empty database to claim)")
    env = fleet_env(slot.url, slot.namespace, real_models_dir)
    logs = tmp_path_factory.mktemp("dicom-fleet-logs")
    worker = WorkerProcess(f"dicom-{slot.namespace}@{socket.gethostname()}", env, logs / "w.log")
    try:
        from worker.app import make_app

        wait_for_nodes(make_app(FleetSettings(broker_url=slot.url, namespace=slot.namespace)), [worker.node], [worker])
        yield slot, env, worker
    finally:
        worker.stop()
        slot.release()


def producer(env, cwd: Path, *args: str) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [sys.executable, "-m", "producer.cli", *args],
        env={**env, "PYTHONPATH": str(REPO)},
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert result.returncode == 0, f"{args}: {result.stderr[-3000:]}"
    return result


def comparable(path: Path) -> pydicom.Dataset:
    ds = pydicom.dcmread(path)
    for keyword in VOLATILE:  # the creation time of the object, not its content
        if keyword in ds:
            delattr(ds, keyword)
    for item in ds.get("ContributingEquipmentSequence", []):
        if "ContributionDateTime" in item:
            del item.ContributionDateTime
    return ds


def test_results_from_another_folder_with_the_sources_gone_equal_the_waiting_submit(fleet, tmp_path):
    slot, env, worker = fleet
    rng = np.random.default_rng(14)
    stored = rng.integers(0, 60, (5, 64, 64)).astype(np.int16)
    stored[:, 16:44, 20:48] += 400  # a bright block to segment
    site = tmp_path / "site"
    write_series(site / "studies" / "ct", SeriesSpec(stored=stored, intercept=-1024.0, pixel_spacing=(0.8, 0.6)))
    (site / "studies" / "ct" / "prompts.json").write_text(
        json.dumps({"boxes": [{"label": "block", "voxel": [18, 14, 0, 50, 46, 4]}]})
    )

    submitted = producer(
        env,
        site,
        "submit",
        "studies",
        "--out",
        "waited",
        "--broker",
        slot.url,
        "--dicom-format",
        "seg,rtstruct",
        "--timeout",
        str(TIMEOUT),
    )
    batch_id = submitted.stderr.split("batch ")[1].split(":")[0]
    assert (site / "waited" / "ct.seg.dcm").is_file() and (site / "waited" / "ct.rtstruct.dcm").is_file()
    shutil.rmtree(site / "studies")

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    producer(env, elsewhere, "results", batch_id, "--out", "again", "--broker", slot.url)
    lines = [json.loads(line) for line in (elsewhere / "again" / "metrics.jsonl").read_text().splitlines()]
    assert [line["status"] for line in lines] == ["ok"], lines
    for name in ("ct.seg.dcm", "ct.rtstruct.dcm"):
        waited, again = comparable(site / "waited" / name), comparable(elsewhere / "again" / name)
        assert waited == again, name
        assert waited.SOPInstanceUID == again.SOPInstanceUID
    seg = pydicom.dcmread(elsewhere / "again" / "ct.seg.dcm")
    assert np.asarray(seg.pixel_array).any()  # the block was segmented, not an empty SEG
