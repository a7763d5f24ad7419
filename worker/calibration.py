"""Per-host precision verdicts: which profiles passed `worker calibrate` on this instruction set, and `fast`.

A verdict belongs to the CPU it was measured on (bf16 arithmetic differs between AMX and AVX512-BF16; a CPU
without either runs a bf16 hint as f32), so the record file beside the models holds one entry per host
fingerprint: CPU model, the instruction-set flags that decide bf16/int8 kernels, the OpenVINO version and the
sha256 of every registered model. `fast` uses only the entry whose fingerprint equals this host's, and only a
profile that passed the gate, is really different from f32 here, is at least MIN_SPEEDUP faster, and whose
definition (and INT8 encoder weights) are still what was calibrated. Otherwise f32, and it says why.

    <models_dir>/precision-calibration.json
    {"format": 1, "hosts": {"<host key>": {"host": {...}, "calibrated_at": ..., "gate": {...}, "cases": [...],
                                           "profiles": {"<name>": {"passed": ..., "speedup": ..., ...}}}}}

The record is read and written through pydantic models (CalibrationRecord, HostVerdict, ProfileVerdict): a file
that does not fit them is ignored with a logged reason. No OpenVINO: the worker's parent resolves `fast` before any
fork.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import platform
import re
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from worker.contract.errors import validation_message
from worker.contract.files import write_text_atomic
from worker.contract.precision import DEFAULT_PROFILE, FAST, PrecisionProfile, PrecisionTable, ProfileChoice
from worker.engine.profiles import int8_weights

log = logging.getLogger(__name__)
RECORD_NAME = "precision-calibration.json"
RECORD_FORMAT = 1
GATE_DSC = 0.005  # each case's DSC within +-0.5 points of f32's, against ground truth
MIN_SPEEDUP = 1.10  # a profile must save at least 10 % of f32's engine time to be worth leaving f32
# Flags that decide which kernels OpenVINO's CPU plugin runs for f32 / bf16 / int8 / f16.
ISA_FLAGS = (
    "avx",
    "avx2",
    "fma",
    "f16c",
    "avx512f",
    "avx512bw",
    "avx512vl",
    "avx512_vnni",
    "avx_vnni",
    "avx512_bf16",
    "avx512_fp16",
    "amx_tile",
    "amx_bf16",
    "amx_int8",
    "amx_fp16",
)


def record_path(models_dir: Path) -> Path:
    return Path(models_dir) / RECORD_NAME


def _cpuinfo() -> tuple[str, set[str]]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or platform.machine(), set()
    model = re.search(r"^model name\s*:\s*(.*)$", text, re.M)
    flags = re.search(r"^flags\s*:\s*(.*)$", text, re.M)
    return (model.group(1).strip() if model else platform.machine()), set(flags.group(1).split() if flags else ())


def openvino_version() -> str:
    try:
        return metadata.version("openvino")
    except metadata.PackageNotFoundError:
        return "absent"


def host_fingerprint(models: dict[str, str]) -> dict[str, Any]:
    """This host's instruction set as far as precision verdicts go, plus the models they were measured with."""
    cpu, flags = _cpuinfo()
    return {
        "cpu": cpu,
        "isa": [flag for flag in ISA_FLAGS if flag in flags],
        "machine": platform.machine(),
        "openvino": openvino_version(),
        "models": dict(sorted(models.items())),
    }


def host_key(fingerprint: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(fingerprint, sort_keys=True).encode()).hexdigest()[:16]


class ProfileVerdict(BaseModel):
    """One profile's verdict on one host: what `fast` reads (the rest, per case and runtime, is kept as written)."""

    model_config = ConfigDict(extra="allow")

    definition: dict[str, Any]
    passed: bool
    equivalent_to_f32: bool
    speedup: float


class HostVerdict(BaseModel):
    """One host's calibration: its fingerprint, when, each profile's verdict, and what `fast` selects."""

    model_config = ConfigDict(extra="allow")

    host: dict[str, Any]
    calibrated_at: str
    profiles: dict[str, ProfileVerdict]
    fast: str | None = None  # what `fast` selected when it was calibrated (fastest_passed decides it afresh)


class CalibrationRecord(BaseModel):
    """The file: per host key (host_key of its fingerprint), that host's latest verdict."""

    format: Literal[1]
    hosts: dict[str, HostVerdict]


