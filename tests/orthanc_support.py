"""A real PACS for the tests: Orthanc (Debian's package) as a plain process with its DICOMweb plugin, HTTP basic
authentication, its own storage folder and a free loopback port; plus a `producer serve` process to talk to it.

Orthanc's Lua `ReceivedInstanceFilter` refuses SEG objects of patients whose ID is REJECT_SEG_PATIENT: a test can
make a STOW-RS fail for real.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
import requests
from pydicom.uid import RLELossless

from dicom_factory import SeriesSpec, write_series

ORTHANC = shutil.which("Orthanc") or "/usr/sbin/Orthanc"
DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
REJECT_SEG_PATIENT = "REJECT-SEG"
REPO = Path(__file__).resolve().parents[1]
LUA_FILTER = f"""
function ReceivedInstanceFilter(dicom, origin, info)
  if dicom.Modality == 'SEG' and dicom.PatientID == '{REJECT_SEG_PATIENT}' then
    return false
  end
  return true
end
"""


def phantom(depth: int, size: int, seed: int = 0) -> np.ndarray:
    """Stored CT values (intercept -1024): air, a soft-tissue body, a brighter organ, mild noise."""
    z, y, x = np.meshgrid(np.arange(depth), np.arange(size), np.arange(size), indexing="ij")
    c = size / 2
    body = ((x - c) / (0.42 * size)) ** 2 + ((y - c) / (0.36 * size)) ** 2 <= 1
    organ = ((x - 0.48 * size) ** 2 + (y - 0.52 * size) ** 2 + ((z - depth / 2) * 3) ** 2) <= (0.17 * size) ** 2
    values = np.where(body, 1064, 24) + np.where(organ, 110, 0)
    return (values + np.random.default_rng(seed).integers(0, 8, size=values.shape)).astype(np.int16)


def make_series(folder: Path, depth: int, size: int, patient_id: str | None = None, seed: int = 0) -> SeriesSpec:
    spec = SeriesSpec(stored=phantom(depth, size, seed), intercept=-1024.0)
    paths = write_series(folder, spec, transfer_syntax=RLELossless)
    if patient_id is not None:
        for path in paths:
            ds = pydicom.dcmread(path)
            ds.PatientID = patient_id
            ds.save_as(path, enforce_file_format=True)
    return spec


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def orthanc_available() -> bool:
    return Path(ORTHANC).is_file() and DICOMWEB_PLUGIN.is_file()


@dataclass
class Orthanc:
    folder: Path
    user: str = "gateway"
    password: str = "orthanc-test-password"

    def __post_init__(self):
        self.port = free_port()
        self.process: subprocess.Popen | None = None

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def dicomweb(self) -> str:
        return f"{self.base}/dicom-web"

    @property
    def auth(self) -> tuple[str, str]:
        return self.user, self.password

    def start(self, timeout: float = 60.0) -> None:
        storage = self.folder / "storage"
        storage.mkdir(parents=True, exist_ok=True)
        (self.folder / "filter.lua").write_text(LUA_FILTER)
        config = {
            "Name": "litemedsam-test-pacs",
            "StorageDirectory": str(storage),
            "IndexDirectory": str(storage),
            "HttpPort": self.port,
            "DicomServerEnabled": False,
            "DicomPort": free_port(),
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": True,
            "RegisteredUsers": {self.user: self.password},
            "Plugins": [str(DICOMWEB_PLUGIN)],
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
            "LuaScripts": [str(self.folder / "filter.lua")],
            "StorageCompression": False,
            "HttpThreadsCount": 8,
            "KeepAlive": True,
        }
        (self.folder / "orthanc.json").write_text(json.dumps(config))
        self.log = open(self.folder / "orthanc.log", "wb")
        self.process = subprocess.Popen(
            [ORTHANC, str(self.folder / "orthanc.json")],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"Orthanc exited: {(self.folder / 'orthanc.log').read_text()[-2000:]}")
            try:
                if requests.get(f"{self.base}/system", auth=self.auth, timeout=1).ok:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.2)
        raise TimeoutError("Orthanc did not start")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        self.log.close()

    def pause(self) -> None:
        os.kill(self.process.pid, signal.SIGSTOP)

    def resume(self) -> None:
        os.kill(self.process.pid, signal.SIGCONT)

    def upload(self, paths) -> None:
        for path in paths:
            response = requests.post(f"{self.base}/instances", data=Path(path).read_bytes(), auth=self.auth, timeout=30)
            response.raise_for_status()

    def instance_count(self) -> int:
        return int(requests.get(f"{self.base}/statistics", auth=self.auth, timeout=10).json()["CountInstances"])

    def seg_series(self, study_uid: str) -> list[dict]:
        """QIDO-RS: the SEG series of a study."""
        response = requests.get(
            f"{self.dicomweb}/studies/{study_uid}/series", params={"Modality": "SEG"}, auth=self.auth, timeout=10
        )
        if response.status_code == 204:
            return []
        response.raise_for_status()
        return response.json() if response.content else []


class GatewayProcess:
    """`producer serve` as a subprocess on a free port; stopped (its whole session) at the end.

    `token` is an admin's (named `tester`); the tests poll fast, so the request rate is raised unless `args` set it.
    """

    def __init__(self, folder: Path, token: str, credentials: dict, *args: str, env: dict | None = None):
        self.folder, self.token = folder, token
        folder.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        (folder / "credentials.json").write_text(json.dumps(credentials))
        command = [
            sys.executable,
            "-m",
            "producer.cli",
            "serve",
            "--port",
            str(self.port),
            "--data-dir",
            str(folder / "data"),
            "--dicomweb-credentials",
            str(folder / "credentials.json"),
            *([] if "--rate-limit" in args else ["--rate-limit", "100000/minute"]),
            *args,
        ]
        environment = {
            **os.environ,
            "LITEMEDSAM_API_TOKENS": f"tester:{token}:submit+read+admin",
            "PYTHONUNBUFFERED": "1",
            **(env or {}),
        }
        self.log_path = folder / "gateway.log"
        self._log = open(self.log_path, "wb")
        self.process = subprocess.Popen(
            command, cwd=REPO, env=environment, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def wait_ready(self, timeout: float = 180.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"producer serve exited:\n{self.log_tail()}")
            try:
                if requests.get(f"{self.url}/v1/health", timeout=1).ok:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.3)
        raise TimeoutError(f"producer serve did not start:\n{self.log_tail()}")

    def post(self, body: dict) -> dict:
        response = requests.post(f"{self.url}/v1/jobs", json=body, headers=self.headers, timeout=30)
        assert response.status_code == 202, response.text
        return response.json()

    def job(self, job_id: str) -> dict:
        response = requests.get(f"{self.url}/v1/jobs/{job_id}", headers=self.headers, timeout=30)
        response.raise_for_status()
        return response.json()

    def wait(self, job_id: str, timeout: float = 240.0) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            job = self.job(job_id)
            if job["state"] in ("ok", "error"):
                return job
            time.sleep(0.3)
        raise TimeoutError(f"job {job_id} did not finish: {self.job(job_id)}\n{self.log_tail()}")

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(5)
        self._log.close()


def served_gateway(folder: Path, token: str, pacs: Orthanc, models_dir: Path, *args: str):
    """A module fixture's body: `producer serve` (1 OpenVINO thread, `models_dir`) holding the PACS's credentials,
    ready; stopped when the generator is closed."""
    credentials = {pacs.dicomweb: {"username": pacs.user, "password": pacs.password}}
    service = GatewayProcess(
        folder, token, credentials, "--threads", "1", *args, env={"LITEMEDSAM_MODELS_DIR": str(models_dir)}
    )
    try:
        service.wait_ready()
        yield service
    finally:
        service.stop()
