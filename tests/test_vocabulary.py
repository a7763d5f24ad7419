"""Each word of the product is defined once: strategies, views, precisions and the engine's defaults.

The strategy table (worker.contract.strategies) is what routing, precision, the time budget, fan-out, the engine
identity and the engine read; these tests check that they agree with it and that no other module spells a
strategy or view name (a literal elsewhere is a second definition waiting to drift).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from worker.contract.engine_defaults import ENGINE_DEFAULTS
from worker.contract.precision import DEFAULT_PROFILE, FLOAT_PRECISIONS, PrecisionProfile
from worker.contract.routing import CHOICES, RoutingTable
from worker.contract.settings import EngineConfig, Environment
from worker.contract.strategies import (
    MAX_VIEWS,
    STRATEGIES,
    STRATEGIES_3D,
    STRATEGY_2D,
    STRATEGY_NAMES,
    TRIVIEW,
    VIEWS,
)

ROOT = Path(__file__).resolve().parents[1]
DEFINED_IN = ROOT / "worker" / "contract" / "strategies.py"
WORDS = set(STRATEGY_NAMES) | set(VIEWS)


def test_no_module_but_the_table_spells_a_strategy_or_view():
    found = []
    for path in sorted([*(ROOT / "worker").rglob("*.py"), *(ROOT / "producer").rglob("*.py")]):
        if path == DEFINED_IN:
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Constant) and node.value in WORDS:
                found.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.value!r}")
    assert not found, found


def test_the_table_is_what_routing_budget_and_fanout_read():
    assert CHOICES["strategy_3d"] == STRATEGIES_3D and STRATEGY_2D not in STRATEGIES_3D
    table = RoutingTable({}, {"PET": {"strategy_3d": TRIVIEW}})
    for is_3d in (False, True):
        for modality in ("CT", "PET"):
            route = table.route(modality)
            assert route.views(is_3d) == len(STRATEGIES[route.strategy(is_3d)].views)
    assert MAX_VIEWS == max(len(spec.views) for spec in STRATEGIES.values()) == 3
    for spec in STRATEGIES.values():
        assert all(view in VIEWS for view in spec.views) and spec.views[0] == "axial"
        assert sorted(VIEWS[view].axes for view in spec.views) == sorted(set(VIEWS[v].axes for v in spec.views))
    with pytest.raises(ValueError, match="unknown strategy_3d 'box2d'"):
        RoutingTable({}, {"CT": {"strategy_3d": STRATEGY_2D}})


def test_fanout_and_the_engine_run_the_tables_strategies():
    from worker.engine.strategies import IMPLEMENTATIONS_3D
    from worker.fanout import TRIVIEW_VIEWS, study_views

    assert set(IMPLEMENTATIONS_3D) == set(STRATEGIES_3D)
    assert TRIVIEW_VIEWS == STRATEGIES[TRIVIEW].views
    assert {name: study_views(name) for name in STRATEGY_NAMES} == {n: s.views for n, s in STRATEGIES.items()}


def test_each_strategy_has_its_precision_parts():
    profile = PrecisionProfile("p")
    assert set(profile.as_dict()) == set(STRATEGY_NAMES)
    assert DEFAULT_PROFILE in FLOAT_PRECISIONS


def test_engine_defaults_come_from_one_table(monkeypatch):
    from worker.engine.engine import EngineSettings
    from worker.engine.runtime import RuntimeSettings
    from worker.engine.slices import SliceSettings

    for name in ("LITEMEDSAM_PRECISION", "LITEMEDSAM_THREADS", "LITEMEDSAM_CACHE_MB", "LITEMEDSAM_MAX_VOXELS"):
        monkeypatch.delenv(name, raising=False)
    env, config, settings = Environment(), EngineConfig(), EngineSettings()
    for name in ("precision", "threads", "max_voxels"):
        expected = getattr(ENGINE_DEFAULTS, name)
        assert getattr(env, name) == getattr(config, name) == getattr(settings, name) == expected, name
    assert env.cache_mb == config.cache_mb == ENGINE_DEFAULTS.cache_mb
    assert settings.cache_bytes == ENGINE_DEFAULTS.cache_mb << 20
    assert EngineSettings.from_config(config).cache_bytes == settings.cache_bytes
    assert RuntimeSettings().precision == ENGINE_DEFAULTS.precision and RuntimeSettings().threads == 0
    assert SliceSettings().decode_chunk == settings.decode_chunk == ENGINE_DEFAULTS.decode_chunk


def test_output_formats_are_classes_in_one_table():
    from producer.formats.dicom_outputs import (
        DEFAULT_DICOM_OUTPUTS,
        DICOM_OUTPUTS,
        DOWNLOAD_MEDIA_TYPES,
        DicomOutput,
        parse_dicom_formats,
    )
    from producer.formats.registry import FORMATS

    assert all(isinstance(output, DicomOutput) and output.name == name for name, output in DICOM_OUTPUTS.items())
    assert set(DEFAULT_DICOM_OUTPUTS) <= set(DICOM_OUTPUTS)
    suffixes = [output.suffix for output in DICOM_OUTPUTS.values()]
    assert len(set(suffixes)) == len(suffixes) and FORMATS["dicom"].suffix == DICOM_OUTPUTS["seg"].suffix
    assert DOWNLOAD_MEDIA_TYPES["seg"] == DICOM_OUTPUTS["seg"].media_type
    assert parse_dicom_formats("RTSTRUCT, seg,seg") == ("rtstruct", "seg")
    with pytest.raises(ValueError, match="choose seg, rtstruct"):
        parse_dicom_formats("sr")