def read_record(models_dir: Path) -> dict[str, Any]:
    """The record as JSON data, or an empty one if there is none or it does not fit CalibrationRecord (then
    nothing is calibrated, and the log says why)."""
    empty: dict[str, Any] = {"format": RECORD_FORMAT, "hosts": {}}
    try:
        text = record_path(models_dir).read_text()
    except OSError:
        return empty
    try:
        return CalibrationRecord.model_validate_json(text).model_dump(mode="json")
    except ValidationError as error:
        log.warning("%s ignored: %s", record_path(models_dir), validation_message(error, whole="record"))
        return empty


def write_verdict(models_dir: Path, verdict: dict[str, Any]) -> Path:
    """Store one host's verdict (replacing that host's previous one), atomically, under a file lock; a verdict
    that does not fit HostVerdict is refused (ValueError) before the file is touched."""
    models_dir = Path(models_dir)
    path = record_path(models_dir)
    try:
        checked = HostVerdict.model_validate(verdict).model_dump(mode="json")
    except ValidationError as error:
        raise ValueError(f"calibration verdict not stored: {validation_message(error, whole='verdict')}") from None
    with open(models_dir / f".{RECORD_NAME}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        record = read_record(models_dir)
        record["hosts"][host_key(checked["host"])] = checked
        write_text_atomic(path, json.dumps(record, indent=1, sort_keys=True) + "\n", mode=0o644)
    return path


def verdict_for_host(models_dir: Path, fingerprint: dict[str, Any]) -> dict[str, Any] | None:
    entry = read_record(models_dir)["hosts"].get(host_key(fingerprint))
    return entry if entry and entry.get("host") == fingerprint else None


def profile_definition(profile: PrecisionProfile, encoder_weights: dict[str, str]) -> dict[str, Any]:
    """What a verdict is about: the per-strategy parts and the sha256 of any INT8 encoder they use."""
    return {
        "parts": profile.as_dict(),
        "encoder_weights": {name: encoder_weights.get(name, "") for name in profile.quantized_encoders()},
    }


def eligible(entry: dict[str, Any]) -> bool:
    """A profile `fast` may choose: passed the gate, runs differently from f32 here, and is worth it."""
    return (
        bool(entry.get("passed"))
        and not entry.get("equivalent_to_f32")
        and float(entry.get("speedup") or 0.0) >= MIN_SPEEDUP
    )


def fastest_passed(
    table: PrecisionTable, verdict: dict[str, Any] | None, encoder_weights: dict[str, str]
) -> tuple[str, str]:
    """(profile name, reason) for a `fast` request."""
    if verdict is None:
        return DEFAULT_PROFILE, (
            "f32: no calibration for this host's instruction set (run `worker calibrate` on this machine)"
        )
    candidates = []
    for name, entry in verdict.get("profiles", {}).items():
        if name not in table.names() or not eligible(entry):
            continue
        if entry.get("definition") != profile_definition(table.get(name), encoder_weights):
            continue  # the profile (or its INT8 encoder) changed since it was calibrated
        candidates.append((float(entry["speedup"]), name))
    when = verdict.get("calibrated_at", "?")
    if not candidates:
        return DEFAULT_PROFILE, (
            f"f32: no profile passed the calibration of {when} on this host with a speed-up >= {MIN_SPEEDUP:.2f}x"
        )
    speedup, name = max(candidates)
    return name, f"{name}: fastest profile passing the calibration of {when} on this host ({speedup:.2f}x f32)"


def select_profile(
    requested: str, table: PrecisionTable, models_dir: Path, models: dict[str, str], encoder_weights: dict[str, str]
) -> ProfileChoice:
    """The one place a requested precision becomes the profile that runs (`fast` resolved per host)."""
    if requested != FAST:
        return ProfileChoice(table.get(requested), requested)
    verdict = verdict_for_host(models_dir, host_fingerprint(models))
    name, reason = fastest_passed(table, verdict, encoder_weights)
    return ProfileChoice(table.get(name), requested, reason)


def choose_profile(requested: str, routing, models_dir: Path, registry: dict) -> ProfileChoice:
    """The profile a worker or embedded run with `--precision requested` runs, from its routing table (a
    worker.contract.routing.RoutingTable) and model registry (name -> models.registry.ModelSpec); `fast` resolved
    for this host. The chooser every engine that may be asked for `fast` is built with; no OpenVINO needed."""
    encoder_weights = int8_weights(registry)
    table = routing.precision.with_quantized(encoder_weights)
    return select_profile(
        requested, table, models_dir, {name: spec.sha256 for name, spec in registry.items()}, encoder_weights
    )


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
