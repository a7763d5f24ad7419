"""ops/bench/embedding_noise.py: the noise has the size asked for, is reproducible, and runs through the engine."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest

BENCH = Path(__file__).resolve().parents[1] / "ops" / "bench"


@pytest.fixture(scope="module")
def noise():
    sys.path.insert(0, str(BENCH))
    spec = importlib.util.spec_from_file_location("embedding_noise", BENCH / "embedding_noise.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _nmse(reference: np.ndarray, got: np.ndarray) -> float:
    r, g = reference.astype(np.float64), got.astype(np.float64)
    return float(np.sum((r - g) ** 2) / np.sum(r**2))


@pytest.mark.parametrize("level", [1e-4, 1e-3, 1e-2])
def test_perturb_gives_the_asked_nmse(noise, level):
    embedding = np.random.default_rng(1).normal(0.3, 2.0, (1, 256, 64, 64)).astype(np.float32)
    got = noise.perturb(embedding, level, np.random.default_rng(7))
    assert got.dtype == embedding.dtype and got.shape == embedding.shape
    assert _nmse(embedding, got) == pytest.approx(level, rel=0.02)


def test_perturb_is_seeded_and_zero_is_exact(noise):
    embedding = np.random.default_rng(2).normal(0, 1, (1, 8, 16, 16)).astype(np.float32)
    a = noise.perturb(embedding, 1e-3, np.random.default_rng([0, 3]))
    b = noise.perturb(embedding, 1e-3, np.random.default_rng([0, 3]))
    c = noise.perturb(embedding, 1e-3, np.random.default_rng([1, 3]))
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert np.array_equal(noise.perturb(embedding, 0.0, np.random.default_rng(0)), embedding)
    with pytest.raises(ValueError, match="nmse"):
        noise.perturb(embedding, -1e-3, np.random.default_rng(0))


def test_noisy_encoder_adds_noise_to_the_base_encoder_only(noise):
    class Base:
        spec = "spec"
        precision = type("P", (), {"encoder": "f32", "decoder": "f32"})()

        def encode(self, image):
            return np.full((1, 4, 8, 8), 2.0, np.float32)

        def decode(self, embedding, boxes):
            return embedding.sum(keepdims=True)

    encoder = noise.NoisyEncoder(Base(), 1e-2, (0, 0))
    first, second = encoder.encode(None), encoder.encode(None)
    assert not np.array_equal(first, second)  # a new draw per slice
    assert 0 < _nmse(Base().encode(None), first) < 0.05
    assert encoder.precision.encoder == "f32+noise0.01" and encoder.precision.decoder == "f32"
    assert encoder.decode(np.ones((1, 2)), None) == 2.0


def test_the_command_runs_the_gates_cases_and_zero_noise_changes_nothing(noise, echo_models_dir, tmp_path, capsys):
    from producer.phantoms import write_phantoms

    write_phantoms(tmp_path / "cases")
    out = tmp_path / "noise.json"
    argv = ["--models-dir", str(echo_models_dir), "--cases", str(tmp_path / "cases"), "--max-cases", "2"]
    assert noise.main([*argv, "--nmse", "0", "--seeds", "1", "--threads", "1", "--json", str(out)]) == 0
    rows = json.loads(out.read_text())["cases"]
    assert len(rows) == 2 and all(row["delta"] == {"0/0": 0.0} for row in rows)
    assert "0 of 2" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        noise.main([*argv, "--nmse", "-1"])
