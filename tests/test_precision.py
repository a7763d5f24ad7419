"""Precision profiles: bf16 really runs bf16, the INT8 profile (models.quantize) is checked by its manifest hash,
loaded by the engine with precision "int8" (decoder f32), and segments close to f32.

The tests on the real INT8 encoder skip when it has not been made; create it with
    .venv/bin/python -m models.quantize          (needs the quantize extra: pip install -e .[quantize])
The quantize code path itself is tested on the tiny box-echo IR (seconds), whenever nncf is installed.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from models.export import is_up_to_date
from models.paths import default_models_dir
from models.phantoms import build_phantoms
from models.quantize import ProfileError, profile_encoder, profile_status
from worker.contract.study import Study
from worker.engine.engine import Engine, EngineSettings
from worker.engine.runtime import runtime_precisions

REAL_DIR = default_models_dir() / "litemedsam"
QUANTIZE_CMD = ".venv/bin/python -m models.quantize"


def real_int8_ready() -> bool:
    return (REAL_DIR / "manifest.json").is_file() and profile_status(REAL_DIR, "int8") == "ok"


_real_missing = pytest.mark.skipif(
    not (REAL_DIR / "manifest.json").is_file(),
    reason=f"LiteMedSAM IR not exported in {REAL_DIR} (python -m models.export)",
)
_int8_missing = pytest.mark.skipif(
    not real_int8_ready(), reason=f"INT8 profile not made in {REAL_DIR} (run: {QUANTIZE_CMD}, ~2 min on 2 cores)"
)


def needs_real(test):
    """Runs the real LiteMedSAM: marker `model` (out of the fast lane); skipped with the reason without it."""
    return pytest.mark.model(_real_missing(test))


def needs_int8(test):
    return pytest.mark.model(_int8_missing(test))


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2 * np.count_nonzero(a & b) / max(np.count_nonzero(a) + np.count_nonzero(b), 1)


def phantom_study(name: str) -> tuple[Study, np.ndarray]:
    phantom = next(p for p in build_phantoms() if p.name == name)
    modality = name.split("_")[1]
    return Study(name, modality, phantom.imgs, phantom.boxes), phantom.gts


# ---------------------------------------------------------------- without any quantized model


def test_unknown_precision_is_refused(echo_models_dir):
    with pytest.raises(ValueError, match="unknown precision profile"):
        Engine(EngineSettings(models_dir=echo_models_dir, precision="fp8")).model("litemedsam")


def test_missing_int8_profile_names_the_command(echo_models_dir):
    # an int8 profile the manifest does not list is no profile at all: refused when the engine is built
    with pytest.raises(ValueError, match="models.quantize"):
        Engine(EngineSettings(models_dir=echo_models_dir, precision="int8-absent"))


@pytest.fixture(scope="module")
def quantized_echo(echo_models_dir, tmp_path_factory) -> Path:
    """A copy of the echo registry with an int8 profile made by models.quantize (real NNCF run, tiny model)."""
    pytest.importorskip("nncf", reason="nncf not installed (pip install -e .[quantize])")
    from models.quantize import quantize

    root = tmp_path_factory.mktemp("echo-int8")
    shutil.copytree(echo_models_dir, root, dirs_exist_ok=True)
    quantize(root, [], slices=4, variant="plain", profile="int8")
    return root


def test_quantize_writes_profile_files_and_manifest_entry(quantized_echo):
    model_dir = quantized_echo / "litemedsam"
    manifest = json.loads((model_dir / "manifest.json").read_text())
    entry = manifest["profiles"]["int8"]
    assert entry["decoder"] == "f32" and entry["calibration"]["slices"] == 4
    assert (model_dir / entry["encoder"]["xml"]).name == "encoder_int8.xml"
    assert entry["from_encoder_bin_sha256"] == manifest["encoder"]["bin_sha256"]
    assert profile_status(model_dir, "int8") == "ok"
    compiled = Engine(EngineSettings(models_dir=quantized_echo, precision="int8")).model("litemedsam")
    assert compiled.encoder_xml.name == "encoder_int8.xml"
    encoder = runtime_precisions(compiled.compiled_encoder)
    assert "i8" in encoder or "u8" in encoder


def test_int8_echo_engine_gives_the_f32_labels(quantized_echo):
    # The echo decoder only returns the prompt box, so a working int8 path must give exactly the f32 labels.
    rng = np.random.default_rng(3)
    volume = rng.integers(0, 255, (12, 64, 80), dtype=np.uint8)
    study = Study("3DBox_CT_q", "CT", volume, np.array([[10, 8, 2, 40, 30, 9], [30, 20, 4, 70, 50, 11]]))
    f32 = Engine(EngineSettings(models_dir=quantized_echo)).segment(study)
    int8 = Engine(EngineSettings(models_dir=quantized_echo, precision="int8")).segment(study)
    assert np.array_equal(f32.labels, int8.labels)
    assert int8.metrics.provenance.precision == "int8"
    assert int8.metrics.provenance.model_sha256 != f32.metrics.provenance.model_sha256


def test_tampered_int8_encoder_is_refused(quantized_echo, tmp_path):
    shutil.copytree(quantized_echo, tmp_path, dirs_exist_ok=True)
    model_dir = tmp_path / "litemedsam"
    weights = model_dir / "encoder_int8.bin"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF
    weights.write_bytes(bytes(data))
    assert profile_status(model_dir, "int8") == "corrupt"
    with pytest.raises(ProfileError, match="sha256"):
        Engine(EngineSettings(models_dir=tmp_path, precision="int8")).model("litemedsam")


def test_profile_made_from_another_f32_encoder_is_stale(quantized_echo, tmp_path):
    shutil.copytree(quantized_echo, tmp_path, dirs_exist_ok=True)
    model_dir = tmp_path / "litemedsam"
    manifest = json.loads((model_dir / "manifest.json").read_text())
    manifest["profiles"]["int8"]["from_encoder_bin_sha256"] = "0" * 64
    (model_dir / "manifest.json").write_text(json.dumps(manifest))
    assert profile_status(model_dir, "int8") == "stale"


# ---------------------------------------------------------------- the real LiteMedSAM


@needs_real
def test_bf16_profile_runs_bf16_where_the_cpu_has_it_and_f32_never_does():
    import openvino as ov

    f32 = Engine(EngineSettings(precision="f32")).model("litemedsam")
    bf16 = Engine(EngineSettings(precision="bf16")).model("litemedsam")
    assert "bf16" not in runtime_precisions(f32.compiled_encoder)
    assert "bf16" not in runtime_precisions(f32.compiled_decoder)
    if "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"):  # AVX512-BF16 or AMX
        assert runtime_precisions(bf16.compiled_encoder).get("bf16", 0) > 100
    else:  # e.g. an AVX2-only EPYC: OpenVINO ignores the hint, the graph is f32's (worker calibrate says so)
        assert bf16.runtime() == f32.runtime()


@needs_int8
def test_real_int8_manifest_entry_checks_out_and_export_stays_up_to_date():
    assert is_up_to_date(REAL_DIR)  # the profiles entry does not disturb the f32 export's check
    xml = profile_encoder(REAL_DIR, "int8")
    assert xml.name == "encoder_int8.xml"


@needs_int8
def test_real_int8_engine_loads_int8_encoder_with_f32_decoder():
    model = Engine(EngineSettings(precision="int8")).model("litemedsam")
    assert model.encoder_xml.name == "encoder_int8.xml"
    encoder, decoder = runtime_precisions(model.compiled_encoder), runtime_precisions(model.compiled_decoder)
    assert encoder.get("i8", 0) + encoder.get("u8", 0) > 50
    assert "bf16" not in decoder and "i8" not in decoder


@needs_int8
@pytest.mark.parametrize("name", ["2DBox_CT_phantom", "3DBox_MR_phantom"])
def test_real_int8_masks_close_to_f32_on_a_phantom(name):
    study, gts = phantom_study(name)
    f32 = Engine(EngineSettings(precision="f32")).segment(study).labels
    int8 = Engine(EngineSettings(precision="int8")).segment(study).labels
    for label in range(1, int(gts.max()) + 1):
        assert dice(f32 == label, int8 == label) > 0.9, (name, label)
        assert dice(gts == label, int8 == label) > dice(gts == label, f32 == label) - 0.05, (name, label)


def test_each_precision_has_its_own_compiled_cache_dir(tmp_path):
    from worker.engine.runtime import RuntimeSettings

    dirs = {p: RuntimeSettings(p, 0, tmp_path).precision_cache_dir for p in ("f32", "bf16", "int8")}
    assert len(set(dirs.values())) == 3 and all(d.parent == tmp_path for d in dirs.values())


@needs_real
def test_bf16_runs_after_f32_filled_the_compiled_cache(tmp_path):
    # OpenVINO 2026.4's cache key ignores the precision hint: a bf16 compile that found the f32 blob of the same
    # IR in a shared CACHE_DIR crashed with SIGSEGV on its first inference. Run it in a child so a crash is a failure.
    import subprocess
    import sys

    code = f"""
import numpy as np
from pathlib import Path
from worker.engine.engine import Engine, EngineSettings
paths_dir = Path({str(tmp_path)!r})
for precision in ("f32", "bf16"):
    engine = Engine(EngineSettings(precision=precision))
    engine._runtime = type(engine._runtime)(precision, 0, paths_dir)
    out = engine.model("litemedsam").encode(np.zeros((1, 3, 256, 256), np.float32))
    assert out.shape == (1, 256, 64, 64)
print("ok")
"""
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=Path(__file__).resolve().parents[1],
    )
    assert result.returncode == 0 and "ok" in result.stdout, (result.returncode, result.stderr[-2000:])
