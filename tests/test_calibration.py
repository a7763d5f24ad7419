"""Per-part precision profiles, the per-host calibration record, and `--precision fast`.

The real-model tests run `worker calibrate`'s code on small derived phantom cases (quick mode, 1 thread) in a
private models dir (a symlink to the exported LiteMedSAM), so the shared models dir is never written.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from worker.calibration import (
    MIN_SPEEDUP,
    choose_profile,
    fastest_passed,
    host_fingerprint,
    host_key,
    profile_definition,
    read_record,
    record_path,
    write_verdict,
)
from worker.contract.precision import FAST, PartPrecision, PrecisionProfile, PrecisionTable
from worker.contract.routing import RoutingTable

ROUTING = {
    "precision": {
        "bf16": {"encoder": "bf16", "decoder": "bf16"},
        "bf16-encoder": {"encoder": "bf16", "decoder": "f32"},
        "bf16-encoder-3d": {"propagate": {"encoder": "bf16"}, "triview": {"encoder": "bf16"}},
    }
}


def table() -> PrecisionTable:
    return PrecisionTable.from_routing(ROUTING["precision"])


# ---------------------------------------------------------------- profiles in the routing table


def test_profiles_resolve_per_part_and_per_strategy():
    profiles = table()
    assert profiles.get("f32").is_f32() and profiles.names()[0] == "f32"
    assert profiles.get("bf16-encoder").parts("box2d") == PartPrecision("bf16", "f32")
    three_d = profiles.get("bf16-encoder-3d")
    assert three_d.parts("box2d") == PartPrecision("f32", "f32")
    assert three_d.parts("propagate") == three_d.parts("triview") == PartPrecision("bf16", "f32")
    assert three_d.distinct_parts() == [PartPrecision("f32", "f32"), PartPrecision("bf16", "f32")]


@pytest.mark.parametrize(
    "section, message",
    [
        ({"x": {"encoder": "fp8"}}, "not one of"),
        ({"x": {"decoder": "int8"}}, "encoder only"),
        ({"x": {"propagate": {"encoder": "bf16", "cores": 2}}}, "unknown key"),
        ({"x": {"box3d": {"encoder": "bf16"}}}, "unknown key"),
        ({"f32": {"encoder": "bf16"}}, "f32 everywhere"),
        ({"fast": {"encoder": "bf16"}}, "reserved"),
    ],
)
def test_bad_profiles_are_refused_naming_the_section(section, message):
    with pytest.raises(ValueError, match=message):
        PrecisionTable.from_routing(section)


def test_unknown_profile_lists_the_choices():
    with pytest.raises(ValueError, match="bf16-encoder-3d"):
        table().get("bf16-encoders")


def test_int8_encoders_in_the_manifest_become_profiles():
    profiles = table().with_quantized({"int8": "a" * 64})
    assert profiles.get("int8").parts("propagate") == PartPrecision("int8", "f32")


def test_shipped_routing_table_defines_the_documented_profiles():
    names = RoutingTable.load().precision.names()
    assert {"f32", "bf16", "bf16-encoder", "bf16-encoder-3d"} <= set(names)


# ---------------------------------------------------------------- the record and `fast`


def _verdict(fingerprint: dict, profiles: dict) -> dict:
    return {"host": fingerprint, "calibrated_at": "2026-11-30T00:00:00+00:00", "profiles": profiles}


def _entry(profile: PrecisionProfile, passed=True, speedup=1.6, equivalent=False) -> dict:
    return {
        "definition": profile_definition(profile, {}),
        "passed": passed,
        "speedup": speedup,
        "equivalent_to_f32": equivalent,
    }


def test_fast_takes_the_fastest_eligible_profile_and_says_so():
    profiles = table()
    verdict = _verdict(
        {},
        {
            "bf16": _entry(profiles.get("bf16"), passed=False, speedup=2.0),
            "bf16-encoder": _entry(profiles.get("bf16-encoder"), speedup=1.5),
            "bf16-encoder-3d": _entry(profiles.get("bf16-encoder-3d"), speedup=1.3),
        },
    )
    name, reason = fastest_passed(profiles, verdict, {})
    assert name == "bf16-encoder" and "1.50x" in reason


@pytest.mark.parametrize("change", ["failed", "equivalent", "slow", "redefined", "none"])
def test_fast_falls_back_to_f32(change):
    profiles = table()
    entry = _entry(profiles.get("bf16-encoder"))
    if change == "failed":
        entry["passed"] = False
    elif change == "equivalent":
        entry["equivalent_to_f32"] = True
    elif change == "slow":
        entry["speedup"] = MIN_SPEEDUP - 0.01
    elif change == "redefined":  # the routing table's profile changed after the calibration
        entry["definition"] = profile_definition(profiles.get("bf16"), {})
    verdict = None if change == "none" else _verdict({}, {"bf16-encoder": entry})
    assert fastest_passed(profiles, verdict, {})[0] == "f32"


def _models_dir_with_record(tmp_path: Path, fingerprint: dict, profiles: dict) -> Path:
    routing = RoutingTable.load()
    entries = {name: _entry(routing.precision.get(name)) for name in profiles}
    write_verdict(tmp_path, _verdict(fingerprint, entries))
    return tmp_path


def test_record_of_another_instruction_set_is_not_used_here(tmp_path):
    models = {"litemedsam": "c" * 64}
    here = host_fingerprint(models)
    elsewhere = {
        **here,
        "cpu": "Intel(R) Xeon(R) Platinum 8480+",
        "isa": sorted(set(here["isa"]) | {"avx512f", "avx512_bf16", "amx_bf16", "amx_tile"}),
    }
    _models_dir_with_record(tmp_path, elsewhere, ["bf16-encoder"])
    registry = {"litemedsam": _FakeSpec("c" * 64, tmp_path)}
    choice = choose_profile(FAST, RoutingTable.load(), tmp_path, registry)
    assert choice.name == "f32" and "no calibration for this host" in choice.reason
    # the same record for this host's fingerprint is used (the record file holds both hosts)
    _models_dir_with_record(tmp_path, here, ["bf16-encoder"])
    assert len(read_record(tmp_path)["hosts"]) == 2
    choice = choose_profile(FAST, RoutingTable.load(), tmp_path, registry)
    assert choice.name == "bf16-encoder" and choice.requested == FAST
    # another OpenVINO or other weights make it another host
    assert host_key(host_fingerprint({"litemedsam": "d" * 64})) != host_key(here)


def test_unreadable_record_means_not_calibrated(tmp_path):
    record_path(tmp_path).write_text("{not json")
    registry = {"litemedsam": _FakeSpec("c" * 64, tmp_path)}
    assert choose_profile(FAST, RoutingTable.load(), tmp_path, registry).name == "f32"


class _FakeSpec:
    def __init__(self, sha256: str, model_dir: Path):
        self.sha256 = sha256
        self.encoder_xml = model_dir / "litemedsam" / "encoder.xml"


# ---------------------------------------------------------------- the engine: parts, provenance, content keys


def test_engine_runs_each_strategy_at_its_parts_and_says_so(echo_models_dir):
    from worker.contract.study import Study
    from worker.engine.engine import Engine, EngineSettings

    engine = Engine(EngineSettings(models_dir=echo_models_dir, precision="bf16-encoder-3d"))
    volume = np.random.default_rng(1).integers(0, 255, (8, 64, 64), dtype=np.uint8)
    prov3 = engine.segment(Study("3DBox_CT_a", "CT", volume, np.array([[5, 5, 1, 40, 40, 6]]))).metrics.provenance
    image = np.repeat(volume[0][:, :, None], 3, axis=-1)
    prov2 = engine.segment(Study("2DBox_CT_a", "CT", image, np.array([[5, 5, 40, 40]]))).metrics.provenance
    assert (prov3.precision, prov3.encoder_precision, prov3.decoder_precision) == ("bf16-encoder-3d", "bf16", "f32")
    assert (prov2.precision, prov2.encoder_precision, prov2.decoder_precision) == ("bf16-encoder-3d", "f32", "f32")
    identity = engine.identity()
    parts = identity.route_identity("CT")["parts"]
    assert parts["box2d"]["encoder"] == "f32" and parts["propagate"]["encoder"] == "bf16"
    f32 = Engine(EngineSettings(models_dir=echo_models_dir)).identity()
    assert f32.route_identity("CT")["parts"]["propagate"]["encoder"] == "f32"
    assert identity.result_key("i", np.zeros((1, 6)), "CT") != f32.result_key("i", np.zeros((1, 6)), "CT")
    assert type(identity).model_validate_json(identity.model_dump_json()) == identity


def test_embedding_cache_key_is_the_encoders_precision(echo_models_dir):
    # bf16-encoder (f32 decoder) and bf16 (bf16 decoder) share a process's embeddings; f32's encoder does not
    from worker.contract.metrics import StageTimes
    from worker.engine.engine import Engine, EngineSettings
    from worker.engine.slices import SliceSegmenter, SliceSettings, StageClock

    engine = Engine(EngineSettings(models_dir=echo_models_dir))
    image = np.zeros((32, 32, 3), np.uint8)
    calls = []
    for parts in (PartPrecision("bf16", "f32"), PartPrecision("bf16", "bf16"), PartPrecision("f32", "f32")):
        seg = SliceSegmenter(
            engine.model("litemedsam", parts), engine.cache, "study", SliceSettings(), StageClock(StageTimes())
        )
        seg.embedding("2d", 0, image)
        calls.append(seg.encoder_calls)
    assert calls == [1, 0, 1]


# ---------------------------------------------------------------- `worker calibrate` with the real model


@pytest.fixture()
def private_models_dir(real_models_dir, tmp_path) -> Path:
    """A models dir of our own holding the real export (symlinked): the calibration record is written here."""
    (tmp_path / "litemedsam").symlink_to(real_models_dir / "litemedsam")
    return tmp_path


def _phantom_cases(tmp_path: Path) -> Path:
    from producer.phantoms import write_phantoms

    write_phantoms(tmp_path / "phantoms")
    return tmp_path / "phantoms"


def test_calibrate_records_a_per_case_verdict_and_fast_uses_it(private_models_dir, tmp_path):
    import openvino as ov

    from worker.calibrate import run
    from worker.engine.engine import Engine, EngineSettings

    messages = []
    verdict, path = run(
        private_models_dir,
        _phantom_cases(tmp_path),
        ["bf16-encoder"],
        threads=1,
        quick=True,
        max_cases=None,
        routing_file=None,
        report=messages.append,
    )
    assert path == record_path(private_models_dir)
    record = json.loads(path.read_text())
    stored = record["hosts"][host_key(verdict["host"])]
    assert stored["host"] == host_fingerprint({"litemedsam": stored["host"]["models"]["litemedsam"]})
    assert len(stored["cases"]) == 3 and any(name.startswith("3DBox_") for name in stored["cases"])
    entry = stored["profiles"]["bf16-encoder"]
    assert set(entry["cases"]) == set(stored["cases"])
    for name, row in entry["cases"].items():  # the gate is per case, two-sided, on DSC against ground truth
        assert abs(row["delta"] - (row["dsc"] - stored["cases"][name]["dsc_f32"])) < 1e-12
        assert 0 < stored["cases"][name]["dsc_f32"] <= 1 and row["seconds"] > 0
    assert entry["passed"] == all(abs(r["delta"]) <= 0.005 for r in entry["cases"].values())
    encoder_runtime = entry["runtime"]["litemedsam/box2d"]["runtime"]["encoder"]
    if "BF16" not in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"):
        # No AVX512-BF16/AMX: OpenVINO runs the bf16 hint in f32, bit for bit; `fast` must not call it faster.
        assert "bf16" not in encoder_runtime and entry["equivalent_to_f32"] and entry["passed"]
        assert stored["fast"] == "f32"
    else:
        assert encoder_runtime.get("bf16", 0) > 100 and not entry["equivalent_to_f32"]
    engine = Engine(EngineSettings(models_dir=private_models_dir, precision=FAST), choose_profile)
    assert engine.precision.name == stored["fast"] and engine.precision.reason.startswith(stored["fast"])
    assert "calibration of" in engine.precision.reason  # it found this host's record


def test_worker_calibrate_cli_and_fast_ignores_a_forged_record_of_another_cpu(private_models_dir, tmp_path):
    import subprocess
    import sys

    from worker.engine.engine import Engine, EngineSettings

    repo = Path(__file__).resolve().parents[1]
    worker = Path(sys.executable).with_name("worker")
    result = subprocess.run(
        [
            str(worker),
            "calibrate",
            "--models-dir",
            str(private_models_dir),
            "--cases",
            str(_phantom_cases(tmp_path)),
            "--max-cases",
            "1",
            "--threads",
            "1",
            "--profiles",
            "bf16",
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=1200,
        cwd=repo,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    verdict = json.loads(result.stdout)
    assert "bf16" in verdict["profiles"] and "recorded in" in result.stderr
    # Forge this host's record to claim another instruction set with a fast, passing bf16 profile.
    record = read_record(private_models_dir)
    ((key, real),) = record["hosts"].items()
    forged = json.loads(json.dumps(real))
    forged["host"]["cpu"] = "Intel(R) Xeon(R) Platinum 8480+"
    forged["host"]["isa"] = sorted(set(forged["host"]["isa"]) | {"amx_bf16", "amx_tile", "avx512_bf16"})
    forged["profiles"]["bf16"].update(passed=True, equivalent_to_f32=False, speedup=2.5)
    del record["hosts"][key]
    record["hosts"][host_key(forged["host"])] = forged
    record_path(private_models_dir).write_text(json.dumps(record))
    engine = Engine(EngineSettings(models_dir=private_models_dir, precision=FAST), choose_profile)
    assert engine.precision.name == "f32" and "no calibration for this host" in engine.precision.reason
    # A forged entry filed under this host's key but naming another CPU is refused too.
    record["hosts"][key] = forged
    record_path(private_models_dir).write_text(json.dumps(record))
    assert Engine(EngineSettings(models_dir=private_models_dir, precision=FAST), choose_profile).precision.name == "f32"


def test_an_int8_encoder_is_never_gated_on_the_data_it_was_quantized_on(tmp_path):
    from worker.calibrate import PHANTOMS, tuned_on

    (tmp_path / "litemedsam").mkdir()
    manifest = {
        "profiles": {
            "int8": {"calibration": {"source": "project phantoms (producer.phantoms...)"}},
            "int8-dev": {"calibration": {"source": "user npz: /data/cases/imgs (8 files)"}},
        }
    }
    (tmp_path / "litemedsam" / "manifest.json").write_text(json.dumps(manifest))
    registry = {"litemedsam": _FakeSpec("c" * 64, tmp_path)}
    assert tuned_on(["int8", "int8-dev"], registry, PHANTOMS) == ["int8"]
    assert tuned_on(["int8", "int8-dev"], registry, "/data/cases") == ["int8-dev"]
    assert tuned_on(["int8", "int8-dev"], registry, "/elsewhere/cases") == []
