"""Shared fixtures: a registry holding the box-echo IR pair (fast, no weights) and the real exported LiteMedSAM."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from fleet_support import claim_redis  # noqa: E402
from models.paths import default_models_dir  # noqa: E402
from models.registry import register_model  # noqa: E402
from synthetic_ir import build_echo_pair  # noqa: E402

SHARED_CASES = Path(__file__).resolve().parents[2] / "shared" / "data" / "cases"


def pytest_collection_modifyitems(items):
    """Every test that runs the real model is marked `model` (the fast lane leaves it out), whether or not its
    module says so."""
    for item in items:
        if "real_models_dir" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.model)


@pytest.fixture(scope="session")
def echo_models_dir(tmp_path_factory) -> Path:
    """A models dir where 'litemedsam' is the 256-input box-echo pair (geometry and strategy tests)."""
    root = tmp_path_factory.mktemp("echo-models")
    encoder, decoder = build_echo_pair(root / "src-256", 256)
    register_model(root / "registry", "litemedsam", encoder, decoder, input_size=256)
    return root / "registry"


@pytest.fixture(scope="session")
def real_models_dir() -> Path:
    models_dir = default_models_dir()
    if not (models_dir / "litemedsam" / "manifest.json").is_file():
        pytest.skip(f"LiteMedSAM IR not exported in {models_dir} (run: python -m models.export)")
    return models_dir


@pytest.fixture(scope="module")
def slot():
    """An empty database of the Redis at 127.0.0.1:6379 with a namespace of its own, for one test module."""
    claimed = claim_redis()
    if claimed is None:
        pytest.skip("no Redis at 127.0.0.1:6379 (or no empty database to claim)")
    yield claimed
    claimed.release()


@pytest.fixture(scope="module")
def pacs(tmp_path_factory):
    """A real Orthanc with its DICOMweb plugin on a free loopback port, one per test module (skipped without it)."""
    from orthanc_support import Orthanc, orthanc_available

    if not orthanc_available():
        pytest.skip("Orthanc is not installed")
    server = Orthanc(tmp_path_factory.mktemp("orthanc"))
    server.start()
    yield server
    server.stop()
